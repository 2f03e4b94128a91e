// Hopper (sm_90a) warpgroup GEMMs for bf16: dense linear and grouped experts
// (plain and gated). Compiled for sm_90a only; the callers use it only when
// the device is sm_90 (use_wgmma()).
//
// CTA: two consumer warpgroups (256 threads), tile BM = 128 (64 rows per
// warpgroup) × BN = 256 (plain; wgmma m64n256k16) or 128 outputs × {gate, up}
// (gated; two m64n128k16 per k16, two accumulator sets), BK = 64.
//
// Operands are staged by cp.async (all threads) into shared memory in the
// layout wgmma reads with 128-byte swizzling: K-major rows of 64 bf16 (128
// bytes), 16-byte chunk c of row r stored at chunk c ^ (r mod 8), tiles
// 1024-byte aligned. The matrix descriptors then say: swizzle 128B, stride
// between 8-row groups 1024 bytes; a k16 step inside the 64-wide row advances
// the start address by 32 bytes.
//
// Pipeline (STAGES = 4): the slot refilled in iteration `it` is the one the
// wgmma of iteration it − 2 read; every thread has waited for its own
// warpgroup's wgmma of it − 2 (wgmma.wait_group 1 in it − 1) before the
// barrier of iteration it, so no warpgroup can still be reading it.
// cp.async writes are generic-proxy writes and wgmma reads through the async
// proxy: each thread fences (fence.proxy.async) after its copies land and
// before the barrier.
#include <cuda.h>

#include "common.cuh"
#include "ops.h"
#include "wgmma_ops.cuh"

