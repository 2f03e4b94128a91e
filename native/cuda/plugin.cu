// The plugin's runtime half: version, device query, streams, memory, dtype
// conversion, options and error messages. The ops live in dense.cu,
// experts.cu, bsr.cu, nm.cu and route.cu.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>
#include <unordered_map>
#include <string>

#include "common.cuh"

namespace skc {

namespace {
thread_local std::string g_last_error;
std::mutex g_props_mu;
DeviceProps g_props;
bool g_props_ready = false;
// SPARSEKIT_CUDA_WGMMA=0 / SPARSEKIT_CUDA_TMA=0 start with that option off
// (as cuda.setOption('wgmma' | 'tma', false)).
bool env_default_on(const char* name) {
  const char* v = std::getenv(name);
  return !(v && strcmp(v, "0") == 0);
}
bool g_wgmma_enabled = env_default_on("SPARSEKIT_CUDA_WGMMA");
bool g_tma_enabled = env_default_on("SPARSEKIT_CUDA_TMA");
int g_tma_raster = 0;  // tuning: row tiles per raster run of the TMA linear kernel (0: all)
// The TMA kernels' epilogue compiled per (output type, activation, bias): off
// until a GPU run has checked it (SPARSEKIT_CUDA_EPILOGUE=1 or option "epilogue").
bool g_tma_lean = [] {
  const char* v = std::getenv("SPARSEKIT_CUDA_EPILOGUE");
  return v && strcmp(v, "1") == 0;
}();
}  // namespace

int fail(int code, const std::string& message) {
  g_last_error = message;
  return code;
}

int check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return SK_CUDA_OK;
  int code = e == cudaErrorMemoryAllocation ? SK_CUDA_ENOMEM : SK_CUDA_ERUNTIME;
  return fail(code, std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

const DeviceProps& device_props() {
  std::lock_guard<std::mutex> lock(g_props_mu);
  if (!g_props_ready) {
    int dev = 0;
    cudaGetDevice(&dev);
    int major = 0, minor = 0, sms = 0, optin = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    g_props.sm = major * 10 + minor;
    g_props.multiprocessors = sms;
    g_props.smem_optin = static_cast<size_t>(optin);
    g_props_ready = true;
  }
  return g_props;
}

bool use_wgmma() { return g_wgmma_enabled && device_props().sm == 90; }
bool use_tma() { return g_tma_enabled; }
int tma_raster() { return g_tma_raster; }
bool tma_lean_epilogue() { return g_tma_lean; }

int allow_smem(const void* kernel, size_t smem) {
  static std::mutex mu;
  static std::unordered_map<const void*, size_t> done;
  std::lock_guard<std::mutex> lock(mu);
  auto it = done.find(kernel);
  if (it != done.end() && it->second >= smem) return SK_CUDA_OK;
  int rc = check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                 "cudaFuncSetAttribute (dynamic shared memory)");
  if (rc == SK_CUDA_OK) done[kernel] = smem;
  return rc;
}

namespace {

__global__ void convert_kernel(void* dst, int dst_dt, const void* src, int src_dt, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float v = src_dt == SK_F32 ? static_cast<const float*>(src)[i] : __bfloat162float(static_cast<const bf16*>(src)[i]);
    if (dst_dt == SK_F32)
      static_cast<float*>(dst)[i] = v;
    else
      static_cast<bf16*>(dst)[i] = __float2bfloat16_rn(v);
  }
}

size_t dtype_size(sk_dtype d) { return d == SK_BF16 ? 2 : 4; }

// Counter-based: "lowbias32" (Chris Wellons' hash prospector) of the index
// mixed with the seed, so any element can be computed on its own.
__device__ __forceinline__ uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

__global__ void fill_random_kernel(void* dst, int dt, int64_t n, uint64_t seed, float scale) {
  const uint32_t k0 = mix32(static_cast<uint32_t>(seed) ^ 0x9e3779b9u), k1 = mix32(static_cast<uint32_t>(seed >> 32) + k0);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const uint32_t h = mix32(mix32(static_cast<uint32_t>(i) ^ k0) ^ (static_cast<uint32_t>(i >> 32) + k1));
    const float v = (static_cast<float>(h >> 8) * (1.0f / 8388608.0f) - 1.0f) * scale;
    if (dt == SK_F32)
      static_cast<float*>(dst)[i] = v;
    else
      static_cast<bf16*>(dst)[i] = __float2bfloat16_rn(v);
  }
}

}  // namespace
}  // namespace skc

using namespace skc;

