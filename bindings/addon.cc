// Module init: runtime controls (info, threads, ISA) and each op family.
#include <napi.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "args.h"
#include "families.h"
#include "sparsekit/bsr.h"
#include "sparsekit/dense.h"
#include "sparsekit/memory.h"
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

// measureReadBandwidth(megabytes = 256, passes = 9): the rate at which the
// thread pool streams a buffer far larger than the caches, summing it (the
// yardstick for decode-sized calls, whose time is reading weights once).
// Every pool thread sums its share of blocks; median and best of the passes.
Napi::Value MeasureReadBandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "measureReadBandwidth";
  const int64_t mb = info[0].IsUndefined() ? 256 : get_dim(env, fn, "megabytes", info[0]);
  const int64_t passes = info[1].IsUndefined() ? 9 : get_dim(env, fn, "passes", info[1]);
  if (mb < 16 || mb > 4096) throw_range(env, fn, "megabytes must be 16 to 4096, got " + std::to_string(mb));
  if (passes > 1000) throw_range(env, fn, "passes must be ≤ 1000, got " + std::to_string(passes));
  typedef float F16 __attribute__((vector_size(64)));
  const int64_t vecs = mb * (int64_t(1) << 20) / 64;
  AlignedBuffer<F16> buf;
  if (!buf.resize(size_t(vecs))) throw_range(env, fn, "could not allocate " + std::to_string(mb) + " MB");
  ThreadPool& pool = ThreadPool::instance();
  const int64_t blocks = 64 * pool.num_threads(), per = (vecs + blocks - 1) / blocks;
  F16* a = buf.data();
  // First touch by the threads that will read each block.
  pool.parallel_for(blocks, [&](int64_t b, int) {
    for (int64_t i = b * per; i < std::min(vecs, (b + 1) * per); ++i) a[i] = F16{} + 1.f;
  });
  std::vector<float> sums(static_cast<size_t>(blocks), 0.f);
  std::vector<double> secs;
  for (int64_t p = 0; p < passes + 1; ++p) {  // the first pass warms up
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(blocks, [&](int64_t b, int) {
      F16 s0{}, s1{}, s2{}, s3{};
      const int64_t i1 = std::min(vecs, (b + 1) * per);
      int64_t i = b * per;
      for (; i + 4 <= i1; i += 4) s0 += a[i], s1 += a[i + 1], s2 += a[i + 2], s3 += a[i + 3];
      for (; i < i1; ++i) s0 += a[i];
      const F16 s = (s0 + s1) + (s2 + s3);
      float t = 0.f;
      for (int l = 0; l < 16; ++l) t += s[l];
      sums[size_t(b)] = t;
    });
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (p > 0) secs.push_back(dt);
  }
  double total = 0;
  for (float v : sums) total += v;
  if (total != double(vecs) * 16) throw_range(env, fn, "the buffer did not sum to its size (memory error?)");
  std::sort(secs.begin(), secs.end());
  const double bytes = double(vecs) * 64;
  Napi::Object o = Napi::Object::New(env);
  o.Set("medianGBps", bytes / secs[secs.size() / 2] / 1e9);
  o.Set("bestGBps", bytes / secs[0] / 1e9);
  o.Set("megabytes", double(mb));
  o.Set("passes", double(passes));
  o.Set("threads", pool.num_threads());
  return o;
}

Napi::Object InitImpl(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData<AddonData>(new AddonData());
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads, "setNumThreads"));
  exports.Set("getNumThreads", Napi::Function::New(env, GetNumThreads, "getNumThreads"));
  exports.Set("setIsa", Napi::Function::New(env, SetIsa, "setIsa"));
  exports.Set("measureReadBandwidth", Napi::Function::New(env, MeasureReadBandwidth, "measureReadBandwidth"));
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