namespace skc {
namespace {

constexpr int kBM = 128, kBK = 64, kStages = 4, kThreads = 256;

template <bool GATED>
struct WgCfg {
  static constexpr int BN = GATED ? 128 : 256;  // output columns per CTA
  static constexpr int B_ROWS = 256;            // staged W rows (gate + up when gated)
  static constexpr int A_BYTES = kBM * kBK * 2, B_BYTES = B_ROWS * kBK * 2;
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr size_t SMEM = size_t(kStages) * STAGE_BYTES + 1024;  // + alignment slack
  static constexpr int ACC = GATED ? 64 : 128;                           // f32 accumulators per set
  static constexpr int ACC1 = GATED ? 64 : 1;                            // the up set (gated only)
};

__device__ __forceinline__ uint64_t desc_encode(uint64_t x) { return (x & 0x3FFFF) >> 4; }

// K-major, 128-byte swizzle, 8-row groups 1024 bytes apart.
__device__ __forceinline__ uint64_t make_desc(const void* p) {
  return desc_encode(smem_addr(p)) | (desc_encode(16) << 16) | (desc_encode(1024) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Stages ROWS rows × 64 columns (k0 …) of a K-contiguous matrix into the
// swizzled layout; rows ≥ rows_valid and columns ≥ k are zero.
template <int ROWS>
__device__ __forceinline__ void load_tile(unsigned char* dst, const bf16* src, int64_t ld, int rows_valid, int64_t k0,
                                          int64_t k, const bf16* safe) {
  constexpr int CHUNKS = ROWS * 8;
#pragma unroll
  for (int i = 0; i < CHUNKS / kThreads; ++i) {
    const int c = threadIdx.x + i * kThreads;
    const int r = c >> 3, ch = c & 7;
    const int64_t col = k0 + ch * 8;
    const bool ok = r < rows_valid && col < k;
    cp_async_16(dst + r * 128 + ((ch ^ (r & 7)) << 4), ok ? src + r * ld + col : safe, ok ? 16 : 0);
  }
}

// One stage's wgmma of a consumer warpgroup: its 64 rows of A against the
// stage's B (gated: gate and up halves), K = 64 in four k16 steps, committed
// as one group.
template <bool GATED>
__device__ __forceinline__ void wg_stage_mma(const unsigned char* a_tile, const unsigned char* b_tile,
                                             float (&acc0)[WgCfg<GATED>::ACC], float (&acc1)[WgCfg<GATED>::ACC1]) {
  wg_fence();
#pragma unroll
  for (int kk = 0; kk < kBK / 16; ++kk) {
    const uint64_t da = make_desc(a_tile + kk * 32);
    if constexpr (GATED) {
      wgmma_m64n128k16(acc0, da, make_desc(b_tile + kk * 32));
      wgmma_m64n128k16(acc1, da, make_desc(b_tile + 128 * 128 + kk * 32));
    } else {
      wgmma_m64n256k16(acc0, da, make_desc(b_tile + kk * 32));
    }
  }
  wg_commit();
}

template <bool GATED>
__device__ __forceinline__ void zero_acc(float (&acc0)[WgCfg<GATED>::ACC], float (&acc1)[WgCfg<GATED>::ACC1]) {
#pragma unroll
  for (int i = 0; i < WgCfg<GATED>::ACC; ++i) acc0[i] = 0.f;
#pragma unroll
  for (int i = 0; i < WgCfg<GATED>::ACC1; ++i) acc1[i] = 0.f;
}

// The expert owning row tile `tile` (tile_start: each expert's first tile),
// counted by every thread of the CTA.
__device__ __forceinline__ int expert_of_tile(int tile, const int32_t* tile_start, int64_t experts) {
  int e = 0;
  for (int64_t base = 0; base < experts; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    e += __syncthreads_count(i < experts && tile_start[i + 1] <= tile);
  }
  return e;
}

struct WgTile {
  const bf16* a;   // A tile row 0
  const bf16* b;   // B (gate) tile row 0
  const bf16* b3;  // gated: up tile row 0
  int a_rows, b_rows;
  int64_t k;
};

// The K loop of one CTA tile; acc0 (plain, or gate) and acc1 (up, gated only).
template <bool GATED>
__device__ __forceinline__ void wg_mainloop(const WgTile& t, unsigned char* smem, float (&acc0)[WgCfg<GATED>::ACC],
                                            float (&acc1)[WgCfg<GATED>::ACC1]) {
  using Cfg = WgCfg<GATED>;
  const int wg = threadIdx.x >> 7;
  zero_acc<GATED>(acc0, acc1);
  const int iters = static_cast<int>((t.k + kBK - 1) / kBK);
  auto load_stage = [&](int slot, int it) {
    unsigned char* base = smem + slot * Cfg::STAGE_BYTES;
    const int64_t k0 = static_cast<int64_t>(it) * kBK;
    load_tile<kBM>(base, t.a, t.k, t.a_rows, k0, t.k, t.a);
    if (GATED) {
      load_tile<128>(base + Cfg::A_BYTES, t.b, t.k, t.b_rows, k0, t.k, t.a);
      load_tile<128>(base + Cfg::A_BYTES + 128 * 128, t.b3, t.k, t.b_rows, k0, t.k, t.a);
    } else {
      load_tile<256>(base + Cfg::A_BYTES, t.b, t.k, t.b_rows, k0, t.k, t.a);
    }
  };
#pragma unroll
  for (int s = 0; s < kStages - 2; ++s) {
    if (s < iters) load_stage(s, s);
    cp_async_commit();
  }
  for (int it = 0; it < iters; ++it) {
    cp_async_wait<kStages - 3>();
    fence_proxy_async();
    __syncthreads();
    {
      const int nxt = it + kStages - 2;
      if (nxt < iters) load_stage(nxt % kStages, nxt);
      cp_async_commit();
    }
    unsigned char* base = smem + (it % kStages) * Cfg::STAGE_BYTES;
    // this warpgroup's 64 rows of A; B
    wg_stage_mma<GATED>(base + wg * (64 * 128), base + Cfg::A_BYTES, acc0, acc1);
    wg_wait<1>();
  }
  wg_wait<0>();
  cp_async_wait<0>();
}

// Calls f(row, col, v0, v1, u0, u1) for each pair of adjacent accumulators:
// warp w of the warpgroup holds rows 16w … 16w+15; per 8-column slice j the
// m16n8 accumulator layout (rows g, g + 8; columns 2q, 2q + 1).
template <bool GATED, class F>
__device__ __forceinline__ void wg_epilogue(int wg, const float (&acc0)[WgCfg<GATED>::ACC],
                                            const float (&acc1)[WgCfg<GATED>::ACC1], F&& f) {
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int row = wg * 64 + warp * 16 + (lane >> 2);
  const int colq = (lane & 3) * 2;
#pragma unroll
  for (int j = 0; j < WgCfg<GATED>::ACC / 4; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if constexpr (GATED)
        f(row + h * 8, j * 8 + colq, acc0[4 * j + 2 * h], acc0[4 * j + 2 * h + 1], acc1[4 * j + 2 * h],
          acc1[4 * j + 2 * h + 1]);
      else
        f(row + h * 8, j * 8 + colq, acc0[4 * j + 2 * h], acc0[4 * j + 2 * h + 1], 0.f, 0.f);
    }
}

__device__ __forceinline__ float wg_finish(bool gated, float v, float u, const float* bias, int64_t col, int act) {
  if (gated) return activate(v, act) * u;
  if (bias) v += bias[col];
  return activate(v, act);
}

__device__ __forceinline__ void wg_store(void* y, int ydt, int64_t ldy, int64_t row, int64_t col, int64_t cols,
                                         bool gated, float v0, float v1, float u0, float u1, const float* bias, int act) {
  if (col >= cols) return;
  const int64_t idx = row * ldy + col;
  const float a = wg_finish(gated, v0, u0, bias, col, act);
  if (col + 1 < cols && (idx & 1) == 0) {
    const float b = wg_finish(gated, v1, u1, bias, col + 1, act);
    if (ydt == SK_F32)
      *reinterpret_cast<float2*>(static_cast<float*>(y) + idx) = make_float2(a, b);
    else
      *reinterpret_cast<__nv_bfloat162*>(static_cast<bf16*>(y) + idx) = __floats2bfloat162_rn(a, b);
    return;
  }
  auto one = [&](int64_t i, float v) {
    if (ydt == SK_F32)
      static_cast<float*>(y)[i] = v;
    else
      static_cast<bf16*>(y)[i] = __float2bfloat16_rn(v);
  };
  one(idx, a);
  if (col + 1 < cols) one(idx + 1, wg_finish(gated, v1, u1, bias, col + 1, act));
}

// The epilogue compiled for one (output type, activation, bias) combination:
// wg_store decides those per element at run time, which makes the epilogue
// ~23k instructions of branches (it misses the instruction cache, and ncu on
// the H200 showed warps waiting for instructions half the time in the TMA
// linear kernel); this one is straight-line code, the same arithmetic.
template <class T>
struct TypeTag {
  using type = T;
};
template <int V>
struct IntTag {
  static constexpr int value = V;
};

// Calls f(TypeTag<output type>, IntTag<activation>, IntTag<has bias>) once
// (has bias always 0 without BIAS_VARIANTS: gated experts take no bias).
template <bool BIAS_VARIANTS, class F>
__device__ __forceinline__ void epilogue_variant(int ydt, int act, bool has_bias, F&& f) {
  auto with_bias = [&](auto yt, auto at) {
    if (BIAS_VARIANTS && has_bias)
      f(yt, at, IntTag<1>{});
    else
      f(yt, at, IntTag<0>{});
  };
  auto with_act = [&](auto yt) {
    switch (act) {
      case SK_ACT_RELU: with_bias(yt, IntTag<SK_ACT_RELU>{}); break;
      case SK_ACT_GELU: with_bias(yt, IntTag<SK_ACT_GELU>{}); break;
      case SK_ACT_GELU_TANH: with_bias(yt, IntTag<SK_ACT_GELU_TANH>{}); break;
      case SK_ACT_SILU: with_bias(yt, IntTag<SK_ACT_SILU>{}); break;
      default: with_bias(yt, IntTag<SK_ACT_NONE>{}); break;
    }
  };
  if (ydt == SK_F32)
    with_act(TypeTag<float>{});
  else
    with_act(TypeTag<bf16>{});
}

template <bool GATED, class YT, int ACT, bool BIAS>
__device__ __forceinline__ void wg_store_lean(YT* y, int64_t ldy, int64_t row, int64_t col, int64_t cols, float v0,
                                              float v1, float u0, float u1, const float* bias) {
  if (col >= cols) return;
  auto fin = [&](float v, float u, int64_t c) -> float {
    if constexpr (GATED) {
      return activate(v, ACT) * u;
    } else {
      if constexpr (BIAS) v += bias[c];
      return activate(v, ACT);
    }
  };
  const int64_t idx = row * ldy + col;
  const float a = fin(v0, u0, col);
  if (col + 1 < cols) {
    const float b = fin(v1, u1, col + 1);
    if ((idx & 1) == 0) {
      store2(y, idx, a, b);
    } else {
      y[idx] = from_float<YT>(a);
      y[idx + 1] = from_float<YT>(b);
    }
  } else {
    y[idx] = from_float<YT>(a);
  }
}

__device__ __forceinline__ unsigned char* aligned_smem(unsigned char* raw) {
  return reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(raw) + 1023) & ~static_cast<uintptr_t>(1023));
}

__global__ void __launch_bounds__(kThreads, 1)
    wg_linear_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w, const float* __restrict__ bias,
                     void* __restrict__ y, int ydt, int64_t m, int64_t n, int64_t k, int act) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = aligned_smem(smem_raw);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM, n0 = static_cast<int64_t>(blockIdx.y) * 256;
  WgTile t{x + m0 * k, w + n0 * k, nullptr, static_cast<int>(min64(kBM, m - m0)), static_cast<int>(min64(256, n - n0)),
           k};
  float acc[128], unused[1];
  wg_mainloop<false>(t, smem, acc, unused);
  const int rows = t.a_rows;
  wg_epilogue<false>(threadIdx.x >> 7, acc, unused, [&](int r, int c, float v0, float v1, float, float) {
    if (r < rows) wg_store(y, ydt, n, m0 + r, n0 + c, n, false, v0, v1, 0.f, 0.f, bias, act);
  });
}

