// The dense GEMM, written once over a vector-traits type and instantiated in
// each ISA's file (gemm_avx2.cc, ...), compiled there with that ISA's flags.
//
//   y[m, n] = act(x[m, k] · W[n, k]ᵀ + bias[n])
//
// W is packed into panels of NR rows, stored k-major: panel p holds
// W[p·NR + j, kk] at [kk·NR + j], so the micro-kernel reads NR consecutive
// floats per k. x is packed per call into panels of MR rows the same way.
// Blocking (BLIS-style): KC-deep slices keep one W micro-panel (KC·NR floats)
// in L1 while it meets every x micro-panel of an MC-row block held in L2.
// The plain product slices k KC_PLAIN deep, which the ISA's config may set
// far deeper (AVX-512: a whole 2048-deep panel slice from L2, see
// gemm_configs.h); the gated one keeps KC, its two W panels sharing L1.
// Small batches change only the walk: one row panel (decode) streams each W
// panel end to end through gemm_ukernel_stream with software prefetch; up to
// PANEL_MAJOR_ROWS rows whose x block fits L2 walk W panel by panel, KC slice
// by KC slice, so W is one contiguous stream.
//
// Every y element is one chain of FMAs over k = 0..K-1 in order, whatever the
// blocking or the thread that computes it, so results are bitwise identical for
// any thread count.
#pragma once
#include <cstdint>
#include <utility>

#include "../common/simd.h"
#include "sparsekit/memory.h"
#include "sparsekit/thread_pool.h"

namespace sparsekit {
namespace {  // internal linkage: see simd.h

SK_INLINE int64_t sk_min64(int64_t a, int64_t b) { return a < b ? a : b; }
SK_INLINE int64_t sk_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The inner loop of every micro-kernel: acc[MR][NRV] += a[kc][MR_STEP] · b[kc][NR]
// (NR = NRV·W), one FMA per element per kk, in kk order. Shared by the dense
// micro-kernel below and the block-sparse one (native/src/bsr/bsr_impl.h),
// which runs it once per kept block with b jumping to that block's columns.
template <class V, int MR, int NRV, int MR_STEP>
SK_INLINE void gemm_ukernel_steps(int64_t kc, const float* __restrict ap, const float* __restrict bp,
                                  typename V::T (&acc)[MR][NRV]) {
  using T = typename V::T;
  constexpr int NR = NRV * V::W;
#pragma GCC unroll 2
  for (int64_t kk = 0; kk < kc; ++kk) {
    T bv[NRV];
#pragma GCC unroll 8
    for (int j = 0; j < NRV; ++j) bv[j] = V::load(bp + j * V::W);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      T av = V::bcast(ap + i);
#pragma GCC unroll 8
      for (int j = 0; j < NRV; ++j) acc[i][j] = V::fma(av, bv[j], acc[i][j]);
    }
    ap += MR_STEP;
    bp += NR;
  }
}

// Micro-kernel: c[MR, NRV·W] (+)= a[kc][MR_STEP] · b[kc][NRV·W]. With PF it
// also fetches pf_lines cache lines from pf into L2 along the way (the W the
// caller's walk needs next), spread over its k steps.
template <class V, int MR, int NRV, int MR_STEP, bool PF>
SK_INLINE void gemm_ukernel_body(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                                 int64_t ldc, bool accumulate, const char* pf, int64_t pf_lines) {
  using T = typename V::T;
  T acc[MR][NRV];
  if (accumulate) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NRV; ++j) acc[i][j] = V::load(c + i * ldc + j * V::W);
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NRV; ++j) acc[i][j] = V::zero();
  }
  if constexpr (PF) {
    // One L2 prefetch (of pf_lines 64-byte lines from pf) every PF_EVERY
    // steps, between the FMAs, instead of a burst before the tile: a burst
    // fills the miss buffers and stalls the issuing core.
    constexpr int64_t PF_EVERY = 2;
    int64_t kk = 0, l = 0;
    for (; kk + PF_EVERY <= kc; kk += PF_EVERY) {
      if (l < pf_lines) __builtin_prefetch(pf + 64 * l++, 0, 2);
      gemm_ukernel_steps<V, MR, NRV, MR_STEP>(PF_EVERY, a + kk * MR_STEP, b + kk * NRV * V::W, acc);
    }
    if (kk < kc) gemm_ukernel_steps<V, MR, NRV, MR_STEP>(kc - kk, a + kk * MR_STEP, b + kk * NRV * V::W, acc);
    for (; l < pf_lines; ++l) __builtin_prefetch(pf + 64 * l, 0, 2);
  } else {
    gemm_ukernel_steps<V, MR, NRV, MR_STEP>(kc, a, b, acc);
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NRV; ++j) V::store(c + i * ldc + j * V::W, acc[i][j]);
}
template <class V, int MR, int NRV, int MR_STEP>
__attribute__((noinline)) void gemm_ukernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                                            float* __restrict c, int64_t ldc, bool accumulate) {
  gemm_ukernel_body<V, MR, NRV, MR_STEP, false>(kc, a, b, c, ldc, accumulate, nullptr, 0);
}
template <class V, int MR, int NRV, int MR_STEP>
__attribute__((noinline)) void gemm_ukernel_pf(int64_t kc, const float* __restrict a, const float* __restrict b,
                                               float* __restrict c, int64_t ldc, bool accumulate, const char* pf,
                                               int64_t pf_lines) {
  gemm_ukernel_body<V, MR, NRV, MR_STEP, true>(kc, a, b, c, ldc, accumulate, pf, pf_lines);
}

