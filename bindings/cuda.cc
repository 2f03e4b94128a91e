// The CUDA backend's bindings: backend info, streams, device tensors and the
// ops on them. Everything goes through the plugin's C interface, resolved at
// run time (native/src/common/cuda_plugin.cc); this file includes no CUDA
// header and links no CUDA library.
//
// Ordering: every op is enqueued on a stream from the main thread, in program
// order, and returns without waiting (its *Async variant resolves once the
// stream has finished, from a worker thread). Each device buffer remembers
// the stream of its last use; using it on another stream first makes that
// stream wait for the previous one (an event), and freeing it is ordered
// after its last use (cudaFreeAsync on that stream). So dispose() right after
// enqueuing an op is safe, and so is a buffer collected by the GC.
//
// The binding is the safety boundary here too: shapes and dtypes come from
// the native objects (not from JS), and index structures (routing plans, BSR
// and N:M metadata) can only reach the GPU through constructors that validate
// them on the host (or from the GPU route kernel, valid by construction).
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#if !defined(_WIN32)
#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>
#endif

#include "args.h"
#include "async.h"
#include "families.h"
#include "handle.h"
#include "nm_args.h"
#include "plan_args.h"
#include "sparsekit/cuda_plugin.h"
#include "sparsekit/nm.h"

namespace sparsekit {
namespace binding {

namespace {

// ---- the backend -----------------------------------------------------------------------

std::vector<std::string> plugin_search_dirs() {
  std::vector<std::string> dirs;
#if !defined(_WIN32)
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&plugin_search_dirs), &info) && info.dli_fname) {
    std::string path = info.dli_fname;
    char resolved[PATH_MAX];
    if (realpath(path.c_str(), resolved)) path = resolved;
    size_t slash = path.find_last_of('/');
    std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
    dirs.push_back(dir);
    // build/Release/sparsekit.node → <package>/prebuilds/<platform>-<arch>/
    std::string root = dir + "/../..";
    if (realpath(root.c_str(), resolved)) root = resolved;
    dirs.push_back(root + "/prebuilds/" + prebuild_platform_dir());
  }
#endif
  return dirs;
}

const CudaBackend& backend() {
  static const CudaBackend& b = cuda_backend(plugin_search_dirs());
  return b;
}

const CudaApi& require_cuda(Napi::Env env, const std::string& fn) {
  const CudaBackend& b = backend();
  if (!b.available()) throw Napi::Error::New(env, fn + ": CUDA is not available: " + b.reason);
  return b.api;
}

std::string plugin_error(int rc) {
  const char* m = backend().api.last_error ? backend().api.last_error() : "";
  std::string s = m && *m ? m : "CUDA call failed";
  if (rc == SK_CUDA_ENOMEM) s = "out of GPU memory: " + s;
  return s;
}

void check_cuda(Napi::Env env, const std::string& fn, int rc) {
  if (rc == SK_CUDA_OK) return;
  std::string msg = fn + ": " + plugin_error(rc);
  if (rc == SK_CUDA_EINVAL) throw Napi::RangeError::New(env, msg);
  throw Napi::Error::New(env, msg);
}

Status status_of(int rc) {
  if (rc == SK_CUDA_OK) return Status::Ok();
  if (rc == SK_CUDA_EINVAL) return Status::Range(plugin_error(rc));
  if (rc == SK_CUDA_ENOMEM) return Status::Oom(plugin_error(rc));
  return Status{Status::kInternal, plugin_error(rc)};
}

// ---- native objects ---------------------------------------------------------------------

struct Stream {
  sk_cuda_stream s = nullptr;
  ~Stream() {
    if (s) backend().api.stream_destroy(s);
  }
};
using StreamPtr = std::shared_ptr<Stream>;

std::atomic<int64_t> g_live_buffers{0}, g_live_bytes{0};

const char* dtype_name(sk_dtype d) {
  switch (d) {
    case SK_F32: return "f32";
    case SK_BF16: return "bf16";
    case SK_I32: return "i32";
  }
  return "?";
}
// u8 and u16 index buffers use these internal codes (never exposed as DeviceTensors).
constexpr int kU8 = 100, kU16 = 101;
size_t elem_size(int d) { return d == SK_BF16 || d == kU16 ? 2 : (d == kU8 ? 1 : 4); }

// A device allocation. `last` is touched on the main thread only. A copy to
// the host running on a worker thread pins the buffer: dispose() then only
// marks it, and the last unpin frees it.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  int dtype = SK_F32;
  std::vector<int64_t> shape;
  int64_t count = 0;
  StreamPtr last;  // stream of the last enqueued use
  std::mutex mu;
  int pins = 0;
  bool disposed = false;
  ~DeviceBuffer() { free_now(); }
  void release() {
    std::lock_guard<std::mutex> lock(mu);
    disposed = true;
    if (pins == 0) free_now();
  }
  void pin() {
    std::lock_guard<std::mutex> lock(mu);
    ++pins;
  }
  void unpin() {
    std::lock_guard<std::mutex> lock(mu);
    if (--pins == 0 && disposed) free_now();
  }

 private:
  void free_now() {
    if (!ptr) return;
    backend().api.free(ptr, last ? last->s : nullptr);
    ptr = nullptr;
    g_live_buffers--;
    g_live_bytes -= static_cast<int64_t>(bytes);
  }
};
using BufPtr = std::shared_ptr<DeviceBuffer>;

struct DevicePlan {
  int64_t tokens = 0, k = 0, experts = 0, rows = 0;
  BufPtr sorted_slots, offsets, weights, row_of_slot;  // always
  BufPtr expert_ids, tokens_per_expert;                // from cuda.route only
};
// The structure of a block-sparse matrix, shared by the matrices that have
// it (sddmm's output has its mask's).
struct BsrPattern {
  BufPtr row_ptr, col_idx, block_row;
};
struct DeviceBsr {
  int64_t rows = 0, cols = 0, br = 0, bc = 0, nnz = 0;
  std::shared_ptr<BsrPattern> pattern;
  BufPtr values;
  sk_dtype dtype = SK_F32;
};
struct DeviceNM {
  int64_t rows = 0, cols = 0, n = 0, m = 0;
  bool cutlass = false;  // 2:4 bf16 in CUTLASS layout (values + meta) vs values + idx
  sk_dtype dtype = SK_BF16;
  BufPtr values, meta, idx;
};

using StreamHandle = Handle<Stream>;
using BufferHandle = Handle<DeviceBuffer>;
using PlanHandle = Handle<DevicePlan>;
using BsrHandle = Handle<DeviceBsr>;
using NMHandle = Handle<DeviceNM>;

StreamPtr default_stream(Napi::Env env, const std::string& fn) {
  AddonData* d = addon_data(env);
  if (!d->cuda_default_stream) {
    const CudaApi& api = require_cuda(env, fn);
    auto s = std::make_shared<Stream>();
    check_cuda(env, fn, api.stream_create(&s->s));
    d->cuda_default_stream = s;
  }
  return std::static_pointer_cast<Stream>(d->cuda_default_stream);
}

StreamPtr get_stream(Napi::Env env, const std::string& fn, const Napi::Value& opts) {
  Napi::Value v = get_option(env, fn, opts, "stream");
  if (is_absent(v)) return default_stream(env, fn);
  return StreamHandle::Get(env, fn, "options.stream", v);
}

// Orders `b`'s use on `s` after its previous uses on other streams.
void use_on(Napi::Env env, const std::string& fn, const BufPtr& b, const StreamPtr& s) {
  if (!b) return;
  if (b->last && b->last.get() != s.get()) check_cuda(env, fn, backend().api.stream_wait(s->s, b->last->s));
  b->last = s;
}

BufPtr alloc(Napi::Env env, const std::string& fn, int dtype, const std::vector<int64_t>& shape, const StreamPtr& s) {
  auto b = std::make_shared<DeviceBuffer>();
  b->dtype = dtype;
  b->shape = shape;
  b->count = 1;
  for (auto d : shape) b->count *= d;
  b->bytes = static_cast<size_t>(b->count) * elem_size(dtype);
  b->last = s;
  check_cuda(env, fn, backend().api.malloc(&b->ptr, b->bytes, s->s));
  g_live_buffers++;
  g_live_bytes += static_cast<int64_t>(b->bytes);
  return b;
}

BufPtr upload(Napi::Env env, const std::string& fn, int dtype, const std::vector<int64_t>& shape, const void* host,
              const StreamPtr& s) {
  BufPtr b = alloc(env, fn, dtype, shape, s);
  // Pageable host memory: the call returns once the bytes are staged, so the
  // source may be released right after.
  check_cuda(env, fn, backend().api.memcpy_h2d(b->ptr, host, b->bytes, s->s));
  return b;
}

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}
float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<uint16_t> to_bf16(const float* x, int64_t n) {
  std::vector<uint16_t> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = f32_to_bf16(x[i]);
  return out;
}

void describe_buffer(Napi::Env env, Napi::Object& o, const DeviceBuffer& b) {
  Napi::Array s = Napi::Array::New(env, b.shape.size());
  for (size_t i = 0; i < b.shape.size(); ++i) s.Set(static_cast<uint32_t>(i), Napi::Number::New(env, double(b.shape[i])));
  s.Freeze();
  BufferHandle::Prop(o, "shape", s);
  BufferHandle::Prop(o, "dtype", Napi::String::New(env, b.dtype == kU8 ? "u8" : (b.dtype == kU16 ? "u16" : dtype_name(static_cast<sk_dtype>(b.dtype)))));
  BufferHandle::Prop(o, "bytes", Napi::Number::New(env, double(b.bytes)));
}

Napi::Object wrap_buffer(Napi::Env env, BufPtr b) { return BufferHandle::Wrap(env, std::move(b), describe_buffer); }

