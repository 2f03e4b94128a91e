// Each op family registers its functions on the module's exports.
#pragma once
#include <napi.h>

namespace sparsekit {
namespace binding {

// Per-environment state (Node worker threads each load the addon anew).
struct AddonData {
  Napi::FunctionReference packed_linear_ctor;
  Napi::FunctionReference packed_bsr_ctor;
};

inline AddonData* addon_data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

void RegisterDense(Napi::Env env, Napi::Object exports);
void RegisterBsr(Napi::Env env, Napi::Object exports);

}  // namespace binding
}  // namespace sparsekit
