// N:M structured sparsity on the GPU.
//
// 2:4 bf16 runs on the sparse tensor cores: mma.sp (::ordered_metadata)
// m16n8k32 multiplies a 16×32 slice of W stored as its 16×16 kept values plus
// 2-bit indices by a dense 32×8 slice of xᵀ, so each instruction does the work
// of two dense m16n8k16 ones. The kernel computes yᵀ = W·xᵀ (W is the sparse
// operand A, rows = output features; tokens are the N dimension).
//
// The metadata comes in the layout PyTorch's semi-structured tensors and
// CUTLASS use (torch.sparse _sparse_semi_structured_from_dense_cutlass): int16
// elements, one per 16 columns of a row (four 4-bit groups: lower 2 bits the
// index of the first kept value, upper 2 bits the second), reordered so that
// for rows [32R, 32R+32) and columns [32j, 32j+32) the 32 32-bit words at
// word offset j·n + 32R are, for lane l = 4g + q:
//   q = 0: rows 32R+g, 32R+g+8   (low, high half), columns 0–15 of the slice
//   q = 1: the same rows, columns 16–31
//   q = 2: rows 32R+16+g, 32R+24+g, columns 0–15
//   q = 3: the same rows, columns 16–31
// which is exactly the register mma.sp.m16n8k32 wants from lane l: with
// sparsity selector 0 (lanes 4g, 4g+1) for the m16 tile at rows 32R…32R+15 and
// selector 1 (lanes 4g+2, 4g+3) for the tile at 32R+16…32R+31. A warp loads its
// metadata with one coalesced 128-byte read per 32 rows × 32 columns.
//
// Other N:M patterns (and f32) run a CUDA-core kernel that expands each W tile
// into shared memory from its kept values and in-group indices.
#include "gemm.cuh"
#include "ops.h"

namespace skc {
namespace {

template <int BW_, int BX_, int WARPS_W_, int WARPS_X_, int STAGES_>
struct SpCfg {
  static constexpr int BW = BW_, BX = BX_, WARPS_W = WARPS_W_, WARPS_X = WARPS_X_, STAGES = STAGES_;
  static constexpr int BK = 64;  // dense columns per stage
  static constexpr int THREADS = WARPS_W * WARPS_X * 32;
  static constexpr int WM = BW / WARPS_W, WN = BX / WARPS_X;
  static constexpr int MI = WM / 16, NI = WN / 8;
  static constexpr int RB = BW / 32;                 // 32-row metadata blocks per tile
  static constexpr int A_STAGE = BW * (BK / 2);      // kept values (bf16): 64-byte rows, 4 chunks
  static constexpr int B_STAGE = BX * BK;            // x (bf16): 128-byte rows, 8 chunks
  static constexpr int M_STAGE = 2 * RB * 32;        // metadata words
  static constexpr size_t SMEM = size_t(STAGES) * (A_STAGE * 2 + B_STAGE * 2 + M_STAGE * 4);
  static_assert(BW % 32 == 0 && WM % 16 == 0 && WN % 8 == 0, "tile shape");
};

template <int SEL>
__device__ __forceinline__ void mma_sp(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t e) {
  mma_sp_bf16_16832<SEL>(d, a, b, e);
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS)
    nm24_kernel(const bf16* __restrict__ x, const bf16* __restrict__ values, const uint32_t* __restrict__ meta,
                const float* __restrict__ bias, void* __restrict__ y, int ydt, int64_t m, int64_t n, int64_t k,
                int act) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  constexpr int BK = Cfg::BK, STAGES = Cfg::STAGES;
  bf16* sa = reinterpret_cast<bf16*>(smem_raw);
  bf16* sb = sa + STAGES * Cfg::A_STAGE;
  uint32_t* sm = reinterpret_cast<uint32_t*>(sb + STAGES * Cfg::B_STAGE);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / Cfg::WARPS_X, wn = warp % Cfg::WARPS_X;
  const int64_t w0 = static_cast<int64_t>(blockIdx.x) * Cfg::BW;  // output features
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * Cfg::BX;  // tokens
  const int w_rows = static_cast<int>(min64(Cfg::BW, n - w0));
  const int x_rows = static_cast<int>(min64(Cfg::BX, m - t0));
  const int64_t kc = k / 2;  // kept values per row
  const int iters = static_cast<int>(k / BK);