template <bool GATED>
__global__ void __launch_bounds__(kThreads, 1)
    wg_grouped_kernel(const bf16* __restrict__ xs, const int32_t* __restrict__ offsets,
                      const int32_t* __restrict__ tile_start, int64_t experts, const bf16* __restrict__ w,
                      const bf16* __restrict__ w3, const float* __restrict__ bias, void* __restrict__ y, int ydt,
                      int64_t n, int64_t k, int act) {
  using Cfg = WgCfg<GATED>;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = aligned_smem(smem_raw);
  const int tile = blockIdx.x;
  if (tile >= tile_start[experts]) return;
  const int e = expert_of_tile(tile, tile_start, experts);
  const int64_t row0 = offsets[e] + static_cast<int64_t>(tile - tile_start[e]) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * Cfg::BN;
  WgTile t{xs + row0 * k, w + (e * n + n0) * k, GATED ? w3 + (e * n + n0) * k : nullptr,
           static_cast<int>(min64(kBM, offsets[e + 1] - row0)), static_cast<int>(min64(Cfg::BN, n - n0)), k};
  float acc0[Cfg::ACC], acc1[Cfg::ACC1];
  wg_mainloop<GATED>(t, smem, acc0, acc1);
  const int rows = t.a_rows;
  const float* eb = bias ? bias + e * n : nullptr;
  wg_epilogue<GATED>(threadIdx.x >> 7, acc0, acc1, [&](int r, int c, float v0, float v1, float u0, float u1) {
    if (r < rows) wg_store(y, ydt, n, row0 + r, n0 + c, n, GATED, v0, v1, u0, u1, eb, act);
  });
}