// Streaming micro-kernel for a single row panel (decode-sized m ≤ MR): c[rows,
// NRV·W] = a[k][MR_STEP] · b[k][NRV·W] over all of k in one pass. W is read
// once, straight from memory, so the loop prefetches PF floats ahead of the
// panel it reads (the hardware prefetcher alone leaves a few GB/s on the
// table). Same FMA chain per element as gemm_ukernel over KC slices, so the
// result is bitwise the same as the blocked path's.
template <class V, int ROWS, int NRV, int MR_STEP, int PF>
__attribute__((noinline)) void gemm_ukernel_stream(int64_t k, const float* __restrict a, const float* __restrict b,
                                                   float* __restrict c, int64_t ldc) {
  using T = typename V::T;
  constexpr int NR = NRV * V::W;
  T acc[ROWS][NRV];
#pragma GCC unroll 16
  for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NRV; ++j) acc[i][j] = V::zero();
  auto step = [&]() SK_INLINE_LAMBDA {
#pragma GCC unroll 8
    for (int j = 0; j < NRV; ++j) {
      T bv = V::load(b + j * V::W);
#pragma GCC unroll 16
      for (int i = 0; i < ROWS; ++i) acc[i][j] = V::fma(V::bcast(a + i), bv, acc[i][j]);
    }
    a += MR_STEP;
    b += NR;
  };
  int64_t kk = 0;
  // 64-byte lines: NR floats per kk, so one prefetch per 16/NR steps.
  constexpr int STEP = NR >= 16 ? 1 : 16 / NR;
  for (; kk + STEP <= k; kk += STEP) {
    __builtin_prefetch(b + PF, 0, 0);
#pragma GCC unroll 4
    for (int s = 0; s < STEP; ++s) step();
  }
  for (; kk < k; ++kk) step();
#pragma GCC unroll 16
  for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NRV; ++j) V::store(c + i * ldc + j * V::W, acc[i][j]);
}

