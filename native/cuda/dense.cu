// Dense linear layer y = act(x·Wᵀ + b): bf16 on tensor cores (mma.sync, or the
// sm_90a warpgroup kernel in wgmma.cu where the device has it), f32 on CUDA cores.
#include "gemm.cuh"
#include "ops.h"

namespace skc {
namespace {

template <class Cfg, bool VEC>
__global__ void __launch_bounds__(Cfg::THREADS)
    linear_mma_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w, const float* __restrict__ bias,
                      void* __restrict__ y, int ydt, int64_t m, int64_t n, int64_t k, int act) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * Cfg::BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * Cfg::BN;
  ContiguousSource<bf16> src;
  src.a = x + m0 * k;
  src.b = w + n0 * k;
  src.b3 = nullptr;
  src.lda = src.ldb = k;
  src.a_rows = static_cast<int>(min64(Cfg::BM, m - m0));
  src.b_rows = static_cast<int>(min64(Cfg::BN, n - n0));
  src.k = k;
  src.iters = static_cast<int>((k + Cfg::BK - 1) / Cfg::BK);
  src.safe = x;
  MmaAcc<Cfg> acc;
  mma_mainloop<Cfg, VEC>(src, reinterpret_cast<bf16*>(smem_raw), acc);
  const int rows = src.a_rows;
  mma_epilogue<Cfg>(acc, [&](int r, int c, float v0, float v1, float, float) {
    if (r < rows) store_pair<false>(y, ydt, n, m0 + r, n0 + c, n, v0, v1, 0.f, 0.f, bias, act);
  });
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS)
    linear_simt_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                       void* __restrict__ y, int ydt, int64_t m, int64_t n, int64_t k, int act) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * Cfg::BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * Cfg::BN;
  ContiguousSource<float> src;
  src.a = x + m0 * k;
  src.b = w + n0 * k;
  src.b3 = nullptr;
  src.lda = src.ldb = k;
  src.a_rows = static_cast<int>(min64(Cfg::BM, m - m0));
  src.b_rows = static_cast<int>(min64(Cfg::BN, n - n0));
  src.k = k;
  src.iters = static_cast<int>((k + Cfg::BK - 1) / Cfg::BK);
  src.safe = x;
  SimtAcc<Cfg> acc;
  simt_mainloop<Cfg>(src, reinterpret_cast<float*>(smem_raw), acc);
  const int rows = src.a_rows, cols = src.b_rows;
  simt_epilogue<Cfg>(acc, [&](int r, int c, float v, float) {
    if (r < rows && c < cols) store_one(y, ydt, (m0 + r) * n + n0 + c, finish<false>(v, 0.f, bias, n0 + c, act));
  });
}

// Large dynamic shared memory needs an opt-in per kernel.


template <class Cfg, bool VEC>
int launch_mma(const bf16* x, const bf16* w, const float* bias, void* y, int ydt, int64_t m, int64_t n, int64_t k,
               int act, cudaStream_t s) {
  auto kern = linear_mma_kernel<Cfg, VEC>;
  SKC_TRY(prepare(kern, Cfg::SMEM));
  dim3 grid(static_cast<unsigned>(ceil_div(m, Cfg::BM)), static_cast<unsigned>(ceil_div(n, Cfg::BN)));
  kern<<<grid, Cfg::THREADS, Cfg::SMEM, s>>>(x, w, bias, y, ydt, m, n, k, act);
  return check_launch("linear_mma_kernel");
}

template <class Cfg>
int launch_simt(const float* x, const float* w, const float* bias, void* y, int ydt, int64_t m, int64_t n, int64_t k,
                int act, cudaStream_t s) {
  auto kern = linear_simt_kernel<Cfg>;
  SKC_TRY(prepare(kern, Cfg::SMEM));
  dim3 grid(static_cast<unsigned>(ceil_div(m, Cfg::BM)), static_cast<unsigned>(ceil_div(n, Cfg::BN)));
  kern<<<grid, Cfg::THREADS, Cfg::SMEM, s>>>(x, w, bias, y, ydt, m, n, k, act);
  return check_launch("linear_simt_kernel");
}