// A live device tensor argument (not disposed) of the given rank.
BufPtr get_dev(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v, size_t rank,
               const char* shape_hint) {
  if (!BufferHandle::Is(v))
    throw_type(env, fn, name + " must be a DeviceTensor (from cuda.toDevice or a cuda op), got " + describe(v));
  BufPtr b = BufferHandle::Get(env, fn, name, v);
  if (b->disposed || !b->ptr) throw Napi::Error::New(env, fn + ": " + name + " was disposed");
  if (b->dtype != SK_F32 && b->dtype != SK_BF16 && b->dtype != SK_I32)
    throw_type(env, fn, name + " is an internal index buffer, not a tensor");
  if (rank && b->shape.size() != rank)
    throw_range(env, fn, name + " must have " + std::to_string(rank) + " dimensions " + shape_hint + ", got shape " +
                             shape_str(b->shape));
  return b;
}

void require_float(Napi::Env env, const std::string& fn, const std::string& name, const BufPtr& b) {
  if (b->dtype != SK_F32 && b->dtype != SK_BF16)
    throw_type(env, fn, name + " must be f32 or bf16, got " + dtype_name(static_cast<sk_dtype>(b->dtype)));
}

sk_dtype get_dtype(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v, sk_dtype dflt,
                   bool allow_i32 = false) {
  if (is_absent(v)) return dflt;
  if (!v.IsString()) throw_type(env, fn, name + " must be 'f32' or 'bf16', got " + describe(v));
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s == "f32") return SK_F32;
  if (s == "bf16") return SK_BF16;
  if (allow_i32 && s == "i32") return SK_I32;
  throw_range(env, fn, name + " must be 'f32'" + std::string(allow_i32 ? ", 'i32'" : "") + " or 'bf16', got '" + s + "'");
}

// options.bias: a DeviceTensor f32 of `n` elements (rank 1, or [E, n] for experts).
BufPtr get_bias(Napi::Env env, const std::string& fn, const Napi::Value& opts, int64_t count) {
  Napi::Value v = get_option(env, fn, opts, "bias");
  if (is_absent(v)) return nullptr;
  BufPtr b = get_dev(env, fn, "options.bias", v, 0, "");
  if (b->dtype != SK_F32) throw_type(env, fn, "options.bias must be an f32 DeviceTensor (bias is added in f32)");
  if (b->count != count)
    throw_range(env, fn, "options.bias has " + std::to_string(b->count) + " elements, expected " + std::to_string(count));
  return b;
}

// Sync: returns `result` (the op is enqueued). Async: a Promise resolving to
// `result` once the stream has finished everything enqueued so far.
Napi::Value finish(Napi::Env env, bool async, const std::string& fn, Napi::Value result, const StreamPtr& s) {
  if (!async) return result;
  auto kernel = [s]() -> Status { return status_of(backend().api.stream_synchronize(s->s)); };
  auto res = [](Napi::Env, const std::vector<Napi::Value>& kept) -> Napi::Value { return kept[0]; };
  return run_op(env, true, fn, kernel, res, {result});
}

std::string fname(const char* base, bool async) { return std::string("cuda.") + base + (async ? "Async" : ""); }

// ---- info, options, streams, memory --------------------------------------------------

Napi::Value CudaInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CudaBackend& b = backend();
  Napi::Object o = Napi::Object::New(env);
  o.Set("available", b.available());
  o.Set("status", b.status);
  o.Set("reason", b.reason);
  o.Set("abi", SK_CUDA_ABI_VERSION);
  if (!b.plugin_path.empty()) o.Set("plugin", b.plugin_path);
  if (b.plugin_abi) o.Set("pluginAbi", b.plugin_abi);
  Napi::Array searched = Napi::Array::New(env, b.searched.size());
  for (size_t i = 0; i < b.searched.size(); ++i) searched.Set(static_cast<uint32_t>(i), b.searched[i]);
  o.Set("searched", searched);
  if (b.state == CudaState::kAvailable || b.state == CudaState::kNoDriver || b.state == CudaState::kNoDevice ||
      b.state == CudaState::kUnsupported) {
    o.Set("runtimeVersion", b.device.runtime_version);
    o.Set("driverVersion", b.device.driver_version);
  }
  if (b.state == CudaState::kAvailable || b.state == CudaState::kUnsupported) {
    Napi::Object d = Napi::Object::New(env);
    d.Set("name", std::string(b.device.name));
    d.Set("sm", b.device.sm_major * 10 + b.device.sm_minor);
    d.Set("multiprocessors", b.device.multiprocessors);
    d.Set("memory", static_cast<double>(b.device.total_memory));
    d.Set("count", b.device.device_count);
    o.Set("device", d);
  }
  if (b.available()) o.Set("kernels", std::string(b.api.kernel_names()));
  return o;
}

Napi::Value CudaSetOption(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "cuda.setOption";
  const CudaApi& api = require_cuda(env, fn);
  if (!info[0].IsString()) throw_type(env, fn, "name must be a string, got " + describe(info[0]));
  if (!info[1].IsNumber() && !info[1].IsBoolean()) throw_type(env, fn, "value must be a number or boolean");
  int64_t v = info[1].IsBoolean() ? (info[1].As<Napi::Boolean>().Value() ? 1 : 0)
                                  : static_cast<int64_t>(info[1].As<Napi::Number>().DoubleValue());
  check_cuda(env, fn, api.set_option(info[0].As<Napi::String>().Utf8Value().c_str(), v));
  return env.Undefined();
}

Napi::Value CudaMemoryStats(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("liveTensors", static_cast<double>(g_live_buffers.load()));
  o.Set("liveBytes", static_cast<double>(g_live_bytes.load()));
  return o;
}

void describe_stream(Napi::Env, Napi::Object&, const Stream&) {}

Napi::Value CudaStreamCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "cuda.createStream";
  const CudaApi& api = require_cuda(env, fn);
  auto s = std::make_shared<Stream>();
  check_cuda(env, fn, api.stream_create(&s->s));
  return StreamHandle::Wrap(env, std::move(s), describe_stream);
}

// cudaSynchronize(stream?, async)
Napi::Value SynchronizeImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = fname("synchronize", async);
  const CudaApi& api = require_cuda(env, fn);
  StreamPtr s = is_absent(info[0]) ? default_stream(env, fn) : StreamHandle::Get(env, fn, "stream", info[0]);
  if (!async) {
    check_cuda(env, fn, api.stream_synchronize(s->s));
    return env.Undefined();
  }
  return finish(env, true, fn, env.Undefined(), s);
}
Napi::Value CudaSynchronize(const Napi::CallbackInfo& i) { return SynchronizeImpl(i, false); }
Napi::Value CudaSynchronizeAsync(const Napi::CallbackInfo& i) { return SynchronizeImpl(i, true); }

std::vector<int64_t> get_shape(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v) {
  if (!v.IsArray()) throw_type(env, fn, name + " must be an array of dimensions, got " + describe(v));
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() == 0 || a.Length() > 8) throw_range(env, fn, name + " must have 1 to 8 dimensions");
  std::vector<int64_t> s;
  double prod = 1;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    s.push_back(get_dim(env, fn, name + "[" + std::to_string(i) + "]", a.Get(i)));
    prod *= static_cast<double>(s.back());
  }
  if (prod > 9.0e15) throw_range(env, fn, name + " is too large");
  return s;
}

// cudaToDevice(tensor { data, shape }, options?: { dtype, stream })
// Float32Array → f32 or bf16 (rounded on the host); Uint16Array → bf16 bits; Int32Array → i32.
Napi::Value CudaToDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "cuda.toDevice";
  require_cuda(env, fn);
  if (!info[0].IsObject() || info[0].IsTypedArray() || info[0].IsArray())
    throw_type(env, fn, "x must be a tensor { data, shape }, got " + describe(info[0]));
  Napi::Object t = info[0].As<Napi::Object>();
  Napi::Value data = t.Get("data");
  std::vector<int64_t> shape = get_shape(env, fn, "x.shape", t.Get("shape"));
  int64_t count = 1;
  for (auto d : shape) count *= d;
  Napi::Value opts = info.Length() > 1 ? info[1] : env.Undefined();
  StreamPtr s = get_stream(env, fn, opts);
  Napi::Value dv = get_option(env, fn, opts, "dtype");
  if (!data.IsTypedArray()) throw_type(env, fn, "x.data must be a Float32Array, Uint16Array (bf16 bits) or Int32Array, got " + describe(data));
  auto kind = data.As<Napi::TypedArray>().TypedArrayType();
  BufPtr b;
  if (kind == napi_float32_array) {
    auto a = get_array<float>(env, fn, "x.data", data);
    if (a.length != count)
      throw_range(env, fn, "x.data has " + std::to_string(a.length) + " elements but x.shape " + shape_str(shape) +
                               " needs " + std::to_string(count));
    sk_dtype dt = get_dtype(env, fn, "options.dtype", dv, SK_F32);
    if (dt == SK_F32) {
      b = upload(env, fn, SK_F32, shape, a.data, s);
    } else {
      std::vector<uint16_t> h = to_bf16(a.data, a.length);
      b = upload(env, fn, SK_BF16, shape, h.data(), s);
    }
  } else if (kind == napi_uint16_array) {
    auto a = get_array<uint16_t>(env, fn, "x.data", data);
    if (a.length != count)
      throw_range(env, fn, "x.data has " + std::to_string(a.length) + " elements but x.shape " + shape_str(shape) +
                               " needs " + std::to_string(count));
    if (get_dtype(env, fn, "options.dtype", dv, SK_BF16) != SK_BF16)
      throw_range(env, fn, "a Uint16Array holds bf16 bits: options.dtype must be 'bf16'");
    b = upload(env, fn, SK_BF16, shape, a.data, s);
  } else if (kind == napi_int32_array) {
    auto a = get_array<int32_t>(env, fn, "x.data", data);
    if (a.length != count)
      throw_range(env, fn, "x.data has " + std::to_string(a.length) + " elements but x.shape " + shape_str(shape) +
                               " needs " + std::to_string(count));
    if (get_dtype(env, fn, "options.dtype", dv, SK_I32, true) != SK_I32)
      throw_range(env, fn, "an Int32Array uploads as 'i32'");
    b = upload(env, fn, SK_I32, shape, a.data, s);
  } else {
    throw_type(env, fn, "x.data must be a Float32Array, Uint16Array (bf16 bits) or Int32Array, got " + describe(data));
  }
  return wrap_buffer(env, std::move(b));
}