// Packs rows [p0·NR, p1·NR) of a row-major [n, k] matrix into panels of NR
// rows stored k-major (panel p holds row p·NR + j, column kk at
// [p·k·NR + kk·NR + j]), zero-padding past n. The dense kernel packs W this
// way; the block-sparse kernel packs its token panels of x the same way.
template <int NR>
void pack_rows_kmajor(const float* w, int64_t n, int64_t k, int64_t p0, int64_t p1, float* out) {
  for (int64_t p = p0; p < p1; ++p) {
    float* dst = out + p * k * NR;
    int64_t rows = sk_min64(NR, n - p * NR);
    int64_t j_done = 0;
#if defined(__AVX2__)
    if constexpr (NR % 8 == 0) {
      // 8×8 register transposes over whole groups of 8 rows and 8 columns.
      j_done = rows / 8 * 8;
      const int64_t k_done = k / 8 * 8;
      for (int64_t k0 = 0; k0 < k_done; k0 += 64) {
        int64_t k1 = sk_min64(k_done, k0 + 64);
        for (int64_t j0 = 0; j0 < j_done; j0 += 8)
          for (int64_t kk = k0; kk < k1; kk += 8) sk_transpose8x8(w + (p * NR + j0) * k + kk, k, dst + kk * NR + j0, NR);
      }
      for (int64_t j = 0; j < j_done; ++j) {
        const float* src = w + (p * NR + j) * k;
        for (int64_t kk = k_done; kk < k; ++kk) dst[kk * NR + j] = src[kk];
      }
    }
#endif
    // Blocked transpose of what is left: 64 k-columns at a time keeps the
    // source rows' lines in cache.
    for (int64_t k0 = 0; k0 < k; k0 += 64) {
      int64_t k1 = sk_min64(k, k0 + 64);
      for (int64_t j = j_done; j < NR; ++j) {
        if (j < rows) {
          const float* src = w + (p * NR + j) * k;
          for (int64_t kk = k0; kk < k1; ++kk) dst[kk * NR + j] = src[kk];
        } else {
          for (int64_t kk = k0; kk < k1; ++kk) dst[kk * NR + j] = 0.f;
        }
      }
    }
  }
}

template <class Cfg>
struct Gemm {
  using V = typename Cfg::V;
  static constexpr int MR = Cfg::MR;
  static constexpr int NRV = Cfg::NRV;
  static constexpr int NR = NRV * V::W;
  static constexpr int KC = Cfg::KC;
  static constexpr int MC_MAX = Cfg::MC_MAX;  // rows of x per L2 block (multiple of MR)
  static constexpr bool kPrefetchC = Cfg::PREFETCH_C;

  using Ukernel = void (*)(int64_t, const float*, const float*, float*, int64_t, bool);

  template <int... Is>
  static const Ukernel* table(std::integer_sequence<int, Is...>) {
    static const Ukernel t[] = {&gemm_ukernel<V, Is + 1, NRV, MR>...};
    return t;
  }
  static Ukernel ukernel_for_rows(int rows) {
    return table(std::make_integer_sequence<int, MR>{})[rows - 1];
  }
  using UkernelPf = void (*)(int64_t, const float*, const float*, float*, int64_t, bool, const char*, int64_t);
  template <int... Is>
  static const UkernelPf* table_pf(std::integer_sequence<int, Is...>) {
    static const UkernelPf t[] = {&gemm_ukernel_pf<V, Is + 1, NRV, MR>...};
    return t;
  }

  using StreamKernel = void (*)(int64_t, const float*, const float*, float*, int64_t);
  static constexpr int kStreamPf = Cfg::STREAM_PF_FLOATS;
  template <int... Is>
  static const StreamKernel* stream_table(std::integer_sequence<int, Is...>) {
    static const StreamKernel t[] = {&gemm_ukernel_stream<V, Is + 1, NRV, MR, kStreamPf>...};
    return t;
  }
  static StreamKernel stream_kernel_for_rows(int rows) {
    return stream_table(std::make_integer_sequence<int, MR>{})[rows - 1];
  }
  // c[rows, cols] = a · b over all of k with the streaming kernel; a right-edge
  // panel (cols < NR) goes through the scratch tile.
  static SK_INLINE void run_stream(StreamKernel sk, int rows, int64_t cols, int64_t k, const float* a, const float* b,
                                   float* c, int64_t ldc, float* tmp) {
    if (cols == NR) {
      sk(k, a, b, c, ldc);
      return;
    }
    sk(k, a, b, tmp, NR);
    for (int i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) c[i * ldc + j] = tmp[i * NR + j];
  }
  // f(kernel, rows, a, jr, cols) for each W panel jr of columns [j0, j1), for
  // the single row panel [i0, i1) (rows ≤ MR) of packed x.
  template <class F>
  static SK_INLINE void for_each_stream_panel(int64_t k, int64_t n, const float* xp, int64_t i0, int64_t i1, int64_t j0,
                                              int64_t j1, F&& f) {
    const int rows = static_cast<int>(i1 - i0);
    StreamKernel sk = stream_kernel_for_rows(rows);
    const float* a = xp + (i0 / MR) * k * MR;
    for (int64_t jr = j0; jr < j1; jr += NR) f(sk, rows, a, jr, sk_min64(NR, n - jr));
  }

