// Mixture-of-Experts building blocks on the GPU: permute rows into expert
// order, grouped (plain and gated) GEMMs over the experts' row ranges, and the
// weighted combine back.
//
// Grouped GEMM scheduling: the row ranges live on the device, so the host
// cannot count tiles without a synchronisation. The grid is launched for the
// most tiles any batch of `rows` rows can need (ceil(rows/BM) + E: each
// expert adds at most one partial tile), a small kernel writes where each
// expert's tiles start, and CTAs past the last tile exit at once. Every tile
// belongs to one expert, so an expert with no rows costs nothing.
#include "gemm.cuh"
#include "ops.h"

namespace skc {
namespace {

// tile_start[e] = Σ_{e' < e} ceil(rows_e' / bm), with the offsets clamped to a
// non-decreasing sequence in [0, rows] (the binding validated them; clamping
// keeps a bad array from sending a CTA outside xs). clamped[E + 1] receives the
// clamped offsets.
__global__ void tile_schedule_kernel(const int32_t* __restrict__ offsets, int64_t experts, int64_t rows, int bm,
                                     int32_t* __restrict__ clamped, int32_t* __restrict__ tile_start) {
  extern __shared__ int32_t s_off[];
  for (int64_t e = threadIdx.x; e <= experts; e += blockDim.x) s_off[e] = offsets[e];
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t prev = 0, tiles = 0;
    clamped[0] = 0;
    tile_start[0] = 0;
    for (int64_t e = 1; e <= experts; ++e) {
      int32_t o = s_off[e];
      o = o < prev ? prev : (o > rows ? static_cast<int32_t>(rows) : o);
      tiles += (o - prev + bm - 1) / bm;
      clamped[e] = o;
      tile_start[e] = tiles;
      prev = o;
    }
  }
}

// The expert owning m-tile `tile`: the number of experts whose tiles end at or
// before it, counted by the whole CTA in one pass over tile_start.
__device__ __forceinline__ int expert_of_tile(const int32_t* __restrict__ tile_start, int64_t experts, int tile) {
  int count = 0;
  for (int64_t base = 0; base < experts; base += blockDim.x) {
    const int64_t e = base + threadIdx.x;
    const bool before = e < experts && tile_start[e + 1] <= tile;
    count += __syncthreads_count(before);
  }
  return count;
}

struct GroupedArgs {
  const int32_t* offsets;     // clamped [E + 1]
  const int32_t* tile_start;  // [E + 1]
  int64_t experts, rows, n, k;
  const float* bias;  // [E, n] or null
  int act;
  int ydt;
};

template <class Cfg, bool VEC>
__global__ void __launch_bounds__(Cfg::THREADS)
    grouped_mma_kernel(const bf16* __restrict__ xs, const bf16* __restrict__ w, const bf16* __restrict__ w3,
                       void* __restrict__ y, GroupedArgs g) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int tile = blockIdx.x;
  if (tile >= g.tile_start[g.experts]) return;  // uniform across the CTA
  const int e = expert_of_tile(g.tile_start, g.experts, tile);
  const int64_t row0 = g.offsets[e] + static_cast<int64_t>(tile - g.tile_start[e]) * Cfg::BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * Cfg::BN;
  ContiguousSource<bf16> src;
  src.a = xs + row0 * g.k;
  src.b = w + (e * g.n + n0) * g.k;
  src.b3 = Cfg::GATED ? w3 + (e * g.n + n0) * g.k : nullptr;
  src.lda = src.ldb = g.k;
  src.a_rows = static_cast<int>(min64(Cfg::BM, g.offsets[e + 1] - row0));
  src.b_rows = static_cast<int>(min64(Cfg::BN, g.n - n0));
  src.k = g.k;
  src.iters = static_cast<int>((g.k + Cfg::BK - 1) / Cfg::BK);
  src.safe = xs;
  MmaAcc<Cfg> acc;
  mma_mainloop<Cfg, VEC>(src, reinterpret_cast<bf16*>(smem_raw), acc);
  const int rows = src.a_rows;
  const float* bias = g.bias ? g.bias + e * g.n : nullptr;
  mma_epilogue<Cfg>(acc, [&](int r, int c, float v0, float v1, float u0, float u1) {
    if (r < rows) store_pair<Cfg::GATED>(y, g.ydt, g.n, row0 + r, n0 + c, g.n, v0, v1, u0, u1, bias, g.act);
  });
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS)
    grouped_simt_kernel(const float* __restrict__ xs, const float* __restrict__ w, const float* __restrict__ w3,
                        void* __restrict__ y, GroupedArgs g) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int tile = blockIdx.x;
  if (tile >= g.tile_start[g.experts]) return;
  const int e = expert_of_tile(g.tile_start, g.experts, tile);
  const int64_t row0 = g.offsets[e] + static_cast<int64_t>(tile - g.tile_start[e]) * Cfg::BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * Cfg::BN;
  ContiguousSource<float> src;
  src.a = xs + row0 * g.k;
  src.b = w + (e * g.n + n0) * g.k;
  src.b3 = Cfg::GATED ? w3 + (e * g.n + n0) * g.k : nullptr;
  src.lda = src.ldb = g.k;
  src.a_rows = static_cast<int>(min64(Cfg::BM, g.offsets[e + 1] - row0));
  src.b_rows = static_cast<int>(min64(Cfg::BN, g.n - n0));
  src.k = g.k;
  src.iters = static_cast<int>((g.k + Cfg::BK - 1) / Cfg::BK);
  src.safe = xs;
  SimtAcc<Cfg> acc;
  simt_mainloop<Cfg>(src, reinterpret_cast<float*>(smem_raw), acc);
  const int rows = src.a_rows, cols = src.b_rows;
  const float* bias = g.bias ? g.bias + e * g.n : nullptr;
  simt_epilogue<Cfg>(acc, [&](int r, int c, float v, float u) {
    if (r < rows && c < cols)
      store_one(y, g.ydt, (row0 + r) * g.n + n0 + c, finish<Cfg::GATED>(v, u, bias, n0 + c, g.act));
  });
}