// cudaEmpty(shape, dtype, options?) — zero-filled.
Napi::Value CudaZeros(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "cuda.zeros";
  const CudaApi& api = require_cuda(env, fn);
  std::vector<int64_t> shape = get_shape(env, fn, "shape", info[0]);
  sk_dtype dt = get_dtype(env, fn, "dtype", info[1], SK_F32, true);
  StreamPtr s = get_stream(env, fn, info.Length() > 2 ? info[2] : env.Undefined());
  BufPtr b = alloc(env, fn, dt, shape, s);
  check_cuda(env, fn, api.memset(b->ptr, 0, b->bytes, s->s));
  return wrap_buffer(env, std::move(b));
}

// cudaRandom(shape, options?: { dtype, seed, scale, stream }): uniform in [−scale, scale), made on the device.
Napi::Value CudaRandom(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "cuda.random";
  const CudaApi& api = require_cuda(env, fn);
  std::vector<int64_t> shape = get_shape(env, fn, "shape", info[0]);
  Napi::Value opts = info.Length() > 1 ? info[1] : env.Undefined();
  sk_dtype dt = get_dtype(env, fn, "options.dtype", get_option(env, fn, opts, "dtype"), SK_F32);
  double seed = 1, scale = 1;
  Napi::Value sv = get_option(env, fn, opts, "seed"), cv = get_option(env, fn, opts, "scale");
  if (!is_absent(sv)) {
    if (!sv.IsNumber()) throw_type(env, fn, "options.seed must be a number");
    seed = sv.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(seed) || seed < 0 || std::floor(seed) != seed) throw_range(env, fn, "options.seed must be a non-negative integer");
  }
  if (!is_absent(cv)) {
    if (!cv.IsNumber()) throw_type(env, fn, "options.scale must be a number");
    scale = cv.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(scale)) throw_range(env, fn, "options.scale must be finite");
  }
  StreamPtr s = get_stream(env, fn, opts);
  BufPtr b = alloc(env, fn, dt, shape, s);
  check_cuda(env, fn, api.fill_random(b->ptr, dt, b->count, static_cast<uint64_t>(seed), static_cast<float>(scale), s->s));
  return wrap_buffer(env, std::move(b));
}

// cudaToHost(x, async, options?: { raw }) → { data, shape }: f32 and bf16 as a
// Float32Array (raw: bf16 as its Uint16Array bits), i32 as an Int32Array.
Napi::Value ToHostImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = fname("toHost", async);
  require_cuda(env, fn);
  BufPtr b = get_dev(env, fn, "x", info[0], 0, "");
  Napi::Value raw_v = get_option(env, fn, info.Length() > 1 ? info[1] : env.Undefined(), "raw");
  const bool raw = !is_absent(raw_v) && raw_v.ToBoolean().Value();
  StreamPtr s = b->last;
  Napi::Value out;
  void* dst;
  std::shared_ptr<std::vector<uint16_t>> staging;
  if (b->dtype == SK_I32) {
    auto a = Napi::Int32Array::New(env, static_cast<size_t>(b->count));
    dst = b->count ? a.Data() : nullptr;
    out = a;
  } else if (b->dtype == SK_F32) {
    auto a = Napi::Float32Array::New(env, static_cast<size_t>(b->count));
    dst = b->count ? a.Data() : nullptr;
    out = a;
  } else if (raw) {
    auto a = Napi::Uint16Array::New(env, static_cast<size_t>(b->count));
    dst = b->count ? a.Data() : nullptr;
    out = a;
  } else {
    auto a = Napi::Float32Array::New(env, static_cast<size_t>(b->count));
    staging = std::make_shared<std::vector<uint16_t>>(static_cast<size_t>(b->count));
    dst = staging->data();
    out = a;
  }
  std::vector<int64_t> shape = b->shape;
  float* conv_dst = staging ? out.As<Napi::Float32Array>().Data() : nullptr;
  const void* src = b->ptr;
  const size_t bytes = b->bytes;
  b->pin();
  auto kernel = [b, s, src, bytes, dst, staging, conv_dst]() -> Status {
    Status st = status_of(backend().api.memcpy_d2h(dst, src, bytes, s->s));
    b->unpin();
    if (!st.ok()) return st;
    if (staging)
      for (size_t i = 0; i < staging->size(); ++i) conv_dst[i] = bf16_to_f32((*staging)[i]);
    return Status::Ok();
  };
  auto result = [shape](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    return make_tensor(e, kept[0], shape);
  };
  return run_op(env, async, fn, kernel, result, {out, info[0]});
}
Napi::Value CudaToHost(const Napi::CallbackInfo& i) { return ToHostImpl(i, false); }
Napi::Value CudaToHostAsync(const Napi::CallbackInfo& i) { return ToHostImpl(i, true); }

// cudaDispose(x): frees now, in stream order; later uses throw. Idempotent.
Napi::Value CudaDispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "cuda.dispose";
  if (BufferHandle::Is(info[0])) {
    BufferHandle::Get(env, fn, "x", info[0])->release();
  } else if (PlanHandle::Is(info[0])) {
    auto p = PlanHandle::Get(env, fn, "x", info[0]);
    for (auto* b : {&p->sorted_slots, &p->offsets, &p->weights, &p->row_of_slot, &p->expert_ids, &p->tokens_per_expert})
      if (*b) (*b)->release();
  } else if (BsrHandle::Is(info[0])) {
    // The structure may be shared with other matrices of the same pattern
    // (sddmm's output): it is freed when the last of them lets go of it.
    auto p = BsrHandle::Get(env, fn, "x", info[0]);
    if (p->values) p->values->release();
    p->pattern.reset();
  } else if (NMHandle::Is(info[0])) {
    auto p = NMHandle::Get(env, fn, "x", info[0]);
    for (auto* b : {&p->values, &p->meta, &p->idx})
      if (*b) (*b)->release();
  } else {
    throw_type(env, fn, "x must be a DeviceTensor, DevicePlan, DeviceBsr or DeviceNM, got " + describe(info[0]));
  }
  return env.Undefined();
}

// ---- dense ----------------------------------------------------------------------------

// cudaLinear(x [m, k], W [n, k], options?: { bias, activation, outDtype, stream })
Napi::Value LinearImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = fname("linear", async);
  const CudaApi& api = require_cuda(env, fn);
  BufPtr x = get_dev(env, fn, "x", info[0], 2, "[tokens, in]");
  BufPtr w = get_dev(env, fn, "W", info[1], 2, "[out, in]");
  require_float(env, fn, "x", x);
  if (w->dtype != x->dtype)
    throw_type(env, fn, std::string("W is ") + dtype_name((sk_dtype)w->dtype) + " but x is " + dtype_name((sk_dtype)x->dtype) + ": they must match");
  const int64_t m = x->shape[0], k = x->shape[1], n = w->shape[0];
  if (w->shape[1] != k)
    throw_range(env, fn, "W.shape[1] (in = " + std::to_string(w->shape[1]) + ") must equal x.shape[1] (in = " + std::to_string(k) + ")");
  Napi::Value opts = info.Length() > 2 ? info[2] : env.Undefined();
  BufPtr bias = get_bias(env, fn, opts, n);
  Activation act = get_activation(env, fn, get_option(env, fn, opts, "activation"));
  sk_dtype ydt = get_dtype(env, fn, "options.outDtype", get_option(env, fn, opts, "outDtype"), (sk_dtype)x->dtype);
  StreamPtr s = get_stream(env, fn, opts);
  use_on(env, fn, x, s);
  use_on(env, fn, w, s);
  use_on(env, fn, bias, s);
  BufPtr y = alloc(env, fn, ydt, {m, n}, s);
  check_cuda(env, fn, api.linear((sk_dtype)x->dtype, x->ptr, w->ptr, bias ? static_cast<const float*>(bias->ptr) : nullptr,
                                 y->ptr, ydt, m, n, k, static_cast<int>(act), s->s));
  return finish(env, async, fn, wrap_buffer(env, y), s);
}
Napi::Value CudaLinear(const Napi::CallbackInfo& i) { return LinearImpl(i, false); }
Napi::Value CudaLinearAsync(const Napi::CallbackInfo& i) { return LinearImpl(i, true); }

// ---- routing plans ----------------------------------------------------------------------

void describe_plan(Napi::Env env, Napi::Object& o, const DevicePlan& p) {
  PlanHandle::Prop(o, "tokens", Napi::Number::New(env, double(p.tokens)));
  PlanHandle::Prop(o, "k", Napi::Number::New(env, double(p.k)));
  PlanHandle::Prop(o, "numExperts", Napi::Number::New(env, double(p.experts)));
  PlanHandle::Prop(o, "rows", Napi::Number::New(env, double(p.rows)));
  PlanHandle::Prop(o, "fromRoute", Napi::Boolean::New(env, p.expert_ids != nullptr));
}

std::shared_ptr<DevicePlan> get_plan(Napi::Env env, const std::string& fn, const Napi::Value& v) {
  if (!PlanHandle::Is(v))
    throw_type(env, fn, "plan must be a DevicePlan (from cuda.toDevicePlan or cuda.route), got " + describe(v));
  auto p = PlanHandle::Get(env, fn, "plan", v);
  if (!p->offsets || p->offsets->disposed) throw Napi::Error::New(env, fn + ": plan was disposed");
  return p;
}