extern "C" {

SK_CUDA_API int sk_cuda_abi_version(void) { return SK_CUDA_ABI_VERSION; }

SK_CUDA_API const char* sk_cuda_last_error(void) { return g_last_error.c_str(); }

SK_CUDA_API int sk_cuda_query(sk_cuda_device_info* out) {
  if (!out) return fail(SK_CUDA_EINVAL, "sk_cuda_query: null output");
  memset(out, 0, sizeof(*out));
  cudaRuntimeGetVersion(&out->runtime_version);
  // 0 when libcuda.so.1 cannot be loaded at all.
  cudaDriverGetVersion(&out->driver_version);
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it: it is not sticky, and later calls must not see it
    if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice || e == cudaErrorInitializationError ||
        e == cudaErrorSystemDriverMismatch || e == cudaErrorCompatNotSupportedOnDevice) {
      if (out->driver_version == 0) {
        out->status = SK_CUDA_ENODRIVER;
        snprintf(out->message, sizeof(out->message),
                 "no CUDA driver: libcuda.so.1 could not be loaded (cudaGetDeviceCount: %s)", cudaGetErrorName(e));
      } else if (e == cudaErrorNoDevice) {
        out->status = SK_CUDA_ENODEVICE;
        snprintf(out->message, sizeof(out->message), "no CUDA GPU: the driver (%d.%d) reports no device",
                 out->driver_version / 1000, (out->driver_version % 1000) / 10);
      } else if (out->driver_version < out->runtime_version) {
        out->status = SK_CUDA_ENODRIVER;
        snprintf(out->message, sizeof(out->message),
                 "the CUDA driver (%d.%d) is older than the plugin's CUDA runtime (%d.%d): update the driver",
                 out->driver_version / 1000, (out->driver_version % 1000) / 10, out->runtime_version / 1000,
                 (out->runtime_version % 1000) / 10);
      } else {
        out->status = SK_CUDA_ENODEVICE;
        snprintf(out->message, sizeof(out->message), "no usable CUDA GPU (cudaGetDeviceCount: %s: %s)",
                 cudaGetErrorName(e), cudaGetErrorString(e));
      }
    } else {
      out->status = SK_CUDA_ENODEVICE;
      snprintf(out->message, sizeof(out->message), "CUDA initialisation failed (cudaGetDeviceCount: %s: %s)",
               cudaGetErrorName(e), cudaGetErrorString(e));
    }
    return out->status;
  }
  out->device_count = count;
  if (count == 0) {
    out->status = SK_CUDA_ENODEVICE;
    snprintf(out->message, sizeof(out->message), "no CUDA GPU: cudaGetDeviceCount returned 0");
    return out->status;
  }
  out->device = 0;
  cudaDeviceProp p;
  e = cudaGetDeviceProperties(&p, 0);
  if (e != cudaSuccess) {
    cudaGetLastError();
    out->status = SK_CUDA_ENODEVICE;
    snprintf(out->message, sizeof(out->message), "cudaGetDeviceProperties(0) failed: %s", cudaGetErrorString(e));
    return out->status;
  }
  snprintf(out->name, sizeof(out->name), "%s", p.name);
  out->sm_major = p.major;
  out->sm_minor = p.minor;
  out->multiprocessors = p.multiProcessorCount;
  out->total_memory = p.totalGlobalMem;
  out->has_sm90a = p.major == 9 && p.minor == 0;
  if (p.major < 8) {
    out->status = SK_CUDA_EUNSUPPORTED;
    snprintf(out->message, sizeof(out->message),
             "GPU %s is sm_%d%d; the plugin's kernels need sm_80 or newer (bf16 tensor cores, cp.async)", p.name,
             p.major, p.minor);
    return out->status;
  }
  out->status = SK_CUDA_OK;
  return SK_CUDA_OK;
}

SK_CUDA_API int sk_cuda_set_option(const char* name, int64_t value) {
  if (!name) return fail(SK_CUDA_EINVAL, "sk_cuda_set_option: null name");
  if (strcmp(name, "wgmma") == 0) {
    g_wgmma_enabled = value != 0;
    return SK_CUDA_OK;
  }
  if (strcmp(name, "tma") == 0) {
    g_tma_enabled = value != 0;
    return SK_CUDA_OK;
  }
  if (strcmp(name, "epilogue") == 0) {
    g_tma_lean = value != 0;
    return SK_CUDA_OK;
  }
  if (strcmp(name, "raster") == 0) {
    if (value < 0 || value > 1 << 20) return fail(SK_CUDA_EINVAL, "sk_cuda_set_option: raster must be 0 … 2^20");
    g_tma_raster = static_cast<int>(value);
    return SK_CUDA_OK;
  }
  return fail(SK_CUDA_EINVAL, std::string("sk_cuda_set_option: unknown option '") + name + "'");
}

