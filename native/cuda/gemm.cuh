// The tile main loops every GEMM-like op is built from: C = A·Bᵀ over one CTA
// tile, with A [BM rows, K] and B [BN rows, K] both K-contiguous (x and W in
// nn.Linear layout need no transposition).
//
//  - MmaTile: bf16 on tensor cores, mma.sync.m16n8k16 (sm_80+), operands staged
//    in shared memory by cp.async in a STAGES-deep ring, fragments read with
//    ldmatrix from an XOR-swizzled layout (no bank conflicts).
//  - SimtTile: f32 on CUDA cores (FFMA), register-tiled TM×TN outer products,
//    operands staged transposed (k-major) by 4-byte cp.async, double-buffered.
//
// Where the operand rows come from is the op's business: a "source" object
// tells the loop, for each K step, where the A and B tiles start and how many
// of their K columns are real (the rest are zero-filled). Dense and grouped
// GEMMs step through K contiguously; the block-sparse ones jump between kept
// blocks. GATED tiles carry a second B (W3, the "up" projection) with its own
// accumulators so the SwiGLU/GeGLU product is formed in registers.
#pragma once
#include "common.cuh"

namespace skc {

// A source: step(it, …) gives the tile starts for K step `it` of `iters`.
// a_rows/b_rows: rows of the tile that exist (the rest read as zeros).
template <class T>
struct ContiguousSource {
  const T* a;   // A tile row 0, k 0
  const T* b;   // B tile row 0, k 0
  const T* b3;  // gated: W3 tile row 0, k 0
  int64_t lda, ldb;
  int a_rows, b_rows;
  int64_t k;
  int iters;
  const T* safe;  // any mapped address (zero-byte cp.async still takes one)
  template <int BK>
  __device__ __forceinline__ void step(int it, const T*& ap, const T*& bp, const T*& b3p, int& kvalid) const {
    int64_t k0 = static_cast<int64_t>(it) * BK;
    ap = a + k0;
    bp = b + k0;
    b3p = b3 ? b3 + k0 : nullptr;
    int64_t rem = k - k0;
    kvalid = rem < BK ? static_cast<int>(rem) : BK;
  }
};

// ======================================================================================
// bf16 tensor cores
// ======================================================================================

template <int BM_, int BN_, int BK_, int WARPS_M_, int WARPS_N_, int STAGES_, bool GATED_ = false>
struct MmaCfg {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, STAGES = STAGES_;
  static constexpr bool GATED = GATED_;
  static constexpr int G = GATED ? 2 : 1;
  static constexpr int THREADS = WARPS_M * WARPS_N * 32;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
  static constexpr int MI = WM / 16, NI = WN / 8;
  static constexpr int B_ROWS = G * BN;
  static constexpr int CPR = BK / 8;  // 16-byte chunks per shared-memory row
  static constexpr int A_STAGE = BM * BK, B_STAGE = B_ROWS * BK;  // elements
  static constexpr size_t SMEM = size_t(STAGES) * (A_STAGE + B_STAGE) * sizeof(bf16);
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must be a multiple of 16×16");
  static_assert(BK == 16 || BK == 32 || BK == 64, "BK must be 16, 32 or 64");
  static_assert(STAGES >= 2, "at least two stages");
};

// Chunk `ch` of row `row` lands at chunk ch ^ f(row): the 8 rows an ldmatrix
// 8×8 reads then hit 8 different 16-byte bank groups whatever the row length.
template <int CPR>
__device__ __forceinline__ int swizzle(int row, int ch) {
  return ch ^ ((row / (8 / CPR)) % CPR);
}

// Stages `ROWS` rows × BK columns from global (row stride ld) into `dst`.
// VEC: 16-byte cp.async, needs 16-byte aligned rows and kvalid % 8 == 0.
// Otherwise element by element (odd shapes; synchronous, for correctness only).
template <class Cfg, int ROWS, bool VEC>
__device__ __forceinline__ void mma_load_rows(bf16* dst, const bf16* src, int64_t ld, int rows_valid, int kvalid,
                                              const bf16* safe, int tid) {
  constexpr int BK = Cfg::BK, CPR = Cfg::CPR;
  if (VEC) {
    constexpr int N = ROWS * CPR, TRIPS = (N + Cfg::THREADS - 1) / Cfg::THREADS;
#pragma unroll
    for (int i = 0; i < TRIPS; ++i) {
      const int c = tid + i * Cfg::THREADS;
      if (N % Cfg::THREADS != 0 && c >= N) break;
      const int r = c / CPR, ch = c % CPR;
      const bool ok = r < rows_valid && ch * 8 < kvalid;
      const bf16* g = ok ? src + r * ld + ch * 8 : safe;
      cp_async_16(dst + r * BK + swizzle<CPR>(r, ch) * 8, g, ok ? 16 : 0);
    }
  } else {
    for (int e = tid; e < ROWS * BK; e += Cfg::THREADS) {
      const int r = e / BK, kk = e % BK;
      bf16 v = __float2bfloat16_rn(0.f);
      if (r < rows_valid && kk < kvalid) v = src[r * ld + kk];
      dst[r * BK + swizzle<CPR>(r, kk / 8) * 8 + kk % 8] = v;
    }
  }
}

template <class Cfg>
using MmaAcc = float[Cfg::G][Cfg::MI][Cfg::NI][4];

// Runs the K loop of one CTA tile. `smem` holds Cfg::SMEM bytes (16-byte aligned).
template <class Cfg, bool VEC, class Src>
__device__ __forceinline__ void mma_mainloop(const Src& src, bf16* smem, MmaAcc<Cfg>& acc) {
  constexpr int BK = Cfg::BK, BN = Cfg::BN, CPR = Cfg::CPR, STAGES = Cfg::STAGES;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / Cfg::WARPS_N, wn = warp % Cfg::WARPS_N;
  bf16* sa = smem;
  bf16* sb = smem + STAGES * Cfg::A_STAGE;

#pragma unroll
  for (int g = 0; g < Cfg::G; ++g)
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[g][mi][ni][q] = 0.f;

  auto load_stage = [&](int stage, int it) {
    const bf16 *ap, *bp, *b3p;
    int kvalid;
    src.template step<BK>(it, ap, bp, b3p, kvalid);
    mma_load_rows<Cfg, Cfg::BM, VEC>(sa + stage * Cfg::A_STAGE, ap, src.lda, src.a_rows, kvalid, src.safe, tid);
    mma_load_rows<Cfg, BN, VEC>(sb + stage * Cfg::B_STAGE, bp, src.ldb, src.b_rows, kvalid, src.safe, tid);
    if (Cfg::GATED)
      mma_load_rows<Cfg, BN, VEC>(sb + stage * Cfg::B_STAGE + BN * BK, b3p, src.ldb, src.b_rows, kvalid, src.safe, tid);
  };

  const int iters = src.iters;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < iters) load_stage(s, s);
    cp_async_commit();
  }

  for (int it = 0; it < iters; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    // The stage refilled here was read in iteration it − 1, which every thread
    // has finished (barrier above).
    {
      const int nxt = it + STAGES - 1;
      if (nxt < iters) load_stage(nxt % STAGES, nxt);
      cp_async_commit();
    }
    const bf16* a_s = sa + (it % STAGES) * Cfg::A_STAGE;
    const bf16* b_s = sb + (it % STAGES) * Cfg::B_STAGE;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t af[Cfg::MI][4];
#pragma unroll
      for (int mi = 0; mi < Cfg::MI; ++mi) {
        const int r = wm * Cfg::WM + mi * 16 + (lane & 15);
        const int ch = kk * 2 + (lane >> 4);
        ldmatrix_x4(af[mi], smem_addr(a_s + r * BK + swizzle<CPR>(r, ch) * 8));
      }
#pragma unroll
      for (int g = 0; g < Cfg::G; ++g) {
        uint32_t bfr[Cfg::NI][2];
#pragma unroll
        for (int nj = 0; nj < Cfg::NI / 2; ++nj) {
          const int r = g * BN + wn * Cfg::WN + nj * 16 + (lane & 7) + ((lane >> 4) << 3);
          const int ch = kk * 2 + ((lane >> 3) & 1);
          uint32_t q[4];
          ldmatrix_x4(q, smem_addr(b_s + r * BK + swizzle<CPR>(r, ch) * 8));
          bfr[2 * nj][0] = q[0];
          bfr[2 * nj][1] = q[1];
          bfr[2 * nj + 1][0] = q[2];
          bfr[2 * nj + 1][1] = q[3];
        }
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
          for (int ni = 0; ni < Cfg::NI; ++ni) mma_bf16_16816(acc[g][mi][ni], af[mi], bfr[ni][0], bfr[ni][1]);
      }
    }
  }
  cp_async_wait<0>();
}

