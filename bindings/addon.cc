// Module init: runtime controls (info, threads, ISA) and each op family.
#include <napi.h>

#include "args.h"
#include "families.h"
#include "sparsekit/bsr.h"
#include "sparsekit/dense.h"
#include "sparsekit/routing.h"
#include "sparsekit/nm.h"
#include "sparsekit/runtime.h"
#include "sparsekit/thread_pool.h"

#ifndef SPARSEKIT_VERSION
#define SPARSEKIT_VERSION "0.0.0"
#endif

namespace sparsekit {
namespace binding {
namespace {

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", SPARSEKIT_VERSION);
  Isa isa = active_isa();
  o.Set("isa", isa_name(isa));
  o.Set("isaReason", isa_reason());
  Napi::Array isas = Napi::Array::New(env);
  uint32_t i = 0;
  for (Isa cand : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon})
    if (isa_supported(cand) && dense_kernels(cand)) isas.Set(i++, isa_name(cand));
  o.Set("supportedIsas", isas);
  Napi::Array compiled = Napi::Array::New(env);
  i = 0;
  for (Isa cand : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon})
    if (dense_kernels(cand)) compiled.Set(i++, isa_name(cand));
  o.Set("compiledIsas", compiled);
  o.Set("threads", ThreadPool::instance().num_threads());
  Napi::Object kernels = Napi::Object::New(env);
  kernels.Set("dense", dense_kernels(isa)->name);
  if (const RoutingKernels* rk = routing_kernels(isa)) kernels.Set("routing", rk->name);
  kernels.Set("bsr", bsr_kernels(isa)->name);
  if (const NmKernels* nk = nm_kernels(isa)) kernels.Set("nm", nk->name);
  o.Set("kernels", kernels);
  const CpuFeatures& f = cpu_features();
  Napi::Object feats = Napi::Object::New(env);
  feats.Set("avx2", f.avx2);
  feats.Set("fma", f.fma);
  feats.Set("avx512f", f.avx512f);
  feats.Set("avx512bw", f.avx512bw);
  feats.Set("avx512bf16", f.avx512bf16);
  feats.Set("neon", f.neon);
  o.Set("cpu", feats);
  return o;
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t n = get_dim(env, "setNumThreads", "n", info[0]);
  if (n > 1024) throw_range(env, "setNumThreads", "n must be ≤ 1024, got " + std::to_string(n));
  ThreadPool::instance().set_num_threads(static_cast<int>(n));
  return env.Undefined();
}

Napi::Value GetNumThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), ThreadPool::instance().num_threads());
}

Napi::Value SetIsa(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw_type(env, "setIsa", "isa must be a string (scalar|avx2|avx512|neon), got " + describe(info[0]));
  std::string name = info[0].As<Napi::String>().Utf8Value();
  Isa isa;
  if (!isa_from_name(name, &isa)) throw_range(env, "setIsa", "isa must be one of scalar|avx2|avx512|neon, got '" + name + "'");
  if (!dense_kernels(isa) || !set_active_isa(isa))
    throw_range(env, "setIsa", "isa '" + name + "' is not supported on this CPU or in this build");
  return env.Undefined();
}

Napi::Object InitImpl(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData<AddonData>(new AddonData());
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads, "setNumThreads"));
  exports.Set("getNumThreads", Napi::Function::New(env, GetNumThreads, "getNumThreads"));
  exports.Set("setIsa", Napi::Function::New(env, SetIsa, "setIsa"));
  RegisterDense(env, exports);
  RegisterBsr(env, exports);
  RegisterExperts(env, exports);
  RegisterRouting(env, exports);
  RegisterNM(env, exports);
  RegisterCuda(env, exports);
  return exports;
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) { return InitImpl(env, exports); }

}  // namespace binding
}  // namespace sparsekit

static Napi::Object SparsekitInit(Napi::Env env, Napi::Object exports) {
  return sparsekit::binding::Init(env, exports);
}
NODE_API_MODULE(sparsekit, SparsekitInit)