  static void pack_w(const float* w, int64_t n, int64_t k, int64_t p0, int64_t p1, float* out) {
    pack_rows_kmajor<NR>(w, n, k, p0, p1, out);
  }

  // Packs the rows row[0..rows) (each k floats) into one MR-row panel at dst,
  // zero-padding rows past `rows`.
  static void pack_panel_rows(const float* const* row, int64_t rows, int64_t k, float* dst) {
    int64_t kk = 0;
#if defined(__AVX2__)
    if constexpr (MR == 8) {
      if (rows == MR)
        for (; kk + 8 <= k; kk += 8) sk_transpose8x8_rows(row, kk, dst + kk * MR, MR);
    }
#endif
    for (int64_t i = 0; i < MR; ++i) {
      if (i < rows) {
        const float* src = row[i];
        for (int64_t c = kk; c < k; ++c) dst[c * MR + i] = src[c];
      } else {
        for (int64_t c = kk; c < k; ++c) dst[c * MR + i] = 0.f;
      }
    }
  }

  static void pack_x_panel(const float* x, int64_t m, int64_t k, int64_t panel, float* out) {
    const int64_t r0 = panel * MR, rows = sk_min64(MR, m - r0);
    const float* row[MR];
    for (int64_t i = 0; i < MR; ++i) row[i] = x + (r0 + sk_min64(i, rows - 1)) * k;
    pack_panel_rows(row, rows, k, out + panel * k * MR);
  }

  struct Plan {
    int64_t m, n, k;
    int64_t mc, nc;      // block sizes (multiples of MR, NR)
    int64_t n_mb, n_nb;  // block counts
  };

  static Plan make_plan(int64_t m, int64_t n, int64_t k, int threads) {
    Plan p{m, n, k, 0, 0, 0, 0};
    p.n_mb = sk_ceil_div(m, MC_MAX);
    p.mc = sk_ceil_div(sk_ceil_div(m, p.n_mb), MR) * MR;
    p.n_mb = sk_ceil_div(m, p.mc);
    int64_t n_panels = sk_ceil_div(n, NR);
    // Enough column blocks for load balance across threads (dynamic
    // scheduling absorbs a noisy neighbour), but blocks wide enough that each
    // x block in L2 is reused many times. The blocking never changes results.
    int64_t want = sk_ceil_div(static_cast<int64_t>(threads) * 6, p.n_mb);
    int64_t by_width = sk_ceil_div(n_panels, Cfg::NC_PANELS_MAX);
    p.n_nb = want > by_width ? want : by_width;
    if (p.n_nb > n_panels) p.n_nb = n_panels;
    if (threads == 1) p.n_nb = by_width;
    p.nc = sk_ceil_div(n_panels, p.n_nb) * NR;
    p.n_nb = sk_ceil_div(n_panels * NR, p.nc);
    return p;
  }

  // Runs the micro-kernel for one MR×NR tile of c (ldc floats per row). A
  // right-edge tile (cols < NR) goes through a scratch tile so the kernel
  // never writes past column n.
  // With pf_lines > 0 the kernel also prefetches that many lines from pf.
  static SK_INLINE void run_tile(int rows, int64_t cols, int64_t kc, const float* a, const float* b, float* c,
                                 int64_t ldc, bool acc, float* tmp, const char* pf = nullptr, int64_t pf_lines = 0) {
    auto uk = [&](float* cc, int64_t ld) {
      if (pf_lines > 0)
        table_pf(std::make_integer_sequence<int, MR>{})[rows - 1](kc, a, b, cc, ld, acc, pf, pf_lines);
      else
        ukernel_for_rows(rows)(kc, a, b, cc, ld, acc);
    };
    if (cols == NR) {
      uk(c, ldc);
      return;
    }
    if (acc)
      for (int i = 0; i < rows; ++i)
        for (int64_t j = 0; j < NR; ++j) tmp[i * NR + j] = j < cols ? c[i * ldc + j] : 0.f;
    uk(tmp, NR);
    for (int i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) c[i * ldc + j] = tmp[i * NR + j];
  }