// cudaToDevicePlan({ sortedSlots, expertOffsets, weights, k }, options?: { stream })
// Validated here exactly as the CPU expert ops validate a plan.
Napi::Value CudaToDevicePlan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "cuda.toDevicePlan";
  const CudaApi& api = require_cuda(env, fn);
  if (!info[0].IsObject() || info[0].IsArray() || info[0].IsTypedArray())
    throw_type(env, fn, "plan must be { sortedSlots, expertOffsets, weights, k }, got " + describe(info[0]));
  Napi::Object plan = info[0].As<Napi::Object>();
  int64_t k = get_k(env, fn, plan.Get("k"), "plan.k");
  auto weights = get_array<float>(env, fn, "plan.weights", plan.Get("weights"));
  if (weights.length == 0 || weights.length % k != 0)
    throw_range(env, fn, "plan.weights must have tokens·k entries (a positive multiple of k = " + std::to_string(k) + "), got " +
                             std::to_string(weights.length));
  const int64_t tokens = weights.length / k;
  auto slots = get_slots(env, fn, plan.Get("sortedSlots"), tokens * k);
  auto offsets_v = plan.Get("expertOffsets");
  auto offs_arr = get_array<int32_t>(env, fn, "plan.expertOffsets", offsets_v);
  if (offs_arr.length < 2) throw_range(env, fn, "plan.expertOffsets must have experts + 1 ≥ 2 entries");
  const int64_t experts = offs_arr.length - 1;
  auto off = get_offsets(env, fn, offsets_v, experts, slots.length, "sortedSlots.length");
  if (slots.length == 0)
    throw_range(env, fn, "plan.sortedSlots is empty: a device plan needs at least one kept slot (tensors have no empty dimensions)");
  StreamPtr s = get_stream(env, fn, info.Length() > 1 ? info[1] : env.Undefined());
  auto p = std::make_shared<DevicePlan>();
  p->tokens = tokens;
  p->k = k;
  p->experts = experts;
  p->rows = slots.length;
  p->sorted_slots = upload(env, fn, SK_I32, {slots.length}, slots.data, s);
  p->offsets = upload(env, fn, SK_I32, {experts + 1}, off.data, s);
  p->weights = upload(env, fn, SK_F32, {tokens * k}, weights.data, s);
  p->row_of_slot = alloc(env, fn, SK_I32, {tokens * k}, s);
  check_cuda(env, fn, api.invert_slots(static_cast<const int32_t*>(p->sorted_slots->ptr), slots.length,
                                       static_cast<int32_t*>(p->row_of_slot->ptr), tokens * k, s->s));
  return PlanHandle::Wrap(env, std::move(p), describe_plan);
}

// cudaPlanToHost(plan, async): the plan's arrays back on the host.
Napi::Value PlanToHostImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = fname("planToHost", async);
  require_cuda(env, fn);
  auto p = get_plan(env, fn, info[0]);
  struct Field {
    const char* name;
    BufPtr buf;
    int64_t count;
  };
  std::vector<Field> fields = {{"sortedSlots", p->sorted_slots, p->rows},
                               {"expertOffsets", p->offsets, p->experts + 1},
                               {"weights", p->weights, p->tokens * p->k}};
  if (p->expert_ids) {
    fields.push_back({"expertIds", p->expert_ids, p->tokens * p->k});
    fields.push_back({"tokensPerExpert", p->tokens_per_expert, p->experts});
  }
  std::vector<Napi::Value> keep;
  std::vector<void*> dsts;
  for (auto& f : fields) {
    Napi::Value a = f.buf->dtype == SK_F32 ? Napi::Value(Napi::Float32Array::New(env, static_cast<size_t>(f.count)))
                                           : Napi::Value(Napi::Int32Array::New(env, static_cast<size_t>(f.count)));
    dsts.push_back(f.count ? a.As<Napi::TypedArray>().ArrayBuffer().Data() : nullptr);
    keep.push_back(a);
  }
  std::vector<const void*> srcs;
  std::vector<StreamPtr> streams;
  for (auto& f : fields) {
    srcs.push_back(f.buf->ptr);
    streams.push_back(f.buf->last);
    f.buf->pin();
  }
  auto kernel = [fields, dsts, srcs, streams]() -> Status {
    Status st = Status::Ok();
    for (size_t i = 0; i < fields.size(); ++i) {
      if (st.ok() && fields[i].count)
        st = status_of(backend().api.memcpy_d2h(dsts[i], srcs[i], static_cast<size_t>(fields[i].count) * 4, streams[i]->s));
      fields[i].buf->unpin();
    }
    return st;
  };
  std::vector<std::string> names;
  for (auto& f : fields) names.push_back(f.name);
  int64_t k = p->k, tokens = p->tokens, experts = p->experts;
  auto result = [names, k, tokens, experts](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    Napi::Object o = Napi::Object::New(e);
    for (size_t i = 0; i < names.size(); ++i) o.Set(names[i], kept[i]);
    o.Set("k", Napi::Number::New(e, double(k)));
    o.Set("tokens", Napi::Number::New(e, double(tokens)));
    o.Set("numExperts", Napi::Number::New(e, double(experts)));
    return o;
  };
  keep.push_back(info[0]);
  return run_op(env, async, fn, kernel, result, keep);
}
Napi::Value CudaPlanToHost(const Napi::CallbackInfo& i) { return PlanToHostImpl(i, false); }
Napi::Value CudaPlanToHostAsync(const Napi::CallbackInfo& i) { return PlanToHostImpl(i, true); }

// cudaRoute(logits [T, E] f32, options: { k, score, scoreBeforeTopK, renormalize,
// scalingFactor, selectionBias, groups, topkGroups, groupScore, stream })
Napi::Value RouteImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = fname("route", async);
  const CudaApi& api = require_cuda(env, fn);
  BufPtr logits = get_dev(env, fn, "logits", info[0], 2, "[tokens, experts]");
  if (logits->dtype != SK_F32) throw_type(env, fn, "logits must be f32");
  const int64_t T = logits->shape[0], E = logits->shape[1];
  Napi::Value opts = info.Length() > 1 ? info[1] : env.Undefined();
  sk_cuda_route_options o{};
  Napi::Value kv = get_option(env, fn, opts, "k");
  o.k = is_absent(kv) ? 1 : get_dim(env, fn, "options.k", kv);
  if (o.k > E) throw_range(env, fn, "options.k = " + std::to_string(o.k) + " must be ≤ experts = " + std::to_string(E));
  Napi::Value sv = get_option(env, fn, opts, "score");
  o.score = SK_SCORE_SOFTMAX;
  if (!is_absent(sv)) {
    if (!sv.IsString()) throw_type(env, fn, "options.score must be 'softmax', 'sigmoid' or 'none'");
    std::string sc = sv.As<Napi::String>().Utf8Value();
    if (sc == "softmax") o.score = SK_SCORE_SOFTMAX;
    else if (sc == "sigmoid") o.score = SK_SCORE_SIGMOID;
    else if (sc == "none") o.score = SK_SCORE_NONE;
    else throw_range(env, fn, "options.score must be 'softmax', 'sigmoid' or 'none', got '" + sc + "'");
  }
  auto get_bool = [&](const char* key, bool dflt) {
    Napi::Value v = get_option(env, fn, opts, key);
    if (is_absent(v)) return dflt;
    if (!v.IsBoolean()) throw_type(env, fn, std::string("options.") + key + " must be a boolean, got " + describe(v));
    return v.As<Napi::Boolean>().Value();
  };
  o.score_before_topk = get_bool("scoreBeforeTopK", true) ? 1 : 0;
  o.renormalize = get_bool("renormalize", false) ? 1 : 0;
  Napi::Value scv = get_option(env, fn, opts, "scalingFactor");
  o.scaling_factor = 1.f;
  if (!is_absent(scv)) {
    if (!scv.IsNumber()) throw_type(env, fn, "options.scalingFactor must be a number");
    double d = scv.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(d)) throw_range(env, fn, "options.scalingFactor must be finite");
    o.scaling_factor = static_cast<float>(d);
  }
  Napi::Value gv = get_option(env, fn, opts, "groups");
  if (!is_absent(gv)) {
    o.groups = get_dim(env, fn, "options.groups", gv);
    if (E % o.groups != 0)
      throw_range(env, fn, "experts = " + std::to_string(E) + " must be divisible by options.groups = " + std::to_string(o.groups));
    o.topk_groups = get_dim(env, fn, "options.topkGroups", get_option(env, fn, opts, "topkGroups"));
    if (o.topk_groups > o.groups) throw_range(env, fn, "options.topkGroups must be ≤ options.groups");
    if (o.k > o.topk_groups * (E / o.groups))
      throw_range(env, fn, "options.k must be ≤ topkGroups · experts/groups = " + std::to_string(o.topk_groups * (E / o.groups)));
    Napi::Value gsv = get_option(env, fn, opts, "groupScore");
    o.group_score = SK_GROUP_MAX;
    if (!is_absent(gsv)) {
      std::string g = gsv.IsString() ? gsv.As<Napi::String>().Utf8Value() : "";
      if (g == "max") o.group_score = SK_GROUP_MAX;
      else if (g == "sum-top2") o.group_score = SK_GROUP_SUM_TOP2;
      else throw_range(env, fn, "options.groupScore must be 'max' or 'sum-top2'");
    }
  }
  StreamPtr s = get_stream(env, fn, opts);
  BufPtr bias;
  Napi::Value bv = get_option(env, fn, opts, "selectionBias");
  if (!is_absent(bv)) {
    if (BufferHandle::Is(bv)) {
      bias = get_dev(env, fn, "options.selectionBias", bv, 1, "[experts]");
      if (bias->dtype != SK_F32 || bias->count != E)
        throw_range(env, fn, "options.selectionBias must be f32 [experts = " + std::to_string(E) + "]");
    } else {
      auto a = get_array<float>(env, fn, "options.selectionBias", bv);
      if (a.length != E)
        throw_range(env, fn, "options.selectionBias has " + std::to_string(a.length) + " entries, expected experts = " + std::to_string(E));
      bias = upload(env, fn, SK_F32, {E}, a.data, s);
    }
    o.d_selection_bias = static_cast<const float*>(bias->ptr);
  }
  use_on(env, fn, logits, s);
  use_on(env, fn, bias, s);
  auto p = std::make_shared<DevicePlan>();
  p->tokens = T;
  p->k = o.k;
  p->experts = E;
  p->rows = T * o.k;
  p->expert_ids = alloc(env, fn, SK_I32, {T, o.k}, s);
  p->weights = alloc(env, fn, SK_F32, {T * o.k}, s);
  p->tokens_per_expert = alloc(env, fn, SK_I32, {E}, s);
  p->offsets = alloc(env, fn, SK_I32, {E + 1}, s);
  p->sorted_slots = alloc(env, fn, SK_I32, {T * o.k}, s);
  p->row_of_slot = alloc(env, fn, SK_I32, {T * o.k}, s);
  check_cuda(env, fn, api.route(static_cast<const float*>(logits->ptr), T, E, &o, static_cast<int32_t*>(p->expert_ids->ptr),
                                static_cast<float*>(p->weights->ptr), static_cast<int32_t*>(p->tokens_per_expert->ptr),
                                static_cast<int32_t*>(p->offsets->ptr), static_cast<int32_t*>(p->sorted_slots->ptr),
                                static_cast<int32_t*>(p->row_of_slot->ptr), s->s));
  return finish(env, async, fn, PlanHandle::Wrap(env, std::move(p), describe_plan), s);
}
Napi::Value CudaRoute(const Napi::CallbackInfo& i) { return RouteImpl(i, false); }
Napi::Value CudaRouteAsync(const Napi::CallbackInfo& i) { return RouteImpl(i, true); }

