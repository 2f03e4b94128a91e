// Each op family registers its functions on the module's exports.
#pragma once
#include <napi.h>

#include <map>
#include <memory>
#include <string>

namespace sparsekit {
namespace binding {

// Per-environment state (Node worker threads each load the addon anew).
struct AddonData {
  // Constructors of the opaque handle classes (handle.h), by class name.
  std::map<std::string, Napi::FunctionReference> handle_ctors;
  // The CUDA backend's default stream for this environment (bindings/cuda.cc), made on first use.
  std::shared_ptr<void> cuda_default_stream;
};

inline AddonData* addon_data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

void RegisterDense(Napi::Env env, Napi::Object exports);
void RegisterBsr(Napi::Env env, Napi::Object exports);
void RegisterExperts(Napi::Env env, Napi::Object exports);
void RegisterRouting(Napi::Env env, Napi::Object exports);
void RegisterNM(Napi::Env env, Napi::Object exports);
void RegisterCuda(Napi::Env env, Napi::Object exports);

}  // namespace binding
}  // namespace sparsekit