  // Whether for_each_tile walks rows [i0, i1) KC slice by KC slice (the
  // blocked walk) rather than W panel by W panel.
  static SK_INLINE bool slice_major(int64_t k, int64_t i0, int64_t i1) {
    return i1 - i0 > MR && !(i1 - i0 <= Cfg::PANEL_MAJOR_ROWS && (i1 - i0) * k <= Cfg::PANEL_MAJOR_X_FLOATS);
  }

  // Visits the tiles of rows [i0, i1) × columns [j0, j1), all of k, in an
  // order that keeps one W micro-panel in L1 and the x block in L2.
  // tile(ir, jr, pc, kc) computes one MR×NR tile's slice pc..pc+kc.
  template <class Tile>
  static SK_INLINE void for_each_tile(int64_t k, int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t KC, Tile&& tile) {
    if (i1 - i0 <= MR) {
      // One row panel: stream each W panel through once, end to end.
      for (int64_t jr = j0; jr < j1; jr += NR)
        for (int64_t pc = 0; pc < k; pc += KC) tile(i0, jr, pc, sk_min64(KC, k - pc));
    } else if (!slice_major(k, i0, i1)) {
      // A few row panels (small batches) whose whole x block fits L2: walk
      // each W panel end to end (one contiguous stream the hardware
      // prefetcher follows) instead of jumping k·NR floats between panels
      // at every KC slice.
      for (int64_t jr = j0; jr < j1; jr += NR)
        for (int64_t pc = 0; pc < k; pc += KC) {
          int64_t kc = sk_min64(KC, k - pc);
          for (int64_t ir = i0; ir < i1; ir += MR) tile(ir, jr, pc, kc);
        }
    } else {
      for (int64_t pc = 0; pc < k; pc += KC) {
        int64_t kc = sk_min64(KC, k - pc);
        for (int64_t jr = j0; jr < j1; jr += NR)
          for (int64_t ir = i0; ir < i1; ir += MR) tile(ir, jr, pc, kc);
      }
    }
  }

  // In the blocked walks (KC slice outer, then W panel, then every row tile),
  // the W micro-panel the walk needs next is fetched into L2 a share per row
  // tile, so the first row tile on it does not wait on memory (measured ~6%
  // of a large GEMM). The row tile's micro-kernel issues its share between
  // its FMAs (gemm_ukernel_pf): issued as a burst before the tile, the
  // prefetches stalled the core on full miss buffers (perf: ~3 % of the
  // fine-grained experts' time on the prefetch instructions); spread, the
  // fine-grained experts at T = 512 ran 1.01-1.04x faster, Mixtral-shaped
  // 1.01-1.02x, a large dense linear within noise (2 threads, interleaved in
  // one process, alternating order).
  // w_share: tile ir's share of the panel slice at next, kc deep.
  struct PfShare {
    const char* p = nullptr;
    int64_t lines = 0;
  };
  static SK_INLINE PfShare w_share(const float* next, int64_t kc, int64_t i0, int64_t i1, int64_t ir) {
    const int64_t lines = kc * NR * 4 / 64, tiles = sk_ceil_div(i1 - i0, MR), t = (ir - i0) / MR;
    const int64_t l0 = t * lines / tiles, l1 = (t + 1) * lines / tiles;
    return {reinterpret_cast<const char*>(next) + l0 * 64, l1 - l0};
  }
  // The same share of the panel after (jr, pc) of packed W wp in that walk
  // over columns [j0, j1): the next panel of the slice, or the first of the next.
  static SK_INLINE PfShare next_w_share(const float* wp, int64_t k, int64_t j0, int64_t j1, int64_t jr, int64_t pc,
                                        int64_t i0, int64_t i1, int64_t ir, int64_t KC) {
    int64_t njr = jr + NR, npc = pc;
    if (njr >= j1) njr = j0, npc = pc + KC;
    if (npc >= k) return {};
    return w_share(wp + (njr / NR) * k * NR + npc * NR, sk_min64(KC, k - npc), i0, i1, ir);
  }

  // The same for the slice after (jr, pc) in a panel-by-panel walk over
  // columns [..., j1): this panel's next slice, or the next panel's first.
  static SK_INLINE PfShare next_w_panel_share(const float* wp, int64_t k, int64_t j1, int64_t jr, int64_t pc,
                                              int64_t kc, int64_t i0, int64_t i1, int64_t ir, int64_t KC) {
    int64_t njr = jr, npc = pc + kc;
    if (npc >= k) njr = jr + NR, npc = 0;
    if (njr >= j1) return {};
    return w_share(wp + (njr / NR) * k * NR + npc * NR, sk_min64(KC, k - npc), i0, i1, ir);
  }