int schedule(const int32_t* offsets, int64_t experts, int64_t rows, int bm, int32_t* clamped, int32_t* tile_start,
             cudaStream_t s) {
  size_t smem = static_cast<size_t>(experts + 1) * sizeof(int32_t);
  if (smem > 48 * 1024) return fail(SK_CUDA_EINVAL, "grouped GEMM: at most 12287 experts");
  tile_schedule_kernel<<<1, 256, smem, s>>>(offsets, experts, rows, bm, clamped, tile_start);
  return check_launch("tile_schedule_kernel");
}

// Plain stacks: the linear kernel's 64×64 warp tiles. Gated ones carry two
// accumulator sets, so 8 warps share a 128×64 tile (32×32 each).
using GroupedMma = MmaCfg<128, 128, 32, 2, 2, 4>;
using GroupedMmaSmallK = MmaCfg<64, 64, 32, 2, 2, 3>;
using GatedMma = MmaCfg<128, 64, 32, 4, 2, 4, true>;
using GatedMmaSmallK = MmaCfg<64, 64, 32, 2, 2, 3, true>;
using GroupedSimt = SimtCfg<64, 64, 16, 4, 4>;
using GatedSimt = SimtCfg<64, 64, 16, 4, 4, true>;

template <class Cfg, bool VEC>
int run_grouped_mma(const bf16* xs, const int32_t* offsets, const bf16* w, const bf16* w3, void* y, GroupedArgs g,
                    cudaStream_t s) {
  StreamBuffer ws;
  SKC_TRY(ws.alloc(2 * static_cast<size_t>(g.experts + 1) * sizeof(int32_t), s));
  int32_t* clamped = ws.as<int32_t>();
  int32_t* tile_start = clamped + g.experts + 1;
  SKC_TRY(schedule(offsets, g.experts, g.rows, Cfg::BM, clamped, tile_start, s));
  g.offsets = clamped;
  g.tile_start = tile_start;
  auto kern = grouped_mma_kernel<Cfg, VEC>;
  SKC_TRY(prepare(kern, Cfg::SMEM));
  const int64_t max_tiles = ceil_div(g.rows, Cfg::BM) + g.experts;
  dim3 grid(static_cast<unsigned>(max_tiles), static_cast<unsigned>(ceil_div(g.n, Cfg::BN)));
  kern<<<grid, Cfg::THREADS, Cfg::SMEM, s>>>(xs, w, w3, y, g);
  return check_launch("grouped_mma_kernel");
}