SK_CUDA_API int sk_cuda_stream_create(sk_cuda_stream* out) {
  cudaStream_t s = nullptr;
  SKC_TRY(check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags"));
  *out = reinterpret_cast<sk_cuda_stream>(s);
  return SK_CUDA_OK;
}

SK_CUDA_API int sk_cuda_stream_destroy(sk_cuda_stream s) {
  // Returns at once; the stream's pending work still completes.
  return check(cudaStreamDestroy(stream_of(s)), "cudaStreamDestroy");
}

SK_CUDA_API int sk_cuda_stream_synchronize(sk_cuda_stream s) {
  return check(cudaStreamSynchronize(stream_of(s)), "cudaStreamSynchronize");
}

SK_CUDA_API int sk_cuda_stream_wait(sk_cuda_stream waiter, sk_cuda_stream producer) {
  if (waiter == producer) return SK_CUDA_OK;
  cudaEvent_t ev;
  SKC_TRY(check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreateWithFlags"));
  int rc = check(cudaEventRecord(ev, stream_of(producer)), "cudaEventRecord");
  if (rc == SK_CUDA_OK) rc = check(cudaStreamWaitEvent(stream_of(waiter), ev, 0), "cudaStreamWaitEvent");
  cudaEventDestroy(ev);  // released once the wait has been satisfied
  return rc;
}

SK_CUDA_API int sk_cuda_malloc(void** out, size_t bytes, sk_cuda_stream s) {
  if (!out) return fail(SK_CUDA_EINVAL, "sk_cuda_malloc: null output");
  *out = nullptr;
  // Stream-ordered pool allocation: freeing needs no device-wide synchronisation.
  return check(cudaMallocAsync(out, bytes ? bytes : 16, stream_of(s)), "cudaMallocAsync");
}

SK_CUDA_API int sk_cuda_free(void* p, sk_cuda_stream s) {
  if (!p) return SK_CUDA_OK;
  return check(cudaFreeAsync(p, stream_of(s)), "cudaFreeAsync");
}

SK_CUDA_API int sk_cuda_memcpy_h2d(void* dst, const void* src, size_t bytes, sk_cuda_stream s) {
  if (!bytes) return SK_CUDA_OK;
  return check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_of(s)), "cudaMemcpyAsync (host to device)");
}

SK_CUDA_API int sk_cuda_memcpy_d2h(void* dst, const void* src, size_t bytes, sk_cuda_stream s) {
  if (!bytes) return SK_CUDA_OK;
  SKC_TRY(check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_of(s)), "cudaMemcpyAsync (device to host)"));
  // Pageable destinations are copied synchronously already; pinned ones are not.
  return check(cudaStreamSynchronize(stream_of(s)), "cudaStreamSynchronize (after device to host copy)");
}

SK_CUDA_API int sk_cuda_memcpy_d2d(void* dst, const void* src, size_t bytes, sk_cuda_stream s) {
  if (!bytes) return SK_CUDA_OK;
  return check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_of(s)), "cudaMemcpyAsync (device to device)");
}

SK_CUDA_API int sk_cuda_memset(void* dst, int byte, size_t bytes, sk_cuda_stream s) {
  if (!bytes) return SK_CUDA_OK;
  return check(cudaMemsetAsync(dst, byte, bytes, stream_of(s)), "cudaMemsetAsync");
}

SK_CUDA_API int sk_cuda_convert(void* dst, sk_dtype dst_dt, const void* src, sk_dtype src_dt, int64_t n,
                                sk_cuda_stream s) {
  if (n < 0) return fail(SK_CUDA_EINVAL, "sk_cuda_convert: negative length");
  if (n == 0) return SK_CUDA_OK;
  if (dst_dt == src_dt) return sk_cuda_memcpy_d2d(dst, src, static_cast<size_t>(n) * dtype_size(src_dt), s);
  if ((dst_dt != SK_F32 && dst_dt != SK_BF16) || (src_dt != SK_F32 && src_dt != SK_BF16))
    return fail(SK_CUDA_EINVAL, "sk_cuda_convert: only f32 <-> bf16");
  int64_t blocks = ceil_div(n, 256);
  if (blocks > 65535 * 8) blocks = 65535 * 8;
  convert_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream_of(s)>>>(dst, dst_dt, src, src_dt, n);
  return check_launch("convert_kernel");
}

SK_CUDA_API int sk_cuda_fill_random(void* dst, sk_dtype dt, int64_t n, uint64_t seed, float scale, sk_cuda_stream s) {
  if (n < 0 || (dt != SK_F32 && dt != SK_BF16)) return fail(SK_CUDA_EINVAL, "sk_cuda_fill_random: bad length or dtype");
  if (n == 0) return SK_CUDA_OK;
  int64_t blocks = ceil_div(n, 256);
  if (blocks > 65535 * 8) blocks = 65535 * 8;
  fill_random_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream_of(s)>>>(dst, dt, n, seed, scale);
  return check_launch("fill_random_kernel");
}

}  // extern "C"