  // One task: rows [i0, i1) × columns [j0, j1) of y = act(x·Wᵀ + bias), all of k.
  // xp: x packed in MR-row panels (panel 0 = row 0); wp: W packed by pack_w.
  static void block(int64_t k, int64_t n, const float* xp, const float* wp, const float* bias, Activation act,
                    float* y, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    alignas(64) float tmp[MR * NR];
    if (i1 - i0 <= MR && kStreamPf > 0) {
      // One row panel (decode): stream each W panel once, end to end.
      for_each_stream_panel(k, n, xp, i0, i1, j0, j1, [&](StreamKernel sk, int rows, const float* a, int64_t jr, int64_t cols) {
        float* c = y + i0 * n + jr;
        run_stream(sk, rows, cols, k, a, wp + (jr / NR) * k * NR, c, n, tmp);
        if (bias || act != Activation::kNone)
          for (int i = 0; i < rows; ++i) sk_epilogue_row(c + i * n, bias ? bias + jr : nullptr, cols, act);
      });
      return;
    }
    constexpr int64_t KCP = Cfg::KC_PLAIN;
    for_each_tile(k, i0, i1, j0, j1, KCP, [&](int64_t ir, int64_t jr, int64_t pc, int64_t kc) {
      int rows = static_cast<int>(sk_min64(MR, i1 - ir));
      int64_t cols = sk_min64(NR, n - jr);
      float* c = y + ir * n + jr;
      if (kPrefetchC && pc > 0 && ir + MR < i1) {
        // The next tile down reloads its partial sums: start fetching them.
        const float* cn = c + MR * n;
        for (int i = 0; i < MR; ++i) {
          __builtin_prefetch(cn + i * n, 1, 3);
          __builtin_prefetch(cn + i * n + NR - 1, 1, 3);
        }
      }
      PfShare pf;
      // The W slice the walk needs next, a share per row tile. (In the
      // panel-by-panel walk, issued as a burst before each tile this measured
      // slower on small dense batches; spread by the micro-kernel, fine-grained
      // experts' down projection (48-row groups) ran 1.03-1.08x faster, their
      // gate/up as one plain product 1.05-1.07x, a 32×4096×4096 linear
      // 1.06-1.09x; 2 threads, interleaved.)
      if (slice_major(k, i0, i1))
        pf = next_w_share(wp, k, j0, j1, jr, pc, i0, i1, ir, KCP);
      else if (i1 - i0 > MR)
        pf = next_w_panel_share(wp, k, j1, jr, pc, kc, i0, i1, ir, KCP);
      run_tile(rows, cols, kc, xp + (ir / MR) * k * MR + pc * MR, wp + (jr / NR) * k * NR + pc * NR, c, n, pc > 0, tmp,
               pf.p, pf.lines);
      if (pc + kc >= k && (bias || act != Activation::kNone))
        for (int i = 0; i < rows; ++i) sk_epilogue_row(c + i * n, bias ? bias + jr : nullptr, cols, act);
    });
  }