template <class Cfg>
int run_grouped_simt(const float* xs, const int32_t* offsets, const float* w, const float* w3, void* y, GroupedArgs g,
                     cudaStream_t s) {
  StreamBuffer ws;
  SKC_TRY(ws.alloc(2 * static_cast<size_t>(g.experts + 1) * sizeof(int32_t), s));
  int32_t* clamped = ws.as<int32_t>();
  int32_t* tile_start = clamped + g.experts + 1;
  SKC_TRY(schedule(offsets, g.experts, g.rows, Cfg::BM, clamped, tile_start, s));
  g.offsets = clamped;
  g.tile_start = tile_start;
  auto kern = grouped_simt_kernel<Cfg>;
  SKC_TRY(prepare(kern, Cfg::SMEM));
  const int64_t max_tiles = ceil_div(g.rows, Cfg::BM) + g.experts;
  dim3 grid(static_cast<unsigned>(max_tiles), static_cast<unsigned>(ceil_div(g.n, Cfg::BN)));
  kern<<<grid, Cfg::THREADS, Cfg::SMEM, s>>>(xs, w, w3, y, g);
  return check_launch("grouped_simt_kernel");
}

int run_grouped_wgmma_bf16(const bf16* xs, const int32_t* offsets, const bf16* w, const bf16* w3, void* y,
                           GroupedArgs g, cudaStream_t s) {
  StreamBuffer ws;
  SKC_TRY(ws.alloc(2 * static_cast<size_t>(g.experts + 1) * sizeof(int32_t), s));
  int32_t* clamped = ws.as<int32_t>();
  int32_t* tile_start = clamped + g.experts + 1;
  SKC_TRY(schedule(offsets, g.experts, g.rows, kWgmmaGroupedBM, clamped, tile_start, s));
  const int64_t max_tiles = ceil_div(g.rows, kWgmmaGroupedBM) + g.experts;
  return wgmma_grouped(xs, clamped, tile_start, g.experts, max_tiles, w, w3, g.bias, y, g.ydt, g.rows, g.n, g.k,
                       g.act, s);
}

int grouped_bf16(const bf16* xs, const int32_t* offsets, const bf16* w, const bf16* w3, void* y, GroupedArgs g,
                 cudaStream_t s) {
  const bool vec = g.k % 8 == 0 && (reinterpret_cast<uintptr_t>(xs) & 15) == 0 &&
                   (reinterpret_cast<uintptr_t>(w) & 15) == 0 && (!w3 || (reinterpret_cast<uintptr_t>(w3) & 15) == 0);
  const bool small = g.k < 256 || g.n < 128;
  if (w3) {
    if (!vec) return run_grouped_mma<GatedMmaSmallK, false>(xs, offsets, w, w3, y, g, s);
    if (small) return run_grouped_mma<GatedMmaSmallK, true>(xs, offsets, w, w3, y, g, s);
    return run_grouped_mma<GatedMma, true>(xs, offsets, w, w3, y, g, s);
  }
  if (!vec) return run_grouped_mma<GroupedMmaSmallK, false>(xs, offsets, w, w3, y, g, s);
  if (small) return run_grouped_mma<GroupedMmaSmallK, true>(xs, offsets, w, w3, y, g, s);
  return run_grouped_mma<GroupedMma, true>(xs, offsets, w, w3, y, g, s);
}