void use_plan(Napi::Env env, const std::string& fn, const std::shared_ptr<DevicePlan>& p, const StreamPtr& s) {
  for (auto* b : {&p->sorted_slots, &p->offsets, &p->weights, &p->row_of_slot}) use_on(env, fn, *b, s);
}

// ---- experts ---------------------------------------------------------------------------

// cudaGroupedLinear(xs [rows, in], plan, W [E, out, in], options?: { bias [E, out], activation, outDtype, stream })
// cudaGroupedGatedLinear(xs, plan, gate [E, ffn, in], up [E, ffn, in], options?: { activation (silu), outDtype, stream })
Napi::Value GroupedImpl(const Napi::CallbackInfo& info, bool async, bool gated) {
  Napi::Env env = info.Env();
  const std::string fn = fname(gated ? "groupedGatedLinear" : "groupedLinear", async);
  const CudaApi& api = require_cuda(env, fn);
  BufPtr xs = get_dev(env, fn, "xs", info[0], 2, "[rows, in]");
  require_float(env, fn, "xs", xs);
  auto p = get_plan(env, fn, info[1]);
  BufPtr w = get_dev(env, fn, gated ? "gate" : "W", info[2], 3, "[experts, out, in]");
  BufPtr w3;
  if (gated) {
    w3 = get_dev(env, fn, "up", info[3], 3, "[experts, ffn, in]");
    if (w3->shape != w->shape) throw_range(env, fn, "up.shape " + shape_str(w3->shape) + " must equal gate.shape " + shape_str(w->shape));
    if (w3->dtype != xs->dtype) throw_type(env, fn, "up must have xs's dtype");
  }
  if (w->dtype != xs->dtype) throw_type(env, fn, std::string(gated ? "gate" : "W") + " must have xs's dtype (" + dtype_name((sk_dtype)xs->dtype) + ")");
  const int64_t E = w->shape[0], n = w->shape[1], k = w->shape[2], rows = xs->shape[0];
  if (xs->shape[1] != k) throw_range(env, fn, "xs.shape[1] = " + std::to_string(xs->shape[1]) + " must equal the experts' in = " + std::to_string(k));
  if (p->experts != E) throw_range(env, fn, "the plan has " + std::to_string(p->experts) + " experts but the weights have " + std::to_string(E));
  if (p->rows != rows) throw_range(env, fn, "xs.shape[0] = " + std::to_string(rows) + " must equal the plan's rows (kept slots) = " + std::to_string(p->rows));
  Napi::Value opts = info.Length() > (gated ? 4u : 3u) ? info[gated ? 4 : 3] : env.Undefined();
  BufPtr bias = gated ? nullptr : get_bias(env, fn, opts, E * n);
  Napi::Value av = get_option(env, fn, opts, "activation");
  Activation act = is_absent(av) ? (gated ? Activation::kSilu : Activation::kNone) : get_activation(env, fn, av);
  sk_dtype ydt = get_dtype(env, fn, "options.outDtype", get_option(env, fn, opts, "outDtype"), (sk_dtype)xs->dtype);
  StreamPtr s = get_stream(env, fn, opts);
  use_on(env, fn, xs, s);
  use_on(env, fn, w, s);
  use_on(env, fn, w3, s);
  use_on(env, fn, bias, s);
  use_plan(env, fn, p, s);
  BufPtr y = alloc(env, fn, ydt, {rows, n}, s);
  check_cuda(env, fn, api.grouped_linear((sk_dtype)xs->dtype, xs->ptr, static_cast<const int32_t*>(p->offsets->ptr), E, w->ptr,
                                         w3 ? w3->ptr : nullptr, bias ? static_cast<const float*>(bias->ptr) : nullptr, y->ptr,
                                         ydt, rows, n, k, static_cast<int>(act), s->s));
  return finish(env, async, fn, wrap_buffer(env, y), s);
}
Napi::Value CudaGroupedLinear(const Napi::CallbackInfo& i) { return GroupedImpl(i, false, false); }
Napi::Value CudaGroupedLinearAsync(const Napi::CallbackInfo& i) { return GroupedImpl(i, true, false); }
Napi::Value CudaGroupedGatedLinear(const Napi::CallbackInfo& i) { return GroupedImpl(i, false, true); }
Napi::Value CudaGroupedGatedLinearAsync(const Napi::CallbackInfo& i) { return GroupedImpl(i, true, true); }

// cudaPermute(x [tokens, d], plan, options?: { stream }) → xs [rows, d]
Napi::Value PermuteImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = fname("permute", async);
  const CudaApi& api = require_cuda(env, fn);
  BufPtr x = get_dev(env, fn, "x", info[0], 2, "[tokens, d]");
  require_float(env, fn, "x", x);
  auto p = get_plan(env, fn, info[1]);
  if (x->shape[0] != p->tokens)
    throw_range(env, fn, "x.shape[0] = " + std::to_string(x->shape[0]) + " must equal the plan's tokens = " + std::to_string(p->tokens));
  StreamPtr s = get_stream(env, fn, info.Length() > 2 ? info[2] : env.Undefined());
  use_on(env, fn, x, s);
  use_plan(env, fn, p, s);
  const int64_t d = x->shape[1];
  BufPtr xs = alloc(env, fn, x->dtype, {p->rows, d}, s);
  check_cuda(env, fn, api.permute((sk_dtype)x->dtype, x->ptr, p->tokens, d, static_cast<const int32_t*>(p->sorted_slots->ptr),
                                  p->rows, p->k, xs->ptr, s->s));
  return finish(env, async, fn, wrap_buffer(env, xs), s);
}
Napi::Value CudaPermute(const Napi::CallbackInfo& i) { return PermuteImpl(i, false); }
Napi::Value CudaPermuteAsync(const Napi::CallbackInfo& i) { return PermuteImpl(i, true); }

// cudaCombine(ys [rows, d], plan, options?: { outDtype, stream }) → y [tokens, d]
Napi::Value CombineImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = fname("combine", async);
  const CudaApi& api = require_cuda(env, fn);
  BufPtr ys = get_dev(env, fn, "ys", info[0], 2, "[rows, d]");
  require_float(env, fn, "ys", ys);
  auto p = get_plan(env, fn, info[1]);
  if (ys->shape[0] != p->rows)
    throw_range(env, fn, "ys.shape[0] = " + std::to_string(ys->shape[0]) + " must equal the plan's rows = " + std::to_string(p->rows));
  Napi::Value opts = info.Length() > 2 ? info[2] : env.Undefined();
  sk_dtype ydt = get_dtype(env, fn, "options.outDtype", get_option(env, fn, opts, "outDtype"), (sk_dtype)ys->dtype);
  StreamPtr s = get_stream(env, fn, opts);
  use_on(env, fn, ys, s);
  use_plan(env, fn, p, s);
  const int64_t d = ys->shape[1];
  BufPtr y = alloc(env, fn, ydt, {p->tokens, d}, s);
  check_cuda(env, fn, api.combine((sk_dtype)ys->dtype, ys->ptr, p->rows, d, static_cast<const int32_t*>(p->row_of_slot->ptr),
                                  static_cast<const float*>(p->weights->ptr), p->tokens, p->k, y->ptr, ydt, s->s));
  return finish(env, async, fn, wrap_buffer(env, y), s);
}
Napi::Value CudaCombine(const Napi::CallbackInfo& i) { return CombineImpl(i, false); }
Napi::Value CudaCombineAsync(const Napi::CallbackInfo& i) { return CombineImpl(i, true); }

// cudaAddRowsInto(y [T, d], s [T, d], gate ([T] or [T, 1] f32) | null, options?: { stream }):
// y[t] += σ(gate[t])·s[t] (1 without gate), in place. For the shared experts of an MoE block.
Napi::Value CudaAddRowsInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "cuda.addRowsInto";
  const CudaApi& api = require_cuda(env, fn);
  BufPtr y = get_dev(env, fn, "y", info[0], 2, "[rows, d]");
  BufPtr s2 = get_dev(env, fn, "s", info[1], 2, "[rows, d]");
  require_float(env, fn, "y", y);
  if (s2->dtype != y->dtype || s2->shape != y->shape)
    throw_range(env, fn, "s must have y's dtype and shape " + shape_str(y->shape) + ", got " + shape_str(s2->shape));
  BufPtr gate;
  if (!is_absent(info[2])) {
    gate = get_dev(env, fn, "gate", info[2], 0, "");
    if (gate->dtype != SK_F32 || gate->count != y->shape[0])
      throw_range(env, fn, "gate must be f32 with one value per row (" + std::to_string(y->shape[0]) + ")");
  }
  StreamPtr s = get_stream(env, fn, info.Length() > 3 ? info[3] : env.Undefined());
  use_on(env, fn, y, s);
  use_on(env, fn, s2, s);
  use_on(env, fn, gate, s);
  check_cuda(env, fn, api.add_rows((sk_dtype)y->dtype, y->ptr, s2->ptr, gate ? static_cast<const float*>(gate->ptr) : nullptr,
                                   y->shape[0], y->shape[1], s->s));
  return env.Undefined();
}

// ---- block-sparse ------------------------------------------------------------------------