// ---- TMA + warp-specialised variant ---------------------------------------------------
//
// CTA of three warpgroups: warpgroup 0 produces (one thread issues the bulk
// tensor copies of each stage: A 128 × 64 and B 256 × 64, or gate 128 × 64 +
// up 128 × 64, straight into the 128-byte-swizzled layout above, completing
// on the stage's `full` mbarrier with its byte count); warpgroups 1 and 2
// consume (64 rows each, the same wgmma as above) and release a stage on its
// `empty` mbarrier (one arrival per consumer warp, after that warp's
// wgmma.wait_group says the stage's wgmma finished). The copy engine does
// the address arithmetic, zero-fills out-of-range rows and the K tail, and
// the consumers never wait on their own loads. Same results as the cp.async
// kernels: the same wgmma sequence in the same order per output.

constexpr int kTmaThreads = 384, kTmaStages = 4, kConsumerWarps = 8, kRasterM = 8;

template <bool GATED>
struct TmaCfg : WgCfg<GATED> {
  static constexpr size_t BAR_OFF = size_t(kTmaStages) * WgCfg<GATED>::STAGE_BYTES;
  static constexpr size_t SMEM = BAR_OFF + 2 * kTmaStages * sizeof(uint64_t) + 1024;
};

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}
// Box (64 columns from k0, rows from row0) of a 2-D tensor map into shared memory.
__device__ __forceinline__ void tma_load(void* dst, const CUtensorMap* map, int k0, int row0, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(k0), "r"(row0), "r"(smem_addr(bar))
      : "memory");
}