  auto load_stage = [&](int stage, int it) {
    const int64_t k0 = static_cast<int64_t>(it) * BK;
    bf16* da = sa + stage * Cfg::A_STAGE;
    constexpr int NA = Cfg::BW * 4;  // 16-byte chunks of kept values
#pragma unroll
    for (int i = 0; i < (NA + Cfg::THREADS - 1) / Cfg::THREADS; ++i) {
      const int c = tid + i * Cfg::THREADS;
      if (NA % Cfg::THREADS != 0 && c >= NA) break;
      const int r = c >> 2, ch = c & 3;
      const bool ok = r < w_rows;
      cp_async_16(da + r * 32 + swizzle<4>(r, ch) * 8, ok ? values + (w0 + r) * kc + k0 / 2 + ch * 8 : values,
                  ok ? 16 : 0);
    }
    bf16* db = sb + stage * Cfg::B_STAGE;
    constexpr int NB = Cfg::BX * 8;
#pragma unroll
    for (int i = 0; i < (NB + Cfg::THREADS - 1) / Cfg::THREADS; ++i) {
      const int c = tid + i * Cfg::THREADS;
      if (NB % Cfg::THREADS != 0 && c >= NB) break;
      const int r = c >> 3, ch = c & 7;
      const bool ok = r < x_rows;
      cp_async_16(db + r * 64 + swizzle<8>(r, ch) * 8, ok ? x + (t0 + r) * k + k0 + ch * 8 : x, ok ? 16 : 0);
    }
    uint32_t* dm = sm + stage * Cfg::M_STAGE;
    constexpr int NM = Cfg::M_STAGE / 4;  // 16-byte chunks: [2 column slices][RB row blocks][8]
#pragma unroll
    for (int i = 0; i < (NM + Cfg::THREADS - 1) / Cfg::THREADS; ++i) {
      const int c = tid + i * Cfg::THREADS;
      if (NM % Cfg::THREADS != 0 && c >= NM) break;
      const int slice = c / (Cfg::RB * 8), rb = (c / 8) % Cfg::RB, part = c & 7;
      const int64_t row = w0 + 32 * rb;
      const bool ok = row < n;
      const uint32_t* src = meta + (k0 / 32 + slice) * n + row + part * 4;
      cp_async_16(dm + (slice * Cfg::RB + rb) * 32 + part * 4, ok ? src : meta, ok ? 16 : 0);
    }
  };

  float acc[Cfg::MI][Cfg::NI][4];
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < iters) load_stage(s, s);
    cp_async_commit();
  }
  for (int it = 0; it < iters; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    {
      const int nxt = it + STAGES - 1;
      if (nxt < iters) load_stage(nxt % STAGES, nxt);
      cp_async_commit();
    }
    const bf16* a_s = sa + (it % STAGES) * Cfg::A_STAGE;
    const bf16* b_s = sb + (it % STAGES) * Cfg::B_STAGE;
    const uint32_t* m_s = sm + (it % STAGES) * Cfg::M_STAGE;
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {  // two k32 slices per stage
      uint32_t af[Cfg::MI][4];
#pragma unroll
      for (int mi = 0; mi < Cfg::MI; ++mi) {
        const int r = wm * Cfg::WM + mi * 16 + (lane & 15);
        const int ch = kk * 2 + (lane >> 4);
        ldmatrix_x4(af[mi], smem_addr(a_s + r * 32 + swizzle<4>(r, ch) * 8));
      }
      uint32_t bfr[Cfg::NI][4];
#pragma unroll
      for (int ni = 0; ni < Cfg::NI; ++ni) {
        const int r = wn * Cfg::WN + ni * 8 + (lane & 7);
        const int ch = kk * 4 + (lane >> 3);
        ldmatrix_x4(bfr[ni], smem_addr(b_s + r * 64 + swizzle<8>(r, ch) * 8));
      }
#pragma unroll
      for (int mi = 0; mi < Cfg::MI; ++mi) {
        const int row = wm * Cfg::WM + mi * 16;  // multiple of 16 inside the tile
        const uint32_t e = m_s[(kk * Cfg::RB + row / 32) * 32 + lane];
        const bool upper = (row / 16) & 1;  // warp-uniform
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ++ni) {
          if (upper)
            mma_sp<1>(acc[mi][ni], af[mi], bfr[ni], e);
          else
            mma_sp<0>(acc[mi][ni], af[mi], bfr[ni], e);
        }
      }
    }
  }
  cp_async_wait<0>();

  // acc[mi][ni]: rows (features) g, g+8; columns (tokens) 2q, 2q+1.
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int o = wm * Cfg::WM + mi * 16 + (lane >> 2) + (q >> 1) * 8;
        const int t = wn * Cfg::WN + ni * 8 + (lane & 3) * 2 + (q & 1);
        if (o < w_rows && t < x_rows)
          store_one(y, ydt, (t0 + t) * n + w0 + o, finish<false>(acc[mi][ni][q], 0.f, bias, w0 + o, act));
      }
}