void describe_bsr(Napi::Env env, Napi::Object& o, const DeviceBsr& b) {
  Napi::Array shape = Napi::Array::New(env, 2);
  shape.Set(0u, Napi::Number::New(env, double(b.rows)));
  shape.Set(1u, Napi::Number::New(env, double(b.cols)));
  shape.Freeze();
  Napi::Array bs = Napi::Array::New(env, 2);
  bs.Set(0u, Napi::Number::New(env, double(b.br)));
  bs.Set(1u, Napi::Number::New(env, double(b.bc)));
  bs.Freeze();
  BsrHandle::Prop(o, "shape", shape);
  BsrHandle::Prop(o, "blockSize", bs);
  BsrHandle::Prop(o, "nnzBlocks", Napi::Number::New(env, double(b.nnz)));
  BsrHandle::Prop(o, "dtype", Napi::String::New(env, dtype_name(b.dtype)));
}

std::shared_ptr<DeviceBsr> get_bsr(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v) {
  if (!BsrHandle::Is(v)) throw_type(env, fn, name + " must be a DeviceBsr (from cuda.toDeviceBsr or cuda.sddmm), got " + describe(v));
  auto b = BsrHandle::Get(env, fn, name, v);
  if (!b->values || b->values->disposed || !b->pattern) throw Napi::Error::New(env, fn + ": " + name + " was disposed");
  return b;
}

// cudaToDeviceBsr({ shape: [rows, cols], blockSize: n | [br, bc], rowPtr, colIdx, values }, options?: { dtype, stream })
Napi::Value CudaToDeviceBsr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "cuda.toDeviceBsr";
  require_cuda(env, fn);
  if (!info[0].IsObject() || info[0].IsArray() || info[0].IsTypedArray())
    throw_type(env, fn, "W must be a block-sparse matrix { shape, blockSize, rowPtr, colIdx, values }, got " + describe(info[0]));
  Napi::Object o = info[0].As<Napi::Object>();
  std::vector<int64_t> shape = get_shape(env, fn, "W.shape", o.Get("shape"));
  if (shape.size() != 2) throw_range(env, fn, "W.shape must be [rows, cols]");
  int64_t br, bc;
  Napi::Value bsv = o.Get("blockSize");
  if (bsv.IsNumber()) {
    br = bc = get_dim(env, fn, "W.blockSize", bsv);
  } else if (bsv.IsArray() && bsv.As<Napi::Array>().Length() == 2) {
    br = get_dim(env, fn, "W.blockSize[0]", bsv.As<Napi::Array>().Get(0u));
    bc = get_dim(env, fn, "W.blockSize[1]", bsv.As<Napi::Array>().Get(1u));
  } else {
    throw_type(env, fn, "W.blockSize must be a number or [blockRows, blockCols], got " + describe(bsv));
  }
  const int64_t rows = shape[0], cols = shape[1];
  if (rows % br || cols % bc)
    throw_range(env, fn, "W.shape " + shape_str(shape) + " is not divisible by blockSize [" + std::to_string(br) + ", " +
                             std::to_string(bc) + "]");
  const int64_t nbr = rows / br, nbc = cols / bc;
  auto row_ptr = get_array<int32_t>(env, fn, "W.rowPtr", o.Get("rowPtr"));
  auto col_idx = get_array<int32_t>(env, fn, "W.colIdx", o.Get("colIdx"));
  if (row_ptr.length != nbr + 1)
    throw_range(env, fn, "W.rowPtr must have rows/blockRows + 1 = " + std::to_string(nbr + 1) + " entries, got " + std::to_string(row_ptr.length));
  if (row_ptr.data[0] != 0) throw_range(env, fn, "W.rowPtr[0] must be 0, got " + std::to_string(row_ptr.data[0]));
  for (int64_t r = 0; r < nbr; ++r)
    if (row_ptr.data[r + 1] < row_ptr.data[r])
      throw_range(env, fn, "W.rowPtr must be non-decreasing (rowPtr[" + std::to_string(r + 1) + "] < rowPtr[" + std::to_string(r) + "])");
  const int64_t nnz = row_ptr.data[nbr];
  if (col_idx.length != nnz)
    throw_range(env, fn, "W.colIdx has " + std::to_string(col_idx.length) + " entries but rowPtr[last] = " + std::to_string(nnz));
  std::vector<int32_t> block_row(static_cast<size_t>(std::max<int64_t>(nnz, 1)));
  for (int64_t r = 0; r < nbr; ++r)
    for (int64_t p = row_ptr.data[r]; p < row_ptr.data[r + 1]; ++p) {
      int32_t c = col_idx.data[p];
      if (c < 0 || c >= nbc)
        throw_range(env, fn, "W.colIdx[" + std::to_string(p) + "] = " + std::to_string(c) + " is outside [0, " + std::to_string(nbc) + ")");
      if (p > row_ptr.data[r] && c <= col_idx.data[p - 1])
        throw_range(env, fn, "W.colIdx must be strictly increasing within a block row (colIdx[" + std::to_string(p) + "])");
      block_row[p] = static_cast<int32_t>(r);
    }
  Napi::Value opts = info.Length() > 1 ? info[1] : env.Undefined();
  sk_dtype dt = get_dtype(env, fn, "options.dtype", get_option(env, fn, opts, "dtype"), SK_F32);
  auto vals = get_array<float>(env, fn, "W.values", o.Get("values"));
  if (vals.length != nnz * br * bc)
    throw_range(env, fn, "W.values has " + std::to_string(vals.length) + " elements, expected nnzBlocks·blockRows·blockCols = " +
                             std::to_string(nnz * br * bc));
  StreamPtr s = get_stream(env, fn, opts);
  auto b = std::make_shared<DeviceBsr>();
  b->rows = rows;
  b->cols = cols;
  b->br = br;
  b->bc = bc;
  b->nnz = nnz;
  b->dtype = dt;
  b->pattern = std::make_shared<BsrPattern>();
  b->pattern->row_ptr = upload(env, fn, SK_I32, {nbr + 1}, row_ptr.data, s);
  int32_t dummy = 0;
  b->pattern->col_idx =
      upload(env, fn, SK_I32, {std::max<int64_t>(nnz, 1)}, nnz ? static_cast<const void*>(col_idx.data) : &dummy, s);
  b->pattern->block_row = upload(env, fn, SK_I32, {std::max<int64_t>(nnz, 1)}, block_row.data(), s);
  float fdummy = 0;
  const int64_t nv = std::max<int64_t>(nnz * br * bc, 1);
  if (dt == SK_F32) {
    b->values = upload(env, fn, SK_F32, {nv}, nnz ? vals.data : &fdummy, s);
  } else {
    std::vector<uint16_t> h = nnz ? to_bf16(vals.data, vals.length) : std::vector<uint16_t>(1, 0);
    b->values = upload(env, fn, SK_BF16, {nv}, h.data(), s);
  }
  return BsrHandle::Wrap(env, std::move(b), describe_bsr);
}

sk_cuda_bsr bsr_view(const DeviceBsr& b) {
  sk_cuda_bsr v{};
  v.rows = b.rows;
  v.cols = b.cols;
  v.br = b.br;
  v.bc = b.bc;
  v.nnz = b.nnz;
  v.d_row_ptr = static_cast<const int32_t*>(b.pattern->row_ptr->ptr);
  v.d_col_idx = static_cast<const int32_t*>(b.pattern->col_idx->ptr);
  v.d_block_row = static_cast<const int32_t*>(b.pattern->block_row->ptr);
  v.d_values = b.values ? b.values->ptr : nullptr;
  return v;
}

void use_pattern(Napi::Env env, const std::string& fn, const BsrPattern& p, const StreamPtr& s) {
  for (const BufPtr* b : {&p.row_ptr, &p.col_idx, &p.block_row}) use_on(env, fn, *b, s);
}

// cudaBsrLinear(x [m, in], Wb [out, in], options?: { bias, activation, outDtype, stream })
Napi::Value BsrLinearImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = fname("bsrLinear", async);
  const CudaApi& api = require_cuda(env, fn);
  BufPtr x = get_dev(env, fn, "x", info[0], 2, "[tokens, in]");
  require_float(env, fn, "x", x);
  auto w = get_bsr(env, fn, "W", info[1]);
  if (w->dtype != x->dtype) throw_type(env, fn, "W and x must have the same dtype");
  if (x->shape[1] != w->cols)
    throw_range(env, fn, "x.shape[1] = " + std::to_string(x->shape[1]) + " must equal W's in = " + std::to_string(w->cols));
  Napi::Value opts = info.Length() > 2 ? info[2] : env.Undefined();
  BufPtr bias = get_bias(env, fn, opts, w->rows);
  Activation act = get_activation(env, fn, get_option(env, fn, opts, "activation"));
  sk_dtype ydt = get_dtype(env, fn, "options.outDtype", get_option(env, fn, opts, "outDtype"), (sk_dtype)x->dtype);
  StreamPtr s = get_stream(env, fn, opts);
  use_on(env, fn, x, s);
  use_on(env, fn, bias, s);
  use_pattern(env, fn, *w->pattern, s);
  use_on(env, fn, w->values, s);
  const int64_t m = x->shape[0];
  BufPtr y = alloc(env, fn, ydt, {m, w->rows}, s);
  sk_cuda_bsr v = bsr_view(*w);
  check_cuda(env, fn, api.bsr_linear((sk_dtype)x->dtype, x->ptr, m, &v, bias ? static_cast<const float*>(bias->ptr) : nullptr,
                                     y->ptr, ydt, static_cast<int>(act), s->s));
  return finish(env, async, fn, wrap_buffer(env, y), s);
}
Napi::Value CudaBsrLinear(const Napi::CallbackInfo& i) { return BsrLinearImpl(i, false); }
Napi::Value CudaBsrLinearAsync(const Napi::CallbackInfo& i) { return BsrLinearImpl(i, true); }