struct TmaTile {
  int a_row;   // first row of the A box (x / xs)
  int b_row;   // first row of the B box (W / gate / up stacks)
  int64_t k;
};

// Sets up the barriers, runs the producer (warpgroup 0) or a consumer's K
// loop; returns the consumer warpgroup (0 or 1), or -1 for the producer.
template <bool GATED>
__device__ __forceinline__ int tma_mainloop(const TmaTile& t, const CUtensorMap* ma, const CUtensorMap* mb,
                                            const CUtensorMap* mb3, unsigned char* smem,
                                            float (&acc0)[WgCfg<GATED>::ACC], float (&acc1)[WgCfg<GATED>::ACC1]) {
  using Cfg = TmaCfg<GATED>;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + Cfg::BAR_OFF);
  uint64_t* empty = full + kTmaStages;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kTmaStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  const int iters = static_cast<int>((t.k + kBK - 1) / kBK);
  const int wg = threadIdx.x >> 7;
  if (wg == 0) {
    if (threadIdx.x == 0) {
      for (int it = 0; it < iters; ++it) {
        const int s = it % kTmaStages;
        if (it >= kTmaStages) mbar_wait(&empty[s], ((it / kTmaStages) - 1) & 1);
        unsigned char* base = smem + s * Cfg::STAGE_BYTES;
        mbar_expect_tx(&full[s], Cfg::STAGE_BYTES);
        const int k0 = it * kBK;
        tma_load(base, ma, k0, t.a_row, &full[s]);
        tma_load(base + Cfg::A_BYTES, mb, k0, t.b_row, &full[s]);
        if (GATED) tma_load(base + Cfg::A_BYTES + 128 * 128, mb3, k0, t.b_row, &full[s]);
      }
    }
    return -1;
  }
  const int cwg = wg - 1;
  zero_acc<GATED>(acc0, acc1);
  for (int it = 0; it < iters; ++it) {
    const int s = it % kTmaStages;
    mbar_wait(&full[s], (it / kTmaStages) & 1);
    unsigned char* base = smem + s * Cfg::STAGE_BYTES;
    wg_stage_mma<GATED>(base + cwg * (64 * 128), base + Cfg::A_BYTES, acc0, acc1);
    wg_wait<1>();
    // This warp's share of the wgmma of iteration it − 1 is done: release that stage.
    if (it > 0 && (threadIdx.x & 31) == 0) mbar_arrive(&empty[(it - 1) % kTmaStages]);
  }
  wg_wait<0>();
  return cwg;
}