// Calls f(row, col, v0, v1, u0, u1) for each pair of adjacent accumulators of
// this thread: tile-local (row, col) and (row, col + 1); u are the gated
// tile's "up" values (0 when not gated).
template <class Cfg, class F>
__device__ __forceinline__ void mma_epilogue(const MmaAcc<Cfg>& acc, F&& f) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp / Cfg::WARPS_N, wn = warp % Cfg::WARPS_N;
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = wm * Cfg::WM + mi * 16 + (lane >> 2) + h * 8;
        const int c = wn * Cfg::WN + ni * 8 + (lane & 3) * 2;
        const float v0 = acc[0][mi][ni][2 * h], v1 = acc[0][mi][ni][2 * h + 1];
        const float u0 = Cfg::GATED ? acc[Cfg::G - 1][mi][ni][2 * h] : 0.f;
        const float u1 = Cfg::GATED ? acc[Cfg::G - 1][mi][ni][2 * h + 1] : 0.f;
        f(r, c, v0, v1, u0, u1);
      }
}

// ======================================================================================
// f32 on CUDA cores
// ======================================================================================

template <int BM_, int BN_, int BK_, int TM_, int TN_, bool GATED_ = false>
struct SimtCfg {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr bool GATED = GATED_;
  static constexpr int G = GATED ? 2 : 1;
  static constexpr int TX = BN / TN, TY = BM / TM;
  static constexpr int THREADS = TX * TY;
  static constexpr int PAD = 4;  // keeps 16-byte alignment, spreads the transposed stores over banks
  static constexpr int LDA = BM + PAD, LDB = G * BN + PAD;
  static constexpr int A_STAGE = BK * LDA, B_STAGE = BK * LDB;  // floats
  static constexpr size_t SMEM = 2 * size_t(A_STAGE + B_STAGE) * sizeof(float);
  static_assert(TM % 2 == 0 && TN % 2 == 0 && (TM / 2 == 1 || TM / 2 == 2 || TM / 2 == 4) &&
                    (TN / 2 == 1 || TN / 2 == 2 || TN / 2 == 4),
                "thread tile halves must be 1, 2 or 4 wide");
  static_assert(BM % TM == 0 && BN % TN == 0, "tile");
};