// cudaSddmm(a [m, k], b [n, k], mask (DeviceBsr [m, n]), options?: { outDtype, stream }) → DeviceBsr with mask's pattern
Napi::Value SddmmImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = fname("sddmm", async);
  const CudaApi& api = require_cuda(env, fn);
  BufPtr a = get_dev(env, fn, "a", info[0], 2, "[m, k]");
  BufPtr b = get_dev(env, fn, "b", info[1], 2, "[n, k]");
  require_float(env, fn, "a", a);
  if (b->dtype != a->dtype) throw_type(env, fn, "a and b must have the same dtype");
  if (!BsrHandle::Is(info[2])) throw_type(env, fn, "mask must be a DeviceBsr, got " + describe(info[2]));
  auto mask = BsrHandle::Get(env, fn, "mask", info[2]);
  if (!mask->pattern) throw Napi::Error::New(env, fn + ": mask was disposed");
  const int64_t k = a->shape[1];
  if (b->shape[1] != k) throw_range(env, fn, "b.shape[1] must equal a.shape[1] = " + std::to_string(k));
  if (a->shape[0] != mask->rows || b->shape[0] != mask->cols)
    throw_range(env, fn, "mask.shape [" + std::to_string(mask->rows) + ", " + std::to_string(mask->cols) +
                             "] must be [a.shape[0], b.shape[0]] = [" + std::to_string(a->shape[0]) + ", " + std::to_string(b->shape[0]) + "]");
  Napi::Value opts = info.Length() > 3 ? info[3] : env.Undefined();
  sk_dtype odt = get_dtype(env, fn, "options.outDtype", get_option(env, fn, opts, "outDtype"), (sk_dtype)a->dtype);
  StreamPtr s = get_stream(env, fn, opts);
  use_on(env, fn, a, s);
  use_on(env, fn, b, s);
  use_pattern(env, fn, *mask->pattern, s);
  auto out = std::make_shared<DeviceBsr>(*mask);  // the same (shared) pattern
  out->dtype = odt;
  out->values = alloc(env, fn, odt, {std::max<int64_t>(mask->nnz * mask->br * mask->bc, 1)}, s);
  sk_cuda_bsr v = bsr_view(*mask);
  check_cuda(env, fn, api.sddmm((sk_dtype)a->dtype, a->ptr, b->ptr, k, &v, out->values->ptr, odt, s->s));
  return finish(env, async, fn, BsrHandle::Wrap(env, std::move(out), describe_bsr), s);
}
Napi::Value CudaSddmm(const Napi::CallbackInfo& i) { return SddmmImpl(i, false); }
Napi::Value CudaSddmmAsync(const Napi::CallbackInfo& i) { return SddmmImpl(i, true); }

// cudaBsrValues(Wb) → DeviceTensor [nnzBlocks, br, bc] sharing Wb's values (for toHost).
Napi::Value CudaBsrValues(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "cuda.bsrValues";
  require_cuda(env, fn);
  auto b = get_bsr(env, fn, "W", info[0]);
  // An alias of the same allocation would be freed twice; copy instead (device to device).
  BufPtr view = alloc(env, fn, b->dtype, {std::max<int64_t>(b->nnz, 1), b->br, b->bc}, b->values->last);
  check_cuda(env, fn, backend().api.memcpy_d2d(view->ptr, b->values->ptr, view->bytes, b->values->last->s));
  return wrap_buffer(env, view);
}

// ---- N:M -----------------------------------------------------------------------------------

void describe_nm(Napi::Env env, Napi::Object& o, const DeviceNM& p) {
  Napi::Array shape = Napi::Array::New(env, 2);
  shape.Set(0u, Napi::Number::New(env, double(p.rows)));
  shape.Set(1u, Napi::Number::New(env, double(p.cols)));
  shape.Freeze();
  NMHandle::Prop(o, "shape", shape);
  NMHandle::Prop(o, "n", Napi::Number::New(env, double(p.n)));
  NMHandle::Prop(o, "m", Napi::Number::New(env, double(p.m)));
  NMHandle::Prop(o, "dtype", Napi::String::New(env, dtype_name(p.dtype)));
  NMHandle::Prop(o, "layout", Napi::String::New(env, p.cutlass ? "cutlass-2:4" : "values+indices"));
}

// N:M matrices reach the GPU as the N:M family stores them (NMSparseMatrix:
// values + in-group indices packed in B bits, validated by sparsekit/nm.h),
// converted here: 2:4 bf16 to the CUTLASS / PyTorch semi-structured layout the
// sparse tensor cores read (nm_to_cutlass24), anything else to one index byte
// per kept value for the CUDA-core kernel.
std::shared_ptr<DeviceNM> upload_nm(Napi::Env env, const std::string& fn, const NmShape& sh, const float* values,
                                    const uint8_t* indices, sk_dtype dt, const StreamPtr& s) {
  auto p = std::make_shared<DeviceNM>();
  p->rows = sh.rows;
  p->cols = sh.cols;
  p->n = sh.n;
  p->m = sh.m;
  p->dtype = dt;
  const int64_t kept = nm_kept_per_row(sh);
  if (sh.n == 2 && sh.m == 4 && dt == SK_BF16 && sh.rows % 32 == 0 && sh.cols % 64 == 0) {
    std::vector<uint16_t> v(static_cast<size_t>(sh.rows * kept));
    std::vector<int16_t> meta(static_cast<size_t>(sh.rows * sh.cols / 16));
    Status st = nm_to_cutlass24(sh, values, indices, HalfType::kBFloat16, v.data(), meta.data());
    if (!st.ok()) throw_range(env, fn, st.message);
    p->cutlass = true;
    p->values = upload(env, fn, SK_BF16, {sh.rows * kept}, v.data(), s);
    p->meta = upload(env, fn, kU16, {static_cast<int64_t>(meta.size())}, meta.data(), s);
    return p;
  }
  const int bits = nm_index_bits(sh.m);
  const int64_t ib = nm_index_bytes_per_row(sh);
  std::vector<uint8_t> idx(static_cast<size_t>(sh.rows * kept));
  for (int64_t r = 0; r < sh.rows; ++r)
    for (int64_t j = 0; j < kept; ++j) {
      // index j of row r: bits [j·B, j·B + B) of the row, LSB first
      const int64_t bit = j * bits;
      uint32_t word = indices[r * ib + bit / 8];
      if (bit / 8 + 1 < ib) word |= static_cast<uint32_t>(indices[r * ib + bit / 8 + 1]) << 8;
      idx[r * kept + j] = static_cast<uint8_t>((word >> (bit % 8)) & ((1u << bits) - 1));
    }
  if (dt == SK_F32) {
    p->values = upload(env, fn, SK_F32, {sh.rows * kept}, values, s);
  } else {
    std::vector<uint16_t> h = to_bf16(values, sh.rows * kept);
    p->values = upload(env, fn, SK_BF16, {sh.rows * kept}, h.data(), s);
  }
  p->idx = upload(env, fn, kU8, {sh.rows * kept}, idx.data(), s);
  return p;
}

// A dense W [rows, cols] with at most n nonzeros per group of m, compressed
// by the N:M family's nm_from_mask (mask = W ≠ 0; short groups padded with the
// lowest free columns holding 0).
struct DenseNm {
  NmShape shape;
  std::vector<float> values;
  std::vector<uint8_t> indices;
};
DenseNm compress_dense_nm(Napi::Env env, const std::string& fn, const TensorArg<float>& w, int n, int m) {
  DenseNm d;
  d.shape.rows = w.dim(0);
  d.shape.cols = w.dim(1);
  d.shape.n = n;
  d.shape.m = m;
  Status st = nm_check_shape(d.shape);
  if (!st.ok()) throw_range(env, fn, "W: " + st.message);
  const int64_t count = d.shape.rows * d.shape.cols;
  std::vector<float> mask(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) mask[i] = w.data()[i] != 0.f ? 1.f : 0.f;
  d.values.resize(static_cast<size_t>(d.shape.rows * nm_kept_per_row(d.shape)));
  d.indices.resize(static_cast<size_t>(d.shape.rows * nm_index_bytes_per_row(d.shape)));
  st = nm_from_mask(w.data(), mask.data(), d.shape, d.values.data(), d.indices.data());
  if (!st.ok()) throw_range(env, fn, "W is not " + std::to_string(n) + ":" + std::to_string(m) + " sparse: " + st.message);
  return d;
}

// cudaPackCutlass24(W [rows, cols] f32 dense 2:4) → { values: Uint16Array (bf16 bits), meta: Int16Array }
// Host only (no GPU needed): the layout sk_cuda_nm24_linear reads.
Napi::Value CudaPackCutlass24(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "cuda.packCutlass24";
  auto w = get_tensor<float>(env, fn, "W", info[0], 2, "[out, in]");
  DenseNm d = compress_dense_nm(env, fn, w, 2, 4);
  auto values = Napi::Uint16Array::New(env, d.values.size());
  auto meta = Napi::Int16Array::New(env, static_cast<size_t>(d.shape.rows * d.shape.cols / 16));
  Status st = nm_to_cutlass24(d.shape, d.values.data(), d.indices.data(), HalfType::kBFloat16, values.Data(), meta.Data());
  if (!st.ok()) throw_range(env, fn, st.message);
  Napi::Object o = Napi::Object::New(env);
  o.Set("values", values);
  o.Set("meta", meta);
  return o;
}