__global__ void __launch_bounds__(kTmaThreads, 1)
    tma_linear_kernel(const __grid_constant__ CUtensorMap mx, const __grid_constant__ CUtensorMap mw,
                      const float* __restrict__ bias, void* __restrict__ y, int ydt, int64_t m, int64_t n, int64_t k,
                      int act, int run_m, int lean) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = aligned_smem(smem_raw);
  // Runs of `run_m` row tiles × every column tile, row tile fastest (run_m =
  // all row tiles: one column tile after another).
  const int m_tiles = static_cast<int>(ceil_div(m, kBM)), n_tiles = static_cast<int>(ceil_div(n, 256));
  const int per_run = run_m * n_tiles;
  const int run = blockIdx.x / per_run, in_run = blockIdx.x % per_run;
  const int len = min(run_m, m_tiles - run * run_m);
  const int64_t m0 = static_cast<int64_t>(run * run_m + in_run % len) * kBM;
  const int64_t n0 = static_cast<int64_t>(in_run / len) * 256;
  float acc[128], unused[1];
  const int cwg = tma_mainloop<false>(TmaTile{static_cast<int>(m0), static_cast<int>(n0), k}, &mx, &mw, nullptr, smem,
                                      acc, unused);
  if (cwg < 0) return;
  const int64_t rows = min64(kBM, m - m0);
  if (lean) {
    epilogue_variant<true>(ydt, act, bias != nullptr, [&](auto yt, auto at, auto hb) {
      using YT = typename decltype(yt)::type;
      constexpr int A = decltype(at)::value;
      constexpr bool B = decltype(hb)::value != 0;
      wg_epilogue<false>(cwg, acc, unused, [&](int r, int c, float v0, float v1, float, float) {
        if (r < rows) wg_store_lean<false, YT, A, B>(static_cast<YT*>(y), n, m0 + r, n0 + c, n, v0, v1, 0.f, 0.f, bias);
      });
    });
    return;
  }
  wg_epilogue<false>(cwg, acc, unused, [&](int r, int c, float v0, float v1, float, float) {
    if (r < rows) wg_store(y, ydt, n, m0 + r, n0 + c, n, false, v0, v1, 0.f, 0.f, bias, act);
  });
}