// ---- permute / combine --------------------------------------------------------------

// One CTA per output row; 16-byte copies when rows are 16-byte multiples.
template <class V>
__global__ void permute_kernel(const V* __restrict__ x, int64_t tokens, int64_t row_vecs,
                               const int32_t* __restrict__ slots, int64_t k, V* __restrict__ xs) {
  const int64_t i = blockIdx.x;
  const int32_t slot = slots[i];
  V* dst = xs + i * row_vecs;
  if (slot < 0 || slot >= tokens * k) {
    // Only reachable with an unvalidated plan: write zeros rather than read outside x.
    for (int64_t c = threadIdx.x; c < row_vecs; c += blockDim.x) dst[c] = V{};
    return;
  }
  const V* src = x + (slot / k) * row_vecs;
  for (int64_t c = threadIdx.x; c < row_vecs; c += blockDim.x) dst[c] = src[c];
}

__global__ void invert_slots_kernel(const int32_t* __restrict__ slots, int64_t rows, int32_t* __restrict__ row_of_slot,
                                    int64_t n_slots) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows) return;
  const int32_t s = slots[i];
  if (s >= 0 && s < n_slots) row_of_slot[s] = static_cast<int32_t>(i);
}

// One CTA per token: y[t] = Σ_j w[t,j] · ys[row(t,j)], j in order (deterministic).
template <class InT, class OutT>
__global__ void combine_kernel(const InT* __restrict__ ys, int64_t rows, int64_t d, const int32_t* __restrict__ row_of_slot,
                               const float* __restrict__ weights, int64_t k, OutT* __restrict__ y) {
  const int64_t t = blockIdx.x;
  const int32_t* rs = row_of_slot + t * k;
  const float* ws = weights + t * k;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    float acc = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = rs[j];
      if (r < 0 || r >= rows) continue;
      acc = fmaf(ws[j], to_float(ys[r * d + c]), acc);
    }
    y[t * d + c] = from_float<OutT>(acc);
  }
}

template <class InT>
int combine_launch(const void* ys, int64_t rows, int64_t d, const int32_t* row_of_slot, const float* weights,
                   int64_t tokens, int64_t k, void* y, sk_dtype ydt, cudaStream_t s) {
  const int threads = d >= 256 ? 256 : (d >= 128 ? 128 : 64);
  auto in = static_cast<const InT*>(ys);
  if (ydt == SK_F32)
    combine_kernel<InT, float><<<static_cast<unsigned>(tokens), threads, 0, s>>>(in, rows, d, row_of_slot, weights, k,
                                                                                static_cast<float*>(y));
  else
    combine_kernel<InT, bf16><<<static_cast<unsigned>(tokens), threads, 0, s>>>(in, rows, d, row_of_slot, weights, k,
                                                                               static_cast<bf16*>(y));
  return check_launch("combine_kernel");
}

template <class T>
__global__ void add_rows_kernel(T* __restrict__ y, const T* __restrict__ s, const float* __restrict__ gate, int64_t d) {
  const int64_t t = blockIdx.x;
  const float g = gate ? 1.0f / (1.0f + expf(-gate[t])) : 1.0f;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x)
    y[t * d + c] = from_float<T>(fmaf(g, to_float(s[t * d + c]), to_float(y[t * d + c])));
}

}  // namespace

const char* experts_kernel_names() {
  return "bf16 grouped: mma.sync m16n8k16 128x128x32 (gated 128x64x32, two accumulators), device-side tile "
         "schedule; f32 grouped: FFMA 64x64x16; permute/combine: one CTA per row, 16-byte copies";
}

}  // namespace skc