  // Gated block: h = act(x·W1ᵀ) ⊙ (x·W3ᵀ) for rows [i0, i1) × columns [j0, j1).
  // Both products share each x micro-panel while it is in L1; the W1 product
  // accumulates in h itself and the W3 product in `gate_scratch`, which holds
  // only this block's (i1−i0)×(j1−j0) partial sums, never a full intermediate.
  static void block_gated(int64_t k, int64_t n, const float* xp, const float* w1p, const float* w3p, Activation act,
                          float* h, float* gate_scratch, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    alignas(64) float tmp[MR * NR];
    const int64_t ls = j1 - j0;
    if (i1 - i0 <= MR && kStreamPf > 0) {
      // One row panel (decode): stream each W1 and W3 panel once, end to end.
      for_each_stream_panel(k, n, xp, i0, i1, j0, j1, [&](StreamKernel sk, int rows, const float* a, int64_t jr, int64_t cols) {
        int64_t boff = (jr / NR) * k * NR;
        float* c1 = h + i0 * n + jr;
        float* c3 = gate_scratch + (jr - j0);
        run_stream(sk, rows, cols, k, a, w1p + boff, c1, n, tmp);
        run_stream(sk, rows, cols, k, a, w3p + boff, c3, ls, tmp);
        for (int i = 0; i < rows; ++i) sk_gate_row(c1 + i * n, c3 + i * ls, cols, act);
      });
      return;
    }
    // Per KC slice and column panel: every row tile against the W1 micro-panel,
    // then every row tile against the W3 one, so one KC·NR panel at a time sits
    // in L1 (the two together would fill it: measured ~11% slower than two
    // plain GEMMs when the tiles alternated between them).
    const bool blocked = slice_major(k, i0, i1);
    auto step = [&](int64_t pc, int64_t jr) {
      const int64_t kc = sk_min64(KC, k - pc);
      const int64_t cols = sk_min64(NR, n - jr);
      const int64_t boff = (jr / NR) * k * NR + pc * NR;
      for (int pass = 0; pass < 2; ++pass)
        for (int64_t ir = i0; ir < i1; ir += MR) {
          int rows = static_cast<int>(sk_min64(MR, i1 - ir));
          const float* a = xp + (ir / MR) * k * MR + pc * MR;
          // Next in the walk: this panel's W3 slice, then the next W1 slice.
          // (Without them the panel-by-panel walk below measured 7–10 % slower.)
          // The kernel spreads these prefetches between its FMAs.
          const PfShare pf = pass == 0 ? w_share(w3p + boff, kc, i0, i1, ir)
                             : blocked ? next_w_share(w1p, k, j0, j1, jr, pc, i0, i1, ir, KC)
                                       : next_w_panel_share(w1p, k, j1, jr, pc, kc, i0, i1, ir, KC);
          if (pass == 0)
            run_tile(rows, cols, kc, a, w1p + boff, h + ir * n + jr, n, pc > 0, tmp, pf.p, pf.lines);
          else
            run_tile(rows, cols, kc, a, w3p + boff, gate_scratch + (ir - i0) * ls + (jr - j0), ls, pc > 0, tmp, pf.p,
                     pf.lines);
        }
      if (pc + kc >= k)
        for (int64_t r = i0; r < i1; ++r) sk_gate_row(h + r * n + jr, gate_scratch + (r - i0) * ls + (jr - j0), cols, act);
    };
    if (blocked) {
      for (int64_t pc = 0; pc < k; pc += KC)
        for (int64_t jr = j0; jr < j1; jr += NR) step(pc, jr);
    } else {
      // A few row panels whose x block fits L2 (fine-grained experts: ~48
      // rows): walk the W1 and W3 panels end to end, as for_each_tile does
      // for the plain product. Fine-grained experts (d 2048, ffn 1408, 64
      // experts, top-6) at T = 512, 2 threads: the gated product 1.05–1.08x,
      // expertsForward 1.03–1.05x.
      for (int64_t jr = j0; jr < j1; jr += NR)
        for (int64_t pc = 0; pc < k; pc += KC) step(pc, jr);
    }
  }

  // Packs rows [r0, r0 + rows) of x into consecutive MR-row panels at out.
  static void pack_rows(const float* x, int64_t rows, int64_t k, float* out, ThreadPool& pool) {
    pool.parallel_for(sk_ceil_div(rows, MR), [&](int64_t p, int) { pack_x_panel(x, rows, k, p, out); });
  }