template <bool GATED>
__global__ void __launch_bounds__(kTmaThreads, 1)
    tma_grouped_kernel(const __grid_constant__ CUtensorMap mx, const __grid_constant__ CUtensorMap mw,
                       const __grid_constant__ CUtensorMap mw3, const int32_t* __restrict__ offsets,
                       const int32_t* __restrict__ tile_start, int64_t experts, int max_tiles,
                       const float* __restrict__ bias, void* __restrict__ y, int ydt, int64_t n, int64_t k, int act,
                       int lean) {
  using Cfg = WgCfg<GATED>;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = aligned_smem(smem_raw);
  // Grouped raster: runs of kRasterM row tiles × every column tile, row tile
  // fastest, so the CTAs resident at once share a few x tiles and a few W
  // column tiles in L2: each expert's weights come from memory about once
  // per run of row tiles (Mixtral: 8 row tiles per expert; DeepSeek: ~5
  // experts per run), and each x tile once.
  const int n_tiles = static_cast<int>(ceil_div(n, Cfg::BN));
  const int per_run = kRasterM * n_tiles;
  const int run = blockIdx.x / per_run, in_run = blockIdx.x % per_run;
  const int first = run * kRasterM;
  const int len = min(kRasterM, max_tiles - first);
  const int tile = first + in_run % len;
  const int n_tile = in_run / len;
  if (tile >= tile_start[experts]) return;
  const int e = expert_of_tile(tile, tile_start, experts);
  const int64_t row0 = offsets[e] + static_cast<int64_t>(tile - tile_start[e]) * kBM;
  const int64_t n0 = static_cast<int64_t>(n_tile) * Cfg::BN;
  float acc0[Cfg::ACC], acc1[Cfg::ACC1];
  const int cwg = tma_mainloop<GATED>(TmaTile{static_cast<int>(row0), static_cast<int>(e * n + n0), k}, &mx, &mw,
                                      GATED ? &mw3 : nullptr, smem, acc0, acc1);
  if (cwg < 0) return;
  const int64_t rows = min64(kBM, offsets[e + 1] - row0);
  const float* eb = bias ? bias + e * n : nullptr;
  if (lean) {
    epilogue_variant<!GATED>(ydt, act, eb != nullptr, [&](auto yt, auto at, auto hb) {
      using YT = typename decltype(yt)::type;
      constexpr int A = decltype(at)::value;
      constexpr bool B = decltype(hb)::value != 0;
      wg_epilogue<GATED>(cwg, acc0, acc1, [&](int r, int c, float v0, float v1, float u0, float u1) {
        if (r < rows) wg_store_lean<GATED, YT, A, B>(static_cast<YT*>(y), n, row0 + r, n0 + c, n, v0, v1, u0, u1, eb);
      });
    });
    return;
  }
  wg_epilogue<GATED>(cwg, acc0, acc1, [&](int r, int c, float v0, float v1, float u0, float u1) {
    if (r < rows) wg_store(y, ydt, n, row0 + r, n0 + c, n, GATED, v0, v1, u0, u1, eb, act);
  });
}

// ---- tensor maps (host) -----------------------------------------------------------------

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The driver's cuTensorMapEncodeTiled (the runtime is static and the driver is
// opened by it: ask the runtime for the entry point); null where unavailable.
EncodeTiled encode_tiled() {
  static EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    cudaGetLastError();
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
}