// ---- general N:M on CUDA cores ----------------------------------------------------------

// Tile: 64 tokens × 64 features, K in chunks of KC dense columns (a multiple of
// M). W's chunk is expanded into shared memory (zeros where nothing is kept),
// then a 4×4-per-thread FFMA tile runs over it.
constexpr int kNmBM = 64, kNmBN = 64, kNmKC = 64;

template <class T>
__global__ void __launch_bounds__(256)
    nm_general_kernel(const T* __restrict__ x, const T* __restrict__ values, const uint8_t* __restrict__ idx,
                      const float* __restrict__ bias, void* __restrict__ y, int ydt, int64_t m, int64_t n, int64_t k,
                      int nn, int mm, int act) {
  __shared__ float sx[kNmKC][kNmBM + 4];
  __shared__ float sw[kNmKC][kNmBN + 4];
  const int tid = threadIdx.x;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kNmBM;
  const int64_t o0 = static_cast<int64_t>(blockIdx.y) * kNmBN;
  const int kc_dense = (kNmKC / mm) * mm;  // dense columns per chunk
  const int kc_kept = kc_dense / mm * nn;  // kept values per row per chunk
  const int64_t kept_row = k / mm * nn;
  const int tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kc_dense) {
    const int kd = static_cast<int>(min64(kc_dense, k - k0));
    const int kk_kept = kd / mm * nn;
    for (int e = tid; e < kNmBM * kNmKC; e += 256) {
      const int r = e / kNmKC, c = e % kNmKC;
      float v = 0.f;
      if (c < kd && t0 + r < m) v = to_float(x[(t0 + r) * k + k0 + c]);
      sx[c][r] = v;
    }
    for (int e = tid; e < kNmBN * kNmKC; e += 256) sw[e % kNmKC][e / kNmKC] = 0.f;
    __syncthreads();
    for (int e = tid; e < kNmBN * kc_kept; e += 256) {
      const int r = e / kc_kept, q = e % kc_kept;
      if (q >= kk_kept || o0 + r >= n) continue;
      const int64_t at = (o0 + r) * kept_row + k0 / mm * nn + q;
      const int pos = idx[at];
      if (pos >= mm) continue;  // validated by the caller; never write outside the chunk
      sw[(q / nn) * mm + pos][r] = to_float(values[at]);
    }
    __syncthreads();
    for (int c = 0; c < kd; ++c) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = sx[c][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = sw[c][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t t = t0 + ty * 4 + i, o = o0 + tx * 4 + j;
      if (t < m && o < n) store_one(y, ydt, t * n + o, finish<false>(acc[i][j], 0.f, bias, o, act));
    }
}



template <class Cfg>
int launch_nm24(const bf16* x, const bf16* values, const uint32_t* meta, const float* bias, void* y, int ydt, int64_t m,
                int64_t n, int64_t k, int act, cudaStream_t s) {
  auto kern = nm24_kernel<Cfg>;
  SKC_TRY(prepare(kern, Cfg::SMEM));
  dim3 grid(static_cast<unsigned>(ceil_div(n, Cfg::BW)), static_cast<unsigned>(ceil_div(m, Cfg::BX)));
  kern<<<grid, Cfg::THREADS, Cfg::SMEM, s>>>(x, values, meta, bias, y, ydt, m, n, k, act);
  return check_launch("nm24_kernel");
}

// Decode batches: 32 features × 16 tokens per CTA of two warps (many CTAs
// streaming W, 6 stages in flight); larger ones 128 × 128 with 64 × 64 warp tiles.
using Sp24Small = SpCfg<32, 16, 2, 1, 6>;
using Sp24Large = SpCfg<128, 128, 2, 2, 4>;
// GPUs whose blocks may opt in to less shared memory than Sp24Large's 100 KB
// (sm_86, sm_89, sm_120: 99 KB) run the same tile 3 stages deep.
using Sp24Large3 = SpCfg<128, 128, 2, 2, 3>;

}  // namespace