// cudaToDeviceNM24({ values: Uint16Array [rows·cols/2] (bf16 bits), meta: Uint16Array|Int16Array [rows·cols/16], shape }, options?)
Napi::Value CudaToDeviceNM24(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "cuda.toDeviceNM24";
  require_cuda(env, fn);
  if (!info[0].IsObject() || info[0].IsArray() || info[0].IsTypedArray())
    throw_type(env, fn, "W must be { values, meta, shape } in the CUTLASS 2:4 layout, got " + describe(info[0]));
  Napi::Object o = info[0].As<Napi::Object>();
  std::vector<int64_t> shape;
  if (o.Has("shape")) {
    shape = get_shape(env, fn, "W.shape", o.Get("shape"));
    if (shape.size() != 2) throw_range(env, fn, "W.shape must be [out, in]");
  } else {
    shape = {get_dim(env, fn, "W.rows", o.Get("rows")), get_dim(env, fn, "W.cols", o.Get("cols"))};
  }
  Napi::Value dtv = o.Get("dtype");
  if (!is_absent(dtv) && !(dtv.IsString() && dtv.As<Napi::String>().Utf8Value() == "bfloat16"))
    throw_range(env, fn, "W.dtype must be 'bfloat16' (the GPU's 2:4 kernel is bf16): export with toCutlass24('bfloat16')");
  const int64_t rows = shape[0], cols = shape[1];
  if (rows % 32 || cols % 64) throw_range(env, fn, "the GPU's 2:4 kernel needs out % 32 == 0 and in % 64 == 0, got " + shape_str(shape));
  auto values = get_array<uint16_t>(env, fn, "W.values", o.Get("values"));
  if (values.length != rows * cols / 2)
    throw_range(env, fn, "W.values must have out·in/2 = " + std::to_string(rows * cols / 2) + " bf16 values, got " + std::to_string(values.length));
  Napi::Value mv = o.Get("meta");
  const uint16_t* meta = nullptr;
  int64_t mlen = 0;
  if (mv.IsTypedArray() && mv.As<Napi::TypedArray>().TypedArrayType() == napi_int16_array) {
    auto a = mv.As<Napi::Int16Array>();
    meta = reinterpret_cast<const uint16_t*>(a.Data());
    mlen = static_cast<int64_t>(a.ElementLength());
  } else {
    auto a = get_array<uint16_t>(env, fn, "W.meta", mv);
    meta = a.data;
    mlen = a.length;
  }
  if (mlen != rows * cols / 16)
    throw_range(env, fn, "W.meta must have out·in/16 = " + std::to_string(rows * cols / 16) + " entries, got " + std::to_string(mlen));
  // mma.sp::ordered_metadata needs the two indices of every group distinct and increasing.
  for (int64_t i = 0; i < mlen; ++i)
    for (int g = 0; g < 4; ++g) {
      const int nib = (meta[i] >> (4 * g)) & 0xf, i0 = nib & 3, i1 = nib >> 2;
      if (i0 >= i1)
        throw_range(env, fn, "W.meta[" + std::to_string(i) + "] group " + std::to_string(g) + " has indices (" + std::to_string(i0) +
                                 ", " + std::to_string(i1) + "): each group's two indices must be distinct and increasing");
    }
  StreamPtr s = get_stream(env, fn, info.Length() > 1 ? info[1] : env.Undefined());
  auto p = std::make_shared<DeviceNM>();
  p->rows = rows;
  p->cols = cols;
  p->n = 2;
  p->m = 4;
  p->cutlass = true;
  p->dtype = SK_BF16;
  p->values = upload(env, fn, SK_BF16, {rows * cols / 2}, values.data, s);
  p->meta = upload(env, fn, kU16, {mlen}, meta, s);
  return NMHandle::Wrap(env, std::move(p), describe_nm);
}

// cudaToDeviceNM(W, options?: { n, m, dtype, stream }): W is an N:M matrix
// (NMSparseMatrix: its own n, m) or a dense [rows, cols] tensor with at most
// n nonzeros per group of m (options.n, options.m).
Napi::Value CudaToDeviceNM(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "cuda.toDeviceNM";
  require_cuda(env, fn);
  Napi::Value opts = info.Length() > 1 ? info[1] : env.Undefined();
  sk_dtype dt = get_dtype(env, fn, "options.dtype", get_option(env, fn, opts, "dtype"), SK_BF16);
  StreamPtr s = get_stream(env, fn, opts);
  std::shared_ptr<DeviceNM> p;
  if (info[0].IsObject() && info[0].As<Napi::Object>().Has("indices")) {
    NmArg a = get_nm(env, fn, "W", info[0], true);
    p = upload_nm(env, fn, a.shape, a.values.data, a.indices.data, dt, s);
  } else {
    auto w = get_tensor<float>(env, fn, "W", info[0], 2, "[out, in] (or an NMSparseMatrix)");
    int n, m;
    get_pattern(env, fn, "options.", get_option(env, fn, opts, "n"), get_option(env, fn, opts, "m"), &n, &m);
    DenseNm d = compress_dense_nm(env, fn, w, n, m);
    p = upload_nm(env, fn, d.shape, d.values.data(), d.indices.data(), dt, s);
  }
  return NMHandle::Wrap(env, std::move(p), describe_nm);
}

// cudaNMLinear(x [m, in], W (DeviceNM [out, in]), options?: { bias, activation, outDtype, stream })
Napi::Value NMLinearImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = fname("nmLinear", async);
  const CudaApi& api = require_cuda(env, fn);
  BufPtr x = get_dev(env, fn, "x", info[0], 2, "[tokens, in]");
  require_float(env, fn, "x", x);
  if (!NMHandle::Is(info[1])) throw_type(env, fn, "W must be a DeviceNM (from cuda.toDeviceNM or cuda.toDeviceNM24), got " + describe(info[1]));
  auto w = NMHandle::Get(env, fn, "W", info[1]);
  if (!w->values || w->values->disposed) throw Napi::Error::New(env, fn + ": W was disposed");
  if (w->dtype != x->dtype)
    throw_type(env, fn, std::string("W is ") + dtype_name(w->dtype) + " but x is " + dtype_name((sk_dtype)x->dtype) + ": they must match");
  if (x->shape[1] != w->cols)
    throw_range(env, fn, "x.shape[1] = " + std::to_string(x->shape[1]) + " must equal W's in = " + std::to_string(w->cols));
  Napi::Value opts = info.Length() > 2 ? info[2] : env.Undefined();
  BufPtr bias = get_bias(env, fn, opts, w->rows);
  Activation act = get_activation(env, fn, get_option(env, fn, opts, "activation"));
  sk_dtype ydt = get_dtype(env, fn, "options.outDtype", get_option(env, fn, opts, "outDtype"), (sk_dtype)x->dtype);
  StreamPtr s = get_stream(env, fn, opts);
  use_on(env, fn, x, s);
  use_on(env, fn, bias, s);
  for (const BufPtr* p : {&w->values, &w->meta, &w->idx}) use_on(env, fn, *p, s);
  const int64_t m = x->shape[0];
  BufPtr y = alloc(env, fn, ydt, {m, w->rows}, s);
  const float* bp = bias ? static_cast<const float*>(bias->ptr) : nullptr;
  if (w->cutlass)
    check_cuda(env, fn, api.nm24_linear(x->ptr, w->values->ptr, static_cast<const uint16_t*>(w->meta->ptr), bp, y->ptr, ydt, m,
                                        w->rows, w->cols, static_cast<int>(act), s->s));
  else
    check_cuda(env, fn, api.nm_linear((sk_dtype)x->dtype, x->ptr, w->values->ptr, static_cast<const uint8_t*>(w->idx->ptr), bp,
                                      y->ptr, ydt, m, w->rows, w->cols, static_cast<int>(w->n), static_cast<int>(w->m),
                                      static_cast<int>(act), s->s));
  return finish(env, async, fn, wrap_buffer(env, y), s);
}
Napi::Value CudaNMLinear(const Napi::CallbackInfo& i) { return NMLinearImpl(i, false); }
Napi::Value CudaNMLinearAsync(const Napi::CallbackInfo& i) { return NMLinearImpl(i, true); }

}  // namespace

void RegisterCuda(Napi::Env env, Napi::Object exports) {
  StreamHandle::Init(env, exports, "CudaStream", "use cuda.createStream() to make a stream");
  BufferHandle::Init(env, exports, "DeviceBuffer", "use cuda.toDevice() to make a device tensor");
  PlanHandle::Init(env, exports, "DevicePlan", "use cuda.toDevicePlan() or cuda.route() to make a device routing plan");
  BsrHandle::Init(env, exports, "DeviceBsr", "use cuda.toDeviceBsr() to upload a block-sparse matrix");
  NMHandle::Init(env, exports, "DeviceNM", "use cuda.toDeviceNM() or cuda.toDeviceNM24() to upload an N:M matrix");
  struct F {
    const char* name;
    Napi::Value (*fn)(const Napi::CallbackInfo&);
  };
  const F fns[] = {
      {"cudaInfo", CudaInfo},
      {"cudaSetOption", CudaSetOption},
      {"cudaMemoryStats", CudaMemoryStats},
      {"cudaCreateStream", CudaStreamCreate},
      {"cudaSynchronize", CudaSynchronize},
      {"cudaSynchronizeAsync", CudaSynchronizeAsync},
      {"cudaToDevice", CudaToDevice},
      {"cudaZeros", CudaZeros},
      {"cudaRandom", CudaRandom},
      {"cudaToHost", CudaToHost},
      {"cudaToHostAsync", CudaToHostAsync},
      {"cudaDispose", CudaDispose},
      {"cudaLinear", CudaLinear},
      {"cudaLinearAsync", CudaLinearAsync},
      {"cudaToDevicePlan", CudaToDevicePlan},
      {"cudaPlanToHost", CudaPlanToHost},
      {"cudaPlanToHostAsync", CudaPlanToHostAsync},
      {"cudaRoute", CudaRoute},
      {"cudaRouteAsync", CudaRouteAsync},
      {"cudaGroupedLinear", CudaGroupedLinear},
      {"cudaGroupedLinearAsync", CudaGroupedLinearAsync},
      {"cudaGroupedGatedLinear", CudaGroupedGatedLinear},
      {"cudaGroupedGatedLinearAsync", CudaGroupedGatedLinearAsync},
      {"cudaPermute", CudaPermute},
      {"cudaPermuteAsync", CudaPermuteAsync},
      {"cudaCombine", CudaCombine},
      {"cudaCombineAsync", CudaCombineAsync},
      {"cudaAddRowsInto", CudaAddRowsInto},
      {"cudaToDeviceBsr", CudaToDeviceBsr},
      {"cudaBsrValues", CudaBsrValues},
      {"cudaBsrLinear", CudaBsrLinear},
      {"cudaBsrLinearAsync", CudaBsrLinearAsync},
      {"cudaSddmm", CudaSddmm},
      {"cudaSddmmAsync", CudaSddmmAsync},
      {"cudaPackCutlass24", CudaPackCutlass24},
      {"cudaToDeviceNM24", CudaToDeviceNM24},
      {"cudaToDeviceNM", CudaToDeviceNM},
      {"cudaNMLinear", CudaNMLinear},
      {"cudaNMLinearAsync", CudaNMLinearAsync},
  };
  for (const F& f : fns) exports.Set(f.name, Napi::Function::New(env, f.fn, f.name));
}

}  // namespace binding
}  // namespace sparsekit