// A row-major bf16 [rows, k] matrix read in boxes of 64 columns × box_rows rows,
// 128-byte swizzled, zeros outside.
bool make_map(CUtensorMap* map, const bf16* p, int64_t rows, int64_t k, int box_rows) {
  EncodeTiled enc = encode_tiled();
  if (!enc || (reinterpret_cast<uintptr_t>(p) & 15) != 0 || k % 8 != 0 || rows >= (int64_t(1) << 31) ||
      k >= (int64_t(1) << 31))
    return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem[2] = {1, 1};
  return enc(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<bf16*>(p), dims, strides, box, elem,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace

const char* wgmma_kernel_names() {
  return "sm_90a bf16 linear/grouped: wgmma.mma_async m64n256k16 (gated: 2x m64n128k16), 128x256x64 tiles in "
         "128B-swizzled shared memory, 4 stages: TMA (cp.async.bulk.tensor) + mbarriers, 1 producer and 2 consumer "
         "warpgroups (cuda.setOption('tma', false): the same tiles fed by cp.async from the 2 consumer warpgroups)";
}

bool wgmma_linear_supported(int64_t m, int64_t n, int64_t k) { return m >= 128 && n >= 128 && k % 8 == 0; }
bool wgmma_grouped_supported(int64_t n, int64_t k) { return n >= 64 && k % 8 == 0; }

int wgmma_linear(const bf16* x, const bf16* w, const float* bias, void* y, int ydt, int64_t m, int64_t n, int64_t k,
                 int act, cudaStream_t s) {
  CUtensorMap mx, mw;
  if (use_tma() && make_map(&mx, x, m, k, kBM) && make_map(&mw, w, n, k, 256)) {
    using Cfg = TmaCfg<false>;
    SKC_TRY(prepare(tma_linear_kernel, Cfg::SMEM));
    const int m_tiles = static_cast<int>(ceil_div(m, kBM));
    const int run_m = tma_raster() > 0 ? static_cast<int>(min64(tma_raster(), m_tiles)) : m_tiles;
    const unsigned grid = static_cast<unsigned>(m_tiles * ceil_div(n, 256));
    tma_linear_kernel<<<grid, kTmaThreads, Cfg::SMEM, s>>>(mx, mw, bias, y, ydt, m, n, k, act, run_m,
                                                           tma_lean_epilogue() ? 1 : 0);
    return check_launch("tma_linear_kernel");
  }
  using Cfg = WgCfg<false>;
  SKC_TRY(prepare(wg_linear_kernel, Cfg::SMEM));
  dim3 grid(static_cast<unsigned>(ceil_div(m, kBM)), static_cast<unsigned>(ceil_div(n, 256)));
  wg_linear_kernel<<<grid, kThreads, Cfg::SMEM, s>>>(x, w, bias, y, ydt, m, n, k, act);
  return check_launch("wg_linear_kernel");
}

int wgmma_grouped(const bf16* xs, const int32_t* offsets, const int32_t* tile_start, int64_t experts, int64_t max_tiles,
                  const bf16* w, const bf16* w3, const float* bias, void* y, int ydt, int64_t rows, int64_t n,
                  int64_t k, int act, cudaStream_t s) {
  CUtensorMap mx, mw, mw3;
  if (use_tma() && make_map(&mx, xs, rows, k, kBM) && make_map(&mw, w, experts * n, k, w3 ? 128 : 256) &&
      (!w3 || make_map(&mw3, w3, experts * n, k, 128))) {
    if (!w3) mw3 = mw;  // unused by the plain kernel
    auto launch = [&](auto kernel, size_t smem, int64_t bn, const float* b) -> int {
      SKC_TRY(prepare(kernel, smem));
      const unsigned grid = static_cast<unsigned>(max_tiles * ceil_div(n, bn));
      kernel<<<grid, kTmaThreads, smem, s>>>(mx, mw, mw3, offsets, tile_start, experts, static_cast<int>(max_tiles), b,
                                             y, ydt, n, k, act, tma_lean_epilogue() ? 1 : 0);
      return SK_CUDA_OK;
    };
    if (w3)
      SKC_TRY(launch(tma_grouped_kernel<true>, TmaCfg<true>::SMEM, TmaCfg<true>::BN, nullptr));
    else
      SKC_TRY(launch(tma_grouped_kernel<false>, TmaCfg<false>::SMEM, TmaCfg<false>::BN, bias));
    return check_launch("tma_grouped_kernel");
  }
  if (w3) {
    using Cfg = WgCfg<true>;
    SKC_TRY(prepare(wg_grouped_kernel<true>, Cfg::SMEM));
    dim3 grid(static_cast<unsigned>(max_tiles), static_cast<unsigned>(ceil_div(n, Cfg::BN)));
    wg_grouped_kernel<true><<<grid, kThreads, Cfg::SMEM, s>>>(xs, offsets, tile_start, experts, w, w3, nullptr, y, ydt,
                                                              n, k, act);
  } else {
    using Cfg = WgCfg<false>;
    SKC_TRY(prepare(wg_grouped_kernel<false>, Cfg::SMEM));
    dim3 grid(static_cast<unsigned>(max_tiles), static_cast<unsigned>(ceil_div(n, Cfg::BN)));
    wg_grouped_kernel<false><<<grid, kThreads, Cfg::SMEM, s>>>(xs, offsets, tile_start, experts, w, nullptr, bias, y,
                                                               ydt, n, k, act);
  }
  return check_launch("wg_grouped_kernel");
}

}  // namespace skc