template <int W>
struct VecF;
template <>
struct VecF<1> {
  static __device__ __forceinline__ void load(float* d, const float* s) { d[0] = s[0]; }
};
template <>
struct VecF<2> {
  static __device__ __forceinline__ void load(float* d, const float* s) {
    float2 v = *reinterpret_cast<const float2*>(s);
    d[0] = v.x;
    d[1] = v.y;
  }
};
template <>
struct VecF<4> {
  static __device__ __forceinline__ void load(float* d, const float* s) {
    float4 v = *reinterpret_cast<const float4*>(s);
    d[0] = v.x;
    d[1] = v.y;
    d[2] = v.z;
    d[3] = v.w;
  }
};

// Stages ROWS rows × BK columns, transposed to [k][row] (row stride LD), with
// one 4-byte cp.async per element (any alignment, any K).
template <class Cfg, int ROWS, int LD>
__device__ __forceinline__ void simt_load_rows(float* dst, const float* src, int64_t ld, int rows_valid, int kvalid,
                                               const float* safe, int tid) {
  constexpr int BK = Cfg::BK, N = ROWS * BK, TRIPS = (N + Cfg::THREADS - 1) / Cfg::THREADS;
#pragma unroll
  for (int i = 0; i < TRIPS; ++i) {
    const int e = tid + i * Cfg::THREADS;
    if (N % Cfg::THREADS != 0 && e >= N) break;
    const int r = e / BK, kk = e % BK;
    const bool ok = r < rows_valid && kk < kvalid;
    cp_async_4(dst + kk * LD + r, ok ? src + r * ld + kk : safe, ok ? 4 : 0);
  }
}

template <class Cfg>
using SimtAcc = float[Cfg::G][Cfg::TM][Cfg::TN];

// Thread (ty, tx) owns rows ty·TM/2 + i and BM/2 + ty·TM/2 + i, columns
// tx·TN/2 + j and BN/2 + tx·TN/2 + j: a warp's shared reads are contiguous.
template <class Cfg>
__device__ __forceinline__ int simt_row(int i) {
  const int ty = threadIdx.x / Cfg::TX;
  return (i < Cfg::TM / 2) ? ty * (Cfg::TM / 2) + i : Cfg::BM / 2 + ty * (Cfg::TM / 2) + (i - Cfg::TM / 2);
}
template <class Cfg>
__device__ __forceinline__ int simt_col(int j) {
  const int tx = threadIdx.x % Cfg::TX;
  return (j < Cfg::TN / 2) ? tx * (Cfg::TN / 2) + j : Cfg::BN / 2 + tx * (Cfg::TN / 2) + (j - Cfg::TN / 2);
}