// bf16 tiles: decode-sized batches stream W with narrow tiles (more CTAs to
// share the bandwidth); large ones use 128×256 CTA tiles of 64×64 warp tiles.
using MmaSmall = MmaCfg<16, 64, 64, 1, 4, 4>;
using MmaMedium = MmaCfg<64, 128, 32, 2, 2, 4>;
using MmaLarge = MmaCfg<128, 256, 32, 2, 4, 4>;
using SimtSmall = SimtCfg<64, 64, 16, 4, 4>;
using SimtLarge = SimtCfg<128, 128, 8, 8, 8>;

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

int linear_bf16(const bf16* x, const bf16* w, const float* bias, void* y, int ydt, int64_t m, int64_t n, int64_t k,
                int act, cudaStream_t s) {
  const bool vec = k % 8 == 0 && aligned16(x) && aligned16(w);
  if (!vec) return launch_mma<MmaMedium, false>(x, w, bias, y, ydt, m, n, k, act, s);
  if (use_wgmma() && wgmma_linear_supported(m, n, k)) return wgmma_linear(x, w, bias, y, ydt, m, n, k, act, s);
  if (m <= 16) return launch_mma<MmaSmall, true>(x, w, bias, y, ydt, m, n, k, act, s);
  if (m <= 64 || n < 256) return launch_mma<MmaMedium, true>(x, w, bias, y, ydt, m, n, k, act, s);
  return launch_mma<MmaLarge, true>(x, w, bias, y, ydt, m, n, k, act, s);
}

int linear_f32(const float* x, const float* w, const float* bias, void* y, int ydt, int64_t m, int64_t n, int64_t k,
               int act, cudaStream_t s) {
  if (m >= 128 && n >= 128) return launch_simt<SimtLarge>(x, w, bias, y, ydt, m, n, k, act, s);
  return launch_simt<SimtSmall>(x, w, bias, y, ydt, m, n, k, act, s);
}

}  // namespace

const char* dense_kernel_names() {
  return "f32 linear: FFMA 128x128x8 (8x8 per thread) / 64x64x16, 2-stage cp.async; "
         "bf16 linear: mma.sync m16n8k16 128x256x32 / 64x128x32 / 16x64x64, 4-stage cp.async, ldmatrix";
}

}  // namespace skc

using namespace skc;

extern "C" SK_CUDA_API int sk_cuda_linear(sk_dtype dt, const void* x, const void* w, const float* bias, void* y,
                                          sk_dtype ydt, int64_t m, int64_t n, int64_t k, int act, sk_cuda_stream s) {
  if (m <= 0 || n <= 0 || k <= 0) return fail(SK_CUDA_EINVAL, "sk_cuda_linear: dimensions must be positive");
  if (!x || !w || !y) return fail(SK_CUDA_EINVAL, "sk_cuda_linear: null pointer");
  if ((ydt != SK_F32 && ydt != SK_BF16)) return fail(SK_CUDA_EINVAL, "sk_cuda_linear: y dtype must be f32 or bf16");
  if (n > 65535LL * 64) return fail(SK_CUDA_EINVAL, "sk_cuda_linear: out features too large for the grid");
  cudaStream_t st = stream_of(s);
  if (dt == SK_BF16)
    return linear_bf16(static_cast<const bf16*>(x), static_cast<const bf16*>(w), bias, y, ydt, m, n, k, act, st);
  if (dt == SK_F32)
    return linear_f32(static_cast<const float*>(x), static_cast<const float*>(w), bias, y, ydt, m, n, k, act, st);
  return fail(SK_CUDA_EINVAL, "sk_cuda_linear: dtype must be f32 or bf16");
}