using namespace skc;

extern "C" {

SK_CUDA_API int sk_cuda_grouped_linear(sk_dtype dt, const void* xs, const int32_t* offsets, int64_t experts,
                                       const void* w, const void* w3, const float* bias, void* y, sk_dtype ydt,
                                       int64_t rows, int64_t n, int64_t k, int act, sk_cuda_stream s) {
  if (experts <= 0 || n <= 0 || k <= 0 || rows < 0) return fail(SK_CUDA_EINVAL, "sk_cuda_grouped_linear: bad dimensions");
  if (!offsets || !w || (rows > 0 && (!xs || !y))) return fail(SK_CUDA_EINVAL, "sk_cuda_grouped_linear: null pointer");
  if (w3 && bias) return fail(SK_CUDA_EINVAL, "sk_cuda_grouped_linear: gated experts take no bias");
  if (ydt != SK_F32 && ydt != SK_BF16) return fail(SK_CUDA_EINVAL, "sk_cuda_grouped_linear: y dtype must be f32 or bf16");
  if (rows == 0) return SK_CUDA_OK;
  if (ceil_div(n, 64) > 65535) return fail(SK_CUDA_EINVAL, "sk_cuda_grouped_linear: out features too large for the grid");
  cudaStream_t st = stream_of(s);
  GroupedArgs g{nullptr, nullptr, experts, rows, n, k, bias, act, ydt};
  if (dt == SK_BF16) {
    auto x = static_cast<const bf16*>(xs);
    auto wb = static_cast<const bf16*>(w);
    auto w3b = static_cast<const bf16*>(w3);
    // The sm_90a kernels read x and both weight stacks 16 bytes at a time.
    const bool aligned = ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(wb) |
                           reinterpret_cast<uintptr_t>(w3b)) & 15) == 0;
    if (use_wgmma() && wgmma_grouped_supported(n, k) && aligned)
      return run_grouped_wgmma_bf16(x, offsets, wb, w3b, y, g, st);
    return grouped_bf16(x, offsets, wb, w3b, y, g, st);
  }
  if (dt == SK_F32) {
    auto x = static_cast<const float*>(xs);
    auto wf = static_cast<const float*>(w);
    auto w3f = static_cast<const float*>(w3);
    if (w3) return run_grouped_simt<GatedSimt>(x, offsets, wf, w3f, y, g, st);
    return run_grouped_simt<GroupedSimt>(x, offsets, wf, w3f, y, g, st);
  }
  return fail(SK_CUDA_EINVAL, "sk_cuda_grouped_linear: dtype must be f32 or bf16");
}

SK_CUDA_API int sk_cuda_permute(sk_dtype dt, const void* x, int64_t tokens, int64_t d, const int32_t* slots,
                                int64_t rows, int64_t k, void* xs, sk_cuda_stream s) {
  if (tokens <= 0 || d <= 0 || k <= 0 || rows < 0) return fail(SK_CUDA_EINVAL, "sk_cuda_permute: bad dimensions");
  if (rows == 0) return SK_CUDA_OK;
  if (rows > 0x7fffffff) return fail(SK_CUDA_EINVAL, "sk_cuda_permute: too many rows");
  if (dt != SK_F32 && dt != SK_BF16) return fail(SK_CUDA_EINVAL, "sk_cuda_permute: dtype must be f32 or bf16");
  const int64_t bytes = d * (dt == SK_BF16 ? 2 : 4);
  cudaStream_t st = stream_of(s);
  const bool vec16 = bytes % 16 == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0 &&
                     (reinterpret_cast<uintptr_t>(xs) & 15) == 0;
  if (vec16) {
    const int64_t vecs = bytes / 16;
    const int threads = vecs >= 256 ? 256 : (vecs >= 64 ? 64 : 32);
    permute_kernel<int4><<<static_cast<unsigned>(rows), threads, 0, st>>>(static_cast<const int4*>(x), tokens, vecs,
                                                                          slots, k, static_cast<int4*>(xs));
  } else if (dt == SK_F32) {
    permute_kernel<float><<<static_cast<unsigned>(rows), 128, 0, st>>>(static_cast<const float*>(x), tokens, d, slots,
                                                                       k, static_cast<float*>(xs));
  } else {
    permute_kernel<unsigned short><<<static_cast<unsigned>(rows), 128, 0, st>>>(
        static_cast<const unsigned short*>(x), tokens, d, slots, k, static_cast<unsigned short*>(xs));
  }
  return check_launch("permute_kernel");
}