const char* nm_kernel_names() {
  return "2:4 bf16: mma.sp::ordered_metadata m16n8k32 (sparse tensor cores), CUTLASS metadata, 128x128x64 / 32x16x64, "
         "4-stage cp.async; general N:M and f32: FFMA 64x64 tiles expanded from kept values in shared memory";
}

}  // namespace skc

using namespace skc;

extern "C" {

SK_CUDA_API int sk_cuda_nm24_linear(const void* x, const void* values, const uint16_t* meta, const float* bias, void* y,
                                    sk_dtype ydt, int64_t m, int64_t n, int64_t k, int act, sk_cuda_stream s) {
  if (!x || !values || !meta || !y) return fail(SK_CUDA_EINVAL, "sk_cuda_nm24_linear: null pointer");
  if (m <= 0 || n <= 0 || k <= 0 || n % 32 != 0 || k % 64 != 0)
    return fail(SK_CUDA_EINVAL, "sk_cuda_nm24_linear: needs out % 32 == 0 and in % 64 == 0");
  if (ydt != SK_F32 && ydt != SK_BF16) return fail(SK_CUDA_EINVAL, "sk_cuda_nm24_linear: y dtype must be f32 or bf16");
  if ((reinterpret_cast<uintptr_t>(x) & 15) || (reinterpret_cast<uintptr_t>(values) & 15) ||
      (reinterpret_cast<uintptr_t>(meta) & 15))
    return fail(SK_CUDA_EINVAL, "sk_cuda_nm24_linear: buffers must be 16-byte aligned");
  if (ceil_div(m, 16) > 65535) return fail(SK_CUDA_EINVAL, "sk_cuda_nm24_linear: too many tokens for one call");
  cudaStream_t st = stream_of(s);
  auto xb = static_cast<const bf16*>(x);
  auto vb = static_cast<const bf16*>(values);
  auto mw = reinterpret_cast<const uint32_t*>(meta);
  if (m <= 64) return launch_nm24<Sp24Small>(xb, vb, mw, bias, y, ydt, m, n, k, act, st);
  if (device_props().smem_optin < Sp24Large::SMEM) return launch_nm24<Sp24Large3>(xb, vb, mw, bias, y, ydt, m, n, k, act, st);
  return launch_nm24<Sp24Large>(xb, vb, mw, bias, y, ydt, m, n, k, act, st);
}

SK_CUDA_API int sk_cuda_nm_linear(sk_dtype dt, const void* x, const void* values, const uint8_t* idx, const float* bias,
                                  void* y, sk_dtype ydt, int64_t m, int64_t n, int64_t k, int nn, int mm, int act,
                                  sk_cuda_stream s) {
  if (!x || !values || !idx || !y) return fail(SK_CUDA_EINVAL, "sk_cuda_nm_linear: null pointer");
  if (m <= 0 || n <= 0 || k <= 0 || mm < 2 || mm > 16 || nn < 1 || nn >= mm || k % mm != 0)
    return fail(SK_CUDA_EINVAL, "sk_cuda_nm_linear: bad shape or pattern (1 <= N < M <= 16, in % M == 0)");
  if (ydt != SK_F32 && ydt != SK_BF16) return fail(SK_CUDA_EINVAL, "sk_cuda_nm_linear: y dtype must be f32 or bf16");
  if (ceil_div(n, kNmBN) > 65535) return fail(SK_CUDA_EINVAL, "sk_cuda_nm_linear: out features too large for the grid");
  cudaStream_t st = stream_of(s);
  dim3 grid(static_cast<unsigned>(ceil_div(m, kNmBM)), static_cast<unsigned>(ceil_div(n, kNmBN)));
  if (dt == SK_F32)
    nm_general_kernel<float><<<grid, 256, 0, st>>>(static_cast<const float*>(x), static_cast<const float*>(values), idx,
                                                   bias, y, ydt, m, n, k, nn, mm, act);
  else if (dt == SK_BF16)
    nm_general_kernel<bf16><<<grid, 256, 0, st>>>(static_cast<const bf16*>(x), static_cast<const bf16*>(values), idx,
                                                  bias, y, ydt, m, n, k, nn, mm, act);
  else
    return fail(SK_CUDA_EINVAL, "sk_cuda_nm_linear: dtype must be f32 or bf16");
  return check_launch("nm_general_kernel");
}

}  // extern "C"
