// Shared device helpers of the CUDA plugin: dtypes, activations, PTX wrappers
// (cp.async, ldmatrix, mma.sync, mma.sp) and error reporting.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <string>

#include "sparsekit_cuda.h"

namespace skc {

using bf16 = __nv_bfloat16;

// ---- error reporting (host) ------------------------------------------------------------

// Sets the calling thread's message (sk_cuda_last_error) and returns `code`.
int fail(int code, const std::string& message);
// Checks a runtime call: on failure records "<what>: <cudaGetErrorString>".
int check(cudaError_t e, const char* what);
// After a kernel launch: the launch error, if any.
inline int check_launch(const char* kernel) { return check(cudaGetLastError(), kernel); }

#define SKC_TRY(expr)             \
  do {                            \
    int skc_rc_ = (expr);         \
    if (skc_rc_ != SK_CUDA_OK) return skc_rc_; \
  } while (0)

inline cudaStream_t stream_of(sk_cuda_stream s) { return reinterpret_cast<cudaStream_t>(s); }

// The device's properties, read once (device 0).
struct DeviceProps {
  int sm = 0;  // major·10 + minor
  int multiprocessors = 0;
  size_t smem_optin = 0;  // max dynamic shared memory per block after opt-in
};
const DeviceProps& device_props();
// Whether the sm_90a warpgroup GEMM may be used (device is sm_90 and the option is on).
bool use_wgmma();
// The sm_90a kernels feed shared memory with the tensor memory accelerator (option "tma", default on).
bool use_tma();
// Tuning: row tiles per raster run of the TMA linear kernel (option "raster", 0 = all).
int tma_raster();
// The TMA kernels' epilogue specialised per output type / activation / bias (option "epilogue").
bool tma_lean_epilogue();

// Temporary device memory for one call, freed in stream order at scope exit.
class StreamBuffer {
 public:
  StreamBuffer() = default;
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  ~StreamBuffer() {
    if (p_) cudaFreeAsync(p_, s_);
  }
  int alloc(size_t bytes, cudaStream_t s) {
    s_ = s;
    cudaError_t e = cudaMallocAsync(&p_, bytes ? bytes : 16, s);
    if (e != cudaSuccess) {
      p_ = nullptr;
      return check(e, "cudaMallocAsync (workspace)");
    }
    return SK_CUDA_OK;
  }
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
  cudaStream_t s_ = nullptr;
};

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Kernels with more than 48 KB of dynamic shared memory need an opt-in, once
// per kernel (remembered by address).
int allow_smem(const void* kernel, size_t smem);
template <class K>
int prepare(K* kernel, size_t smem) {
  if (smem <= 48 * 1024) return SK_CUDA_OK;
  return allow_smem(reinterpret_cast<const void*>(kernel), smem);
}

// ---- element types ---------------------------------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

// ---- activations (same definitions as the CPU kernels) ----------------------------------

__device__ __forceinline__ float activate(float v, int act) {
  switch (act) {
    case SK_ACT_RELU: return v > 0.f ? v : 0.f;
    case SK_ACT_GELU: return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    case SK_ACT_GELU_TANH: {
      const float c = 0.7978845608028654f;  // sqrt(2/pi)
      return 0.5f * v * (1.f + tanhf(c * (v + 0.044715f * v * v * v)));
    }
    case SK_ACT_SILU: return v / (1.f + expf(-v));
    default: return v;
  }
}

// Writes v (already activated) as T at y[idx].
template <class T>
__device__ __forceinline__ void store1(void* y, int64_t idx, float v) {
  static_cast<T*>(y)[idx] = from_float<T>(v);
}

// Two adjacent outputs y[idx], y[idx + 1]; idx even and y 8-byte (f32) / 4-byte (bf16) aligned.
__device__ __forceinline__ void store2(float* y, int64_t idx, float a, float b) {
  *reinterpret_cast<float2*>(y + idx) = make_float2(a, b);
}
__device__ __forceinline__ void store2(bf16* y, int64_t idx, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(y + idx) = __floats2bfloat162_rn(a, b);
}

// ---- PTX wrappers ------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global → shared; src_bytes < 16 zero-fills the rest (0: all zeros, nothing read).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(src_bytes));
}
// 4 bytes global → shared (cache at all levels); src_bytes 0 writes zero.
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}

// D = A·B + D, A 16×16 bf16 (row), B 16×8 bf16 (col), D 16×8 f32.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Sparse D = A·B + D with A 16×32 bf16 2:4-compressed to 16×16 (same register layout as the
// dense m16n8k16 A fragment), B 32×8 bf16, metadata `e` from the threads chosen by SEL
// (0: lanes 4g+0/1, 1: lanes 4g+2/3).
template <int SEL>
__device__ __forceinline__ void mma_sp_bf16_16832(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                                  uint32_t e) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, %13;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e), "n"(SEL));
}

}  // namespace skc