SK_CUDA_API int sk_cuda_invert_slots(const int32_t* slots, int64_t rows, int32_t* row_of_slot, int64_t n_slots,
                                     sk_cuda_stream s) {
  if (rows < 0 || n_slots <= 0) return fail(SK_CUDA_EINVAL, "sk_cuda_invert_slots: bad dimensions");
  cudaStream_t st = stream_of(s);
  SKC_TRY(check(cudaMemsetAsync(row_of_slot, 0xff, static_cast<size_t>(n_slots) * sizeof(int32_t), st), "cudaMemsetAsync"));
  if (rows == 0) return SK_CUDA_OK;
  invert_slots_kernel<<<static_cast<unsigned>(ceil_div(rows, 256)), 256, 0, st>>>(slots, rows, row_of_slot, n_slots);
  return check_launch("invert_slots_kernel");
}

SK_CUDA_API int sk_cuda_add_rows(sk_dtype dt, void* y, const void* src, const float* gate, int64_t rows, int64_t d,
                                 sk_cuda_stream s) {
  if (rows <= 0 || d <= 0 || rows > 0x7fffffff) return fail(SK_CUDA_EINVAL, "sk_cuda_add_rows: bad dimensions");
  const int threads = d >= 256 ? 256 : (d >= 128 ? 128 : 64);
  if (dt == SK_F32)
    add_rows_kernel<float><<<static_cast<unsigned>(rows), threads, 0, stream_of(s)>>>(static_cast<float*>(y),
                                                                                      static_cast<const float*>(src), gate, d);
  else if (dt == SK_BF16)
    add_rows_kernel<bf16><<<static_cast<unsigned>(rows), threads, 0, stream_of(s)>>>(static_cast<bf16*>(y),
                                                                                     static_cast<const bf16*>(src), gate, d);
  else
    return fail(SK_CUDA_EINVAL, "sk_cuda_add_rows: dtype must be f32 or bf16");
  return check_launch("add_rows_kernel");
}

SK_CUDA_API int sk_cuda_combine(sk_dtype dt, const void* ys, int64_t rows, int64_t d, const int32_t* row_of_slot,
                                const float* weights, int64_t tokens, int64_t k, void* y, sk_dtype ydt,
                                sk_cuda_stream s) {
  if (tokens <= 0 || d <= 0 || k <= 0 || rows < 0) return fail(SK_CUDA_EINVAL, "sk_cuda_combine: bad dimensions");
  if (tokens > 0x7fffffff) return fail(SK_CUDA_EINVAL, "sk_cuda_combine: too many tokens");
  if (ydt != SK_F32 && ydt != SK_BF16) return fail(SK_CUDA_EINVAL, "sk_cuda_combine: y dtype must be f32 or bf16");
  cudaStream_t st = stream_of(s);
  if (dt == SK_F32) return combine_launch<float>(ys, rows, d, row_of_slot, weights, tokens, k, y, ydt, st);
  if (dt == SK_BF16) return combine_launch<bf16>(ys, rows, d, row_of_slot, weights, tokens, k, y, ydt, st);
  return fail(SK_CUDA_EINVAL, "sk_cuda_combine: dtype must be f32 or bf16");
}

}  // extern "C"