template <class Cfg, class Src>
__device__ __forceinline__ void simt_mainloop(const Src& src, float* smem, SimtAcc<Cfg>& acc) {
  constexpr int BK = Cfg::BK, BN = Cfg::BN, TM = Cfg::TM, TN = Cfg::TN;
  const int tid = threadIdx.x;
  float* sa = smem;
  float* sb = smem + 2 * Cfg::A_STAGE;
#pragma unroll
  for (int g = 0; g < Cfg::G; ++g)
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[g][i][j] = 0.f;

  auto load_stage = [&](int stage, int it) {
    const float *ap, *bp, *b3p;
    int kvalid;
    src.template step<BK>(it, ap, bp, b3p, kvalid);
    simt_load_rows<Cfg, Cfg::BM, Cfg::LDA>(sa + stage * Cfg::A_STAGE, ap, src.lda, src.a_rows, kvalid, src.safe, tid);
    simt_load_rows<Cfg, BN, Cfg::LDB>(sb + stage * Cfg::B_STAGE, bp, src.ldb, src.b_rows, kvalid, src.safe, tid);
    if (Cfg::GATED)
      simt_load_rows<Cfg, BN, Cfg::LDB>(sb + stage * Cfg::B_STAGE + BN, b3p, src.ldb, src.b_rows, kvalid, src.safe, tid);
  };

  const int iters = src.iters;
  const int ty = tid / Cfg::TX, tx = tid % Cfg::TX;
  if (iters > 0) load_stage(0, 0);
  cp_async_commit();
  for (int it = 0; it < iters; ++it) {
    // The other buffer was last read in iteration it − 1, before its closing barrier.
    if (it + 1 < iters) load_stage((it + 1) & 1, it + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const float* a_s = sa + (it & 1) * Cfg::A_STAGE;
    const float* b_s = sb + (it & 1) * Cfg::B_STAGE;
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM], b[Cfg::G][TN];
      VecF<TM / 2>::load(a, a_s + kk * Cfg::LDA + ty * (TM / 2));
      VecF<TM / 2>::load(a + TM / 2, a_s + kk * Cfg::LDA + Cfg::BM / 2 + ty * (TM / 2));
#pragma unroll
      for (int g = 0; g < Cfg::G; ++g) {
        VecF<TN / 2>::load(b[g], b_s + kk * Cfg::LDB + g * BN + tx * (TN / 2));
        VecF<TN / 2>::load(b[g] + TN / 2, b_s + kk * Cfg::LDB + g * BN + BN / 2 + tx * (TN / 2));
      }
#pragma unroll
      for (int g = 0; g < Cfg::G; ++g)
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[g][i][j] = fmaf(a[i], b[g][j], acc[g][i][j]);
    }
    __syncthreads();
  }
  cp_async_wait<0>();
}

// Calls f(row, col, v, u) for every accumulator of this thread (tile-local
// coordinates; u is the gated tile's "up" value, 0 otherwise).
template <class Cfg, class F>
__device__ __forceinline__ void simt_epilogue(const SimtAcc<Cfg>& acc, F&& f) {
#pragma unroll
  for (int i = 0; i < Cfg::TM; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::TN; ++j)
      f(simt_row<Cfg>(i), simt_col<Cfg>(j), acc[0][i][j], Cfg::GATED ? acc[Cfg::G - 1][i][j] : 0.f);
}

// ======================================================================================
// Shared epilogue arithmetic
// ======================================================================================

// v = act(v + bias) for plain tiles, act(gate) · up for gated ones.
template <bool GATED>
__device__ __forceinline__ float finish(float v, float u, const float* bias, int64_t col, int act) {
  if (GATED) return activate(v, act) * u;
  if (bias) v += bias[col];
  return activate(v, act);
}

// One output in the caller's dtype (a runtime switch: one kernel serves both).
__device__ __forceinline__ void store_one(void* y, int ydt, int64_t idx, float v) {
  if (ydt == SK_F32)
    static_cast<float*>(y)[idx] = v;
  else
    static_cast<bf16*>(y)[idx] = __float2bfloat16_rn(v);
}

// Stores a pair of outputs at y[row·ldy + col], (col + 1) with bounds
// (cols_valid) and the pair store only where it is aligned.
template <bool GATED>
__device__ __forceinline__ void store_pair(void* y, int ydt, int64_t ldy, int64_t row, int64_t col,
                                           int64_t cols_valid, float v0, float v1, float u0, float u1,
                                           const float* bias, int act) {
  if (col >= cols_valid) return;
  const float a = finish<GATED>(v0, u0, bias, col, act);
  const int64_t idx = row * ldy + col;
  if (col + 1 < cols_valid) {
    const float b = finish<GATED>(v1, u1, bias, col + 1, act);
    if ((idx & 1) == 0) {
      if (ydt == SK_F32)
        store2(static_cast<float*>(y), idx, a, b);
      else
        store2(static_cast<bf16*>(y), idx, a, b);
    } else {
      store_one(y, ydt, idx, a);
      store_one(y, ydt, idx + 1, b);
    }
  } else {
    store_one(y, ydt, idx, a);
  }
}

}  // namespace skc