  // Grouped GEMM over experts: for each expert e, rows offsets[e]..offsets[e+1]
  // of xs times W_eᵀ (+ bias_e), or the gated product when w3p is set. One
  // task list spans every expert's blocks (no per-expert barrier; empty
  // experts add no tasks).
  //   wp/w3p: E packed weights of w_stride floats each; bias: [E, n] or null.
  //   workspace: packed_x floats for Σ_e ceil(rows_e / MR)·MR·k.
  static void grouped_gemm(const float* xs, const int32_t* src_rows, const int32_t* offsets, int64_t n_experts, int64_t k,
                           const float* wp,
                           const float* w3p, int64_t w_stride, int64_t n, const float* bias, Activation act,
                           float* y, float* workspace) {
    ThreadPool& pool = ThreadPool::instance();
    int threads = pool.num_threads();
    // Per expert: first packed panel and first task.
    LocalArray<int64_t> panel_base(n_experts + 1), task_base(n_experts + 1);
    LocalArray<Plan> plans(n_experts);
    panel_base[0] = task_base[0] = 0;
    for (int64_t e = 0; e < n_experts; ++e) {
      int64_t rows = offsets[e + 1] - offsets[e];
      panel_base[e + 1] = panel_base[e] + sk_ceil_div(rows, MR);
      int64_t tasks = 0;
      if (rows > 0 && k > 0) {
        plans[e] = make_plan(rows, n, k, threads);
        tasks = plans[e].n_mb * plans[e].n_nb;
      }
      task_base[e + 1] = task_base[e] + tasks;
    }
    if (k == 0) {
      // Empty reduction: every row is act(bias_e) (or act(0)·0 when gated).
      for (int64_t e = 0; e < n_experts; ++e)
        for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
          for (int64_t j = 0; j < n; ++j) y[r * n + j] = 0.f;
          if (!w3p) sk_epilogue_row(y + r * n, bias ? bias + e * n : nullptr, n, act);
        }
      return;
    }
    pool.parallel_for(panel_base[n_experts], [&](int64_t p, int) {
      int64_t e = sk_owner(panel_base.p, n_experts, p);
      const int64_t rows = offsets[e + 1] - offsets[e], lp = p - panel_base[e];
      const int64_t r0 = offsets[e] + lp * MR, pr = sk_min64(MR, rows - lp * MR);
      const float* row[MR];
      for (int64_t i = 0; i < MR; ++i) {
        const int64_t r = r0 + sk_min64(i, pr - 1);
        row[i] = xs + (src_rows ? static_cast<int64_t>(src_rows[r]) : r) * k;
      }
      pack_panel_rows(row, pr, k, workspace + p * k * MR);
    });
    pool.parallel_for(task_base[n_experts], [&](int64_t t, int) {
      int64_t e = sk_owner(task_base.p, n_experts, t);
      const Plan& pl = plans[e];
      int64_t lt = t - task_base[e];
      int64_t rows = offsets[e + 1] - offsets[e];
      int64_t ib = lt / pl.n_nb, jb = lt % pl.n_nb;
      int64_t i0 = ib * pl.mc, i1 = sk_min64(rows, i0 + pl.mc);
      int64_t j0 = jb * pl.nc, j1 = sk_min64(n, j0 + pl.nc);
      const float* xp = workspace + panel_base[e] * k * MR;
      float* ye = y + static_cast<int64_t>(offsets[e]) * n;
      if (w3p) {
        float* scratch = thread_workspace(static_cast<size_t>((i1 - i0) * (j1 - j0)), 2);
        block_gated(k, n, xp, wp + e * w_stride, w3p + e * w_stride, act, ye, scratch, i0, i1, j0, j1);
      } else {
        block(k, n, xp, wp + e * w_stride, bias ? bias + e * n : nullptr, act, ye, i0, i1, j0, j1);
      }
    });
  }

  static void gemm(const float* x, int64_t m, int64_t k, const float* wp, int64_t n, const float* bias,
                   Activation act, float* y, float* workspace) {
    ThreadPool& pool = ThreadPool::instance();
    int threads = pool.num_threads();
    int64_t x_panels = sk_ceil_div(m, MR);
    if (k == 0) {
      // Empty reduction: y = act(bias).
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) y[i * n + j] = 0.f;
        sk_epilogue_row(y + i * n, bias, n, act);
      }
      return;
    }
    pool.parallel_for(x_panels, [&](int64_t p, int) { pack_x_panel(x, m, k, p, workspace); });
    Plan pl = make_plan(m, n, k, threads);
    pool.parallel_for(pl.n_mb * pl.n_nb, [&](int64_t t, int) {
      int64_t ib = t / pl.n_nb, jb = t % pl.n_nb;
      int64_t i0 = ib * pl.mc, i1 = sk_min64(m, i0 + pl.mc);
      int64_t j0 = jb * pl.nc, j1 = sk_min64(n, j0 + pl.nc);
      block(k, n, workspace, wp, bias, act, y, i0, i1, j0, j1);
    });
  }
};

}  // namespace
}  // namespace sparsekit
