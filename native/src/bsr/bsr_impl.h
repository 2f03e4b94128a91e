// Block-sparse kernels, written once over a vector-traits type and
// instantiated in each ISA's file (bsr_avx2.cc, ...), compiled there with that
// ISA's flags.
//
// bsr_linear: y = act(x · Wᵀ + b), W [n, k] block-sparse.
//   "Weight-broadcast, token-vectorised": the kernel computes tiles of yᵀ.
//   W's kept values play the role of the dense kernel's A operand (one
//   broadcast per row per k step), x plays B: it is packed per call into token
//   panels [k][NR] (NR = NRV·W tokens, the dense kernel's pack of W applied to
//   x), read with vector loads. A micro-tile is a group of ≤ RMAX rows of one
//   block row × NR tokens; it walks that block row's kept blocks, and for each
//   runs bc k steps of the dense micro-kernel's inner loop with the B pointer
//   at x_panel + colIdx·bc·NR. All blocks of the group accumulate in
//   registers, so every y element is one fixed sequence of FMAs over the kept
//   blocks in order: the result does not depend on the thread count.
//   Groups short enough that R·NRV < 8 accumulators would be FMA-latency bound
//   split the k steps round-robin over SPLIT accumulator sets (k step kk of
//   every block goes to set kk mod SPLIT), summed in a fixed order at the end.
//
// bsr_sddmm: out = (a · bᵀ) on the kept blocks of a mask.
//   a is packed once into the dense kernel's MR-row panels. Each task takes a
//   batch of kept blocks of one block row, gathers the rows of b its blocks
//   need into NR panels (KC-deep slices, so a panel slice sits in L1), and
//   runs the dense micro-kernel on [block-row rows × gathered columns] into a
//   scratch tile that is then written out block by block. Gathering costs one
//   copy of a b element per 2·br flops, so it is cheap for every block height
//   and wastes no work on blocks narrower than NR.
#pragma once
#include <atomic>
#include <cstdint>
#include <new>
#include <utility>

#include "../dense/gemm_impl.h"
#include "sparsekit/bsr.h"
#include "sparsekit/memory.h"
#include "sparsekit/thread_pool.h"

// Nothing here constructs a Status, a std:: container or any other type whose
// inline members have external linkage: compiled with this file's -m flags,
// such a member could become the copy the linker keeps for every file (see
// simd.h). Entry points return the plain codes of bsr.h instead.

namespace sparsekit {
namespace {  // internal linkage: see simd.h

// A heap array that reports allocation failure as a null data().
template <class T>
struct ScratchArray {
  explicit ScratchArray(int64_t n) { reset(n); }
  ~ScratchArray() { delete[] p; }
  ScratchArray(const ScratchArray&) = delete;
  ScratchArray& operator=(const ScratchArray&) = delete;
  void reset(int64_t n) {
    delete[] p;
    p = new (std::nothrow) T[n > 0 ? n : 1];
  }
  T* data() { return p; }
  T* p = nullptr;
};

// Row groups of a block row (see BsrPackedView).
struct Groups {
  int count, base, extra;
  int rows(int g) const { return base + (g < extra ? 1 : 0); }
  int first_row(int g) const { return g * base + (g < extra ? g : extra); }
};

constexpr int bsr_split_for(int accumulators) {
  // 8 independent FMA chains cover 4 cycles of latency × 2 FMA pipes.
  return accumulators >= 8 ? 1 : accumulators >= 4 ? 2 : accumulators >= 3 ? 3 : 4;
}

// c[ROWS][NR] (+)= Σ over the given kept blocks of a_block[bc][ROWS]ᵀ · x_panel[cols·bc .. +bc][NR].
// With `accumulate`, c's current values start the sums (the previous K slice's).
template <class V, int ROWS, int NRV, int BC, int SPLIT>
__attribute__((noinline)) void bsr_ukernel(int64_t nblocks, const int32_t* __restrict cols, const float* __restrict a,
                                           const float* __restrict xp, int64_t bc_rt, float* __restrict c,
                                           bool accumulate) {
  using T = typename V::T;
  constexpr int NR = NRV * V::W;
  const int64_t bc = BC > 0 ? BC : bc_rt;
  const int64_t b_stride = bc * NR;
  T acc[SPLIT][ROWS][NRV];
#pragma GCC unroll 4
  for (int s = 0; s < SPLIT; ++s)
#pragma GCC unroll 16
    for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NRV; ++j) acc[s][i][j] = s == 0 && accumulate ? V::load(c + i * NR + j * V::W) : V::zero();
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const float* b = xp + static_cast<int64_t>(cols[blk]) * b_stride;
    if constexpr (SPLIT == 1) {
      gemm_ukernel_steps<V, ROWS, NRV, ROWS>(bc, a, b, acc[0]);
    } else {
      int64_t kk = 0;
      for (; kk + SPLIT <= bc; kk += SPLIT) {
#pragma GCC unroll 4
        for (int s = 0; s < SPLIT; ++s)
          gemm_ukernel_steps<V, ROWS, NRV, ROWS>(1, a + (kk + s) * ROWS, b + (kk + s) * NR, acc[s]);
      }
      for (int s = 0; s < SPLIT && kk < bc; ++kk, ++s) gemm_ukernel_steps<V, ROWS, NRV, ROWS>(1, a + kk * ROWS, b + kk * NR, acc[s]);
    }
    a += bc * ROWS;
  }
  if constexpr (SPLIT > 1) {
    // Fixed-order combination; x·1 + y is an exactly rounded add (the traits have no add).
    static const float kOne = 1.0f;
    const T one = V::bcast(&kOne);
#pragma GCC unroll 4
    for (int s = 1; s < SPLIT; ++s)
#pragma GCC unroll 16
      for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NRV; ++j) acc[0][i][j] = V::fma(acc[s][i][j], one, acc[0][i][j]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NRV; ++j) V::store(c + i * NR + j * V::W, acc[0][i][j]);
}

// dst[kk·NR + j] = rows[j][kk] for kk < kc, j < NR (rows[j] null → zeros):
// one KC-deep slice of an NR panel gathered from arbitrary rows.
template <int NR>
void gather_panel(const float* const* rows, int64_t kc, float* __restrict dst) {
  int64_t j0 = 0;
#if defined(__AVX2__)
  if constexpr (NR % 8 == 0) {
    for (; j0 < NR; j0 += 8) {
      bool full = true;
      for (int j = 0; j < 8; ++j) full = full && rows[j0 + j] != nullptr;
      if (!full) break;
      int64_t kk = 0;
      for (; kk + 8 <= kc; kk += 8) sk_transpose8x8_rows(rows + j0, kk, dst + kk * NR + j0, NR);
      for (; kk < kc; ++kk)
        for (int j = 0; j < 8; ++j) dst[kk * NR + j0 + j] = rows[j0 + j][kk];
    }
  }
#endif
  for (int64_t j = j0; j < NR; ++j) {
    if (rows[j]) {
      for (int64_t kk = 0; kk < kc; ++kk) dst[kk * NR + j] = rows[j][kk];
    } else {
      for (int64_t kk = 0; kk < kc; ++kk) dst[kk * NR + j] = 0.f;
    }
  }
}

// Cfg: V (vector traits); Dense (the dense GEMM's tile config, for sddmm);
// kRmax: most rows of a group (W is packed for it); kNrv[3]: token-vector
// counts a micro-tile may use, with kNrvRows[3] the most rows each fits in
// registers (option 0 must fit kRmax); kPanelBytes: largest x panel
// (k·NR floats) that stays in L2 (options past the first are skipped above it).
template <class Cfg>
struct BsrImpl {
  using V = typename Cfg::V;
  static constexpr int W = V::W;
  static constexpr int RMAX = Cfg::kRmax;
  static_assert(Cfg::kNrvRows[0] >= Cfg::kRmax, "option 0 must fit the packed group height");
  static constexpr int NR_MAX = (Cfg::kNrv[0] > Cfg::kNrv[1] ? (Cfg::kNrv[0] > Cfg::kNrv[2] ? Cfg::kNrv[0] : Cfg::kNrv[2])
                                                            : (Cfg::kNrv[1] > Cfg::kNrv[2] ? Cfg::kNrv[1] : Cfg::kNrv[2])) *
                                W;
  static constexpr int64_t kRun = 64;         // rows of y staged per write-out
  static constexpr int64_t kTileFloats = 64;  // tokens staged per task (tiles × NR), ≥ NR_MAX
  static constexpr int64_t kWCachedBytes = int64_t{8} << 20;  // kept W that stays in the LLC between tiles
  static constexpr int64_t kMaxGroupTiles = 8;                // token tiles a grouped task takes at most
  using Ukernel = void (*)(int64_t, const int32_t*, const float*, const float*, int64_t, float*, bool);
  using PackFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, float*);
  static_assert(kTileFloats >= NR_MAX, "the stage holds at least one tile of the widest option");

  template <int NRV, int BC, int... Rs>
  static Ukernel pick_rows(int rows, std::integer_sequence<int, Rs...>) {
    static const Ukernel t[] = {&bsr_ukernel<V, Rs + 1, NRV, BC, bsr_split_for((Rs + 1) * NRV)>...};
    return t[rows - 1];
  }
  // Block widths of the tuned shapes (1×16, 4×1, 8×8, 16×16, 32×32, 64×64)
  // get their k loop at compile time; any other width runs the same code with
  // a run-time count.
  template <int NRV, int ROWS_MAX>
  static Ukernel pick_bc(int64_t bc, int rows) {
    using Seq = std::make_integer_sequence<int, ROWS_MAX>;
    switch (bc) {
      case 1: return pick_rows<NRV, 1>(rows, Seq{});
      case 8: return pick_rows<NRV, 8>(rows, Seq{});
      case 16: return pick_rows<NRV, 16>(rows, Seq{});
      case 32: return pick_rows<NRV, 32>(rows, Seq{});
      case 64: return pick_rows<NRV, 64>(rows, Seq{});
      default: return pick_rows<NRV, 0>(rows, Seq{});
    }
  }
  static Ukernel ukernel(int opt, int64_t bc, int rows) {
    switch (opt) {
      case 0: return pick_bc<Cfg::kNrv[0], Cfg::kNrvRows[0]>(bc, rows);
      case 1: return pick_bc<Cfg::kNrv[1], Cfg::kNrvRows[1]>(bc, rows);
      default: return pick_bc<Cfg::kNrv[2], Cfg::kNrvRows[2]>(bc, rows);
    }
  }
  static PackFn pack_x(int opt) {
    switch (opt) {
      case 0: return &pack_rows_kmajor<Cfg::kNrv[0] * W>;
      case 1: return &pack_rows_kmajor<Cfg::kNrv[1] * W>;
      default: return &pack_rows_kmajor<Cfg::kNrv[2] * W>;
    }
  }

  // Token-vector count for m tokens and groups of `rows` rows: fewest modelled
  // cycles, where one k step of an R×NRV tile costs max(R·NRV FMAs / 2 pipes,
  // (NRV loads + R broadcasts) / 2 load ports) and padding tokens count as work.
  static int choose_option(int64_t m, int64_t k, int rows) {
    int best = 0;
    double best_cost = 0;
    for (int o = 0; o < 3; ++o) {
      if (Cfg::kNrvRows[o] < rows) continue;
      const int nrv = Cfg::kNrv[o];
      const int64_t nr = static_cast<int64_t>(nrv) * W;
      if (o > 0 && k * nr * 4 > Cfg::kPanelBytes) continue;
      double fma = rows * nrv / 2.0, ld = (nrv + rows) / 2.0;
      double cost = static_cast<double>(sk_ceil_div(m, nr)) * (fma > ld ? fma : ld);
      if (o == 0 || cost < best_cost * (1 - 1e-9)) {
        best = o;
        best_cost = cost;
      }
    }
    return best;
  }

  static int linear(const float* x, int64_t m, const BsrPackedView& w, const float* bias, Activation act, float* y) {
    const int64_t n = w.rows, k = w.cols, br = w.br, bc = w.bc;
    const int64_t nbr = n / br;
    ThreadPool& pool = ThreadPool::instance();
    const int threads = pool.num_threads();
    if (w.max_group_rows != RMAX) return kBsrWrongPacking;
    const Groups gs{w.groups, w.group_base, w.group_extra};
    const int opt = choose_option(m, k, gs.rows(0));
    const int64_t nr = static_cast<int64_t>(Cfg::kNrv[opt]) * W;
    const int64_t tiles = sk_ceil_div(m, nr);

    const PackFn pack = pack_x(opt);

    Ukernel uks[RMAX];
    for (int r = 1; r <= RMAX && r <= gs.rows(0); ++r) uks[r - 1] = ukernel(opt, bc, r);

    // Reuse of W: when the kept values are too many to stay in the last-level
    // cache between token tiles, a task computes up to `tg` token tiles for
    // the same rows, K slice by K slice, so a group's kept values for a slice
    // come from memory once and from L1 for the other tiles, while the tiles'
    // x panel slices (tg · slice · NR floats) stay in L2. While W fits in
    // cache, re-reading it per tile is cheaper than the extra micro-kernel
    // calls and the larger x working set (measured on Zen 3 at 5–10 % of
    // 4096², where grouping lost 5–20 %; at 25–50 % it gained 10–20 %).
    // Slices end at fixed block columns (from k, the density and the tile
    // shape only), so the result does not depend on the thread count.
    const bool w_cached = w.nnz * br * bc * 4 <= kWCachedBytes;
    const int64_t tg = w_cached ? 1 : sk_min64(tiles, kTileFloats / nr);
    const int64_t tile_groups = sk_ceil_div(tiles, tg);
    const int64_t nbc = k / bc;
    int64_t slice_blocks = nbc;
    if (tg > 1) {
      slice_blocks = Cfg::kPanelBytes / (tg * nr * 4) / bc;
      // ...but not so thin that a group has only a few kept blocks per slice
      // (each slice costs a micro-kernel call per group and tile).
      const double density = static_cast<double>(w.nnz) / (static_cast<double>(nbr) * static_cast<double>(nbc));
      const double min_blocks = density > 0 ? 16.0 / density : static_cast<double>(nbc);
      if (static_cast<double>(slice_blocks) < min_blocks)
        slice_blocks = min_blocks >= static_cast<double>(nbc) ? nbc : static_cast<int64_t>(min_blocks);
      if (slice_blocks < 1) slice_blocks = 1;
      if (slice_blocks > nbc) slice_blocks = nbc;
    }
    const int64_t slices = sk_ceil_div(nbc, slice_blocks);

    // Row groups in row order, cut into chunks of about equal work (kept
    // k steps × rows, plus the store). Any cut gives the same bits.
    const int64_t groups = nbr * gs.count;
    // With enough token tiles for every thread, a task is a whole tile group
    // over all rows and packs its own x panels just before use (they stay in
    // L2, and no separate packing pass is needed). With few tiles (decode),
    // tasks also split the rows, and x is packed first for all of them.
    const bool own_panels = tile_groups >= 4 * static_cast<int64_t>(threads);
    int64_t chunks = threads > 1 && !own_panels ? sk_ceil_div(static_cast<int64_t>(threads) * 8, tile_groups) : 1;
    if (chunks > groups) chunks = groups;
    if (chunks < 1) chunks = 1;
    float* xp = nullptr;
    if (!own_panels) {
      xp = thread_workspace(static_cast<size_t>(tiles * nr * k), 0);
      if (!xp) return kBsrOutOfMemory;
      pool.parallel_for(tiles, [&](int64_t t, int) { pack(x, m, k, t, t + 1, xp); });
    }
    std::atomic<bool> oom{false};
    ScratchArray<int64_t> bounds(chunks + 1);
    if (!bounds.data()) return kBsrOutOfMemory;
    {
      auto work = [&](int64_t R, int g) {
        return (static_cast<int64_t>(w.row_ptr[R + 1] - w.row_ptr[R]) * bc + 4) * gs.rows(g);
      };
      int64_t total = 0;
      for (int64_t R = 0; R < nbr; ++R)
        for (int g = 0; g < gs.count; ++g) total += work(R, g);
      bounds.data()[0] = 0;
      int64_t acc = 0, gi = 0, c = 1;
      for (int64_t R = 0; R < nbr && c < chunks; ++R)
        for (int g = 0; g < gs.count && c < chunks; ++g) {
          acc += work(R, g);
          ++gi;
          while (c < chunks && acc * chunks >= total * c) bounds.data()[c++] = gi;
        }
      while (c < chunks) bounds.data()[c++] = groups;
      bounds.data()[chunks] = groups;
    }
    const int64_t* bnd = bounds.data();

    pool.parallel_for(tile_groups * chunks, [&](int64_t task, int) {
      const int64_t tgi = task / chunks, chunk = task % chunks;
      const int64_t g0 = bnd[chunk], g1 = bnd[chunk + 1];
      if (g0 >= g1) return;
      const int64_t tile0 = tgi * tg, ntiles = sk_min64(tg, tiles - tile0);
      const float* panels = nullptr;  // x panels of tiles tile0 .. tile0 + ntiles - 1
      if (own_panels) {
        // Each thread's own slot-2 buffer (this runs on pool threads).
        float* buf = thread_workspace(static_cast<size_t>(tg * nr * k), 2);
        if (!buf) {
          oom = true;
          return;
        }
        pack(x + tile0 * nr * k, m - tile0 * nr, k, 0, ntiles, buf);
        panels = buf;
      } else {
        panels = xp + tile0 * k * nr;
      }
      // yᵀ of a run of consecutive rows, per tile, is staged here, then
      // written to y token by token as contiguous row segments. Writing each
      // micro-tile straight to y would touch tv lines n floats apart per group,
      // a few floats each: with n a multiple of 1024 they all fall into one L1
      // set and every partial line write misses.
      alignas(64) float stage[kTileFloats * (kRun + RMAX)];
      const int64_t stage_stride = (kRun + RMAX) * nr;  // floats per tile
      int64_t cursor[kRun];                               // per group of the run: next block
      for (int64_t ga = g0; ga < g1;) {
        // The run: groups [ga, gb) with at most kRun rows in all.
        int64_t gb = ga, run_rows = 0;
        while (gb < g1 && run_rows + gs.rows(static_cast<int>(gb % gs.count)) <= kRun) {
          run_rows += gs.rows(static_cast<int>(gb % gs.count));
          ++gb;
        }
        const int64_t run0 = (ga / gs.count) * br + gs.first_row(static_cast<int>(ga % gs.count));
        for (int64_t gi = ga; gi < gb; ++gi) cursor[gi - ga] = w.row_ptr[gi / gs.count];
        for (int64_t sl = 0; sl < slices; ++sl) {
          const int32_t col_end = static_cast<int32_t>(sk_min64(nbc, (sl + 1) * slice_blocks));
          int64_t off = 0;  // row offset of the group in the run
          for (int64_t gi = ga; gi < gb; ++gi) {
            const int64_t R = gi / gs.count;
            const int g = static_cast<int>(gi % gs.count);
            const int rows = gs.rows(g);
            const int64_t p0 = w.row_ptr[R], p1 = w.row_ptr[R + 1];
            const int64_t lo = cursor[gi - ga];
            int64_t hi = lo;
            while (hi < p1 && w.col_idx[hi] < col_end) ++hi;
            cursor[gi - ga] = hi;
            if (hi == lo && sl > 0) {  // nothing kept in this slice: the sums stand
              off += rows;
              continue;
            }
            const float* a = w.packed + p0 * br * bc + gs.first_row(g) * (p1 - p0) * bc + (lo - p0) * bc * rows;
            for (int64_t t = 0; t < ntiles; ++t)
              uks[rows - 1](hi - lo, w.col_idx + lo, a, panels + t * k * nr, bc, stage + t * stage_stride + off * nr,
                            sl > 0);
            off += rows;
          }
        }
        for (int64_t t = 0; t < ntiles; ++t) {
          const int64_t t0 = (tile0 + t) * nr;
          const int64_t tv = sk_min64(nr, m - t0);  // valid tokens in the tile
          float* yr = y + t0 * n + run0;
          sk_write_transposed(stage + t * stage_stride, nr, run_rows, tv, yr, n);
          if (bias || act != Activation::kNone)
            for (int64_t q = 0; q < tv; ++q) sk_epilogue_row(yr + q * n, bias ? bias + run0 : nullptr, run_rows, act);
        }
        ga = gb;
      }
    });
    return oom ? kBsrOutOfMemory : kBsrOk;
  }

  // Grouped over experts: for each expert e, rows offsets[e] .. offsets[e+1]
  // of xs times ws[e]ᵀ, one task per (expert, token tile) in one task list (no
  // per-expert barrier; empty experts add no tasks). A task packs its tile's
  // x panel and walks every row group of its expert's W over all of k, as
  // linear() does with one K slice, so each y element is the same FMA chain.
  // gate_rows = 0: y [Σ rows, out] = act(xs·Wᵀ). gate_rows > 0 (a multiple
  // of br): each W stacks gate rows [0, gate_rows) over up rows, and
  // y [Σ rows, gate_rows] = act(gate) ⊙ up: each run of gate rows is
  // followed by the same run of up rows, and the two stages are gated
  // together before the result goes to y. Every W has the same shape,
  // block shape and packing.
  static int grouped_linear(const BsrPackedView* ws, int64_t experts, const int32_t* offsets, const float* xs,
                            int64_t gate_rows, Activation act, float* y) {
    const BsrPackedView& w0 = ws[0];
    const int64_t n = w0.rows, k = w0.cols, br = w0.br, bc = w0.bc, nbr = n / br;
    const int64_t out = gate_rows > 0 ? gate_rows : n, gate_br = gate_rows > 0 ? gate_rows / br : nbr;
    if (w0.max_group_rows != RMAX) return kBsrWrongPacking;
    const Groups gs{w0.groups, w0.group_base, w0.group_extra};
    int64_t total = 0, busy = 0;
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t r = offsets[e + 1] - offsets[e];
      total += r, busy += r > 0;
    }
    if (total == 0) return kBsrOk;
    const int opt = choose_option(sk_ceil_div(total, busy), k, gs.rows(0));
    const int64_t nr_main = static_cast<int64_t>(Cfg::kNrv[opt]) * W;
    // An expert's last tile, when its tokens fit a narrower tile, takes the
    // narrowest option instead: routed groups are uneven (116–138 tokens
    // each at Mixtral's T = 512), and full-width last tiles padded them by
    // ~15 % at 32 tokens a tile (measured on Zen 5, 2 threads, those group
    // sizes, 25 %-dense 32×32 experts: gate/up 1.05–1.08× faster, down
    // 1.00–1.03×).
    int opt_tail = opt;
    for (int o = 0; o < 3; ++o)
      if (Cfg::kNrvRows[o] >= gs.rows(0) && Cfg::kNrv[o] < Cfg::kNrv[opt_tail]) opt_tail = o;
    const int64_t nr_tail = static_cast<int64_t>(Cfg::kNrv[opt_tail]) * W;
    Ukernel uks_main[RMAX], uks_tail[RMAX];
    for (int r = 1; r <= RMAX && r <= gs.rows(0); ++r) uks_main[r - 1] = ukernel(opt, bc, r), uks_tail[r - 1] = ukernel(opt_tail, bc, r);
    // A task takes up to `tg` token tiles of one expert and walks W once for
    // all of them: each run of rows goes over every tile while that run's
    // kept blocks are in cache. One tile per task re-read each expert's W
    // (megabytes, past the LLC) from memory once per tile: Mixtral-shaped
    // gate/up at T = 512 (4 tiles an expert) took 1.35x the time per token
    // of one expert with all 1024 tokens, whose W stays in the LLC. The
    // tiles' x panels (tg · nr · k floats) stay in L2; enough tasks remain
    // for the pool (about 4 per thread). Tiles are computed as before, so
    // the result is the same bits. Mixtral-shaped 25 %-dense 32×32 experts,
    // sparseExpertsForward, 2 threads, interleaved: T = 512 1.16-1.19x,
    // T = 32, 128 and 2048 1.01-1.03x.
    int64_t tiles_all = 0;
    for (int64_t e = 0; e < experts; ++e) tiles_all += sk_ceil_div(offsets[e + 1] - offsets[e], nr_main);
    const int threads = ThreadPool::instance().num_threads();
    int64_t tg = sk_min64(kMaxGroupTiles, Cfg::kPanelBytes / (nr_main * (k > 0 ? k : 1) * 4));
    tg = sk_min64(tg, sk_ceil_div(tiles_all, 4 * static_cast<int64_t>(threads)));
    if (tg < 1) tg = 1;
    ScratchArray<int64_t> task_base(experts + 1);
    if (!task_base.data()) return kBsrOutOfMemory;
    int64_t* tb = task_base.data();
    tb[0] = 0;
    for (int64_t e = 0; e < experts; ++e) tb[e + 1] = tb[e] + sk_ceil_div(sk_ceil_div(offsets[e + 1] - offsets[e], nr_main), tg);
    std::atomic<bool> oom{false};
    ThreadPool::instance().parallel_for(tb[experts], [&](int64_t task, int) {
      const int64_t e = sk_owner(tb, experts, task);
      const BsrPackedView& w = ws[e];
      const int64_t rows_e = offsets[e + 1] - offsets[e], first = (task - tb[e]) * tg;
      const int64_t ntiles = sk_min64(tg, sk_ceil_div(rows_e, nr_main) - first);
      float* panels = thread_workspace(static_cast<size_t>(tg * nr_main * k), 2);
      if (!panels) {
        oom = true;
        return;
      }
      struct TileRun {
        int64_t t0, tv, nr;
        const Ukernel* uks;
        const float* panel;
        float* ye;
      };
      TileRun tl[kMaxGroupTiles];
      for (int64_t j = 0; j < ntiles; ++j) {
        TileRun& t = tl[j];
        t.t0 = (first + j) * nr_main, t.tv = sk_min64(nr_main, rows_e - t.t0);
        const bool tail = t.tv <= nr_tail;
        t.nr = tail ? nr_tail : nr_main;
        t.uks = tail ? uks_tail : uks_main;
        float* panel = panels + j * nr_main * k;
        pack_x(tail ? opt_tail : opt)(xs + (static_cast<int64_t>(offsets[e]) + t.t0) * k, t.tv, k, 0, 1, panel);
        t.panel = panel;
        t.ye = y + (static_cast<int64_t>(offsets[e]) + t.t0) * out;
      }
      alignas(64) float stage[kTileFloats * (kRun + RMAX)];
      alignas(64) float up[kTileFloats * (kRun + RMAX)];
      // Runs of one side's groups into a stage ([rows][nr]) for one tile.
      auto run_groups = [&](int64_t ga, int64_t gb, float* st, const TileRun& t) {
        const Ukernel* uks = t.uks;
        const float* panel = t.panel;
        const int64_t nr = t.nr;
        int64_t off = 0;
        for (int64_t gi = ga; gi < gb; ++gi) {
          const int64_t R = gi / gs.count;
          const int g = static_cast<int>(gi % gs.count);
          const int rows = gs.rows(g);
          const int64_t p0 = w.row_ptr[R], p1 = w.row_ptr[R + 1];
          const float* a = w.packed + p0 * br * bc + gs.first_row(g) * (p1 - p0) * bc;
          uks[rows - 1](p1 - p0, w.col_idx + p0, a, panel, bc, st + off * nr, false);
          off += rows;
        }
      };
      // The gate side's groups (all of them when not gated) in runs of at
      // most kRun rows; a gated run is followed by the same rows of the up
      // side (gate_br block rows on: the same group structure), gated in the
      // stage's layout and transposed once into y (~3 % of the gated call
      // over gating y's rows with the up sums transposed beside them).
      const int64_t side_groups = gate_br * gs.count;
      for (int64_t ga = 0; ga < side_groups;) {
        int64_t gb = ga, run_rows = 0;
        while (gb < side_groups && run_rows + gs.rows(static_cast<int>(gb % gs.count)) <= kRun) {
          run_rows += gs.rows(static_cast<int>(gb % gs.count));
          ++gb;
        }
        const int64_t run0 = (ga / gs.count) * br + gs.first_row(static_cast<int>(ga % gs.count));
        for (int64_t j = 0; j < ntiles; ++j) {
          const TileRun& t = tl[j];
          run_groups(ga, gb, stage, t);
          if (gate_rows > 0) {
            run_groups(ga + side_groups, gb + side_groups, up, t);
            sk_gate_row(stage, up, run_rows * t.nr, act);
          }
          sk_write_transposed(stage, t.nr, run_rows, t.tv, t.ye + run0, out);
          if (gate_rows == 0 && act != Activation::kNone)
            for (int64_t q = 0; q < t.tv; ++q) sk_epilogue_row(t.ye + q * out + run0, nullptr, run_rows, act);
        }
        ga = gb;
      }
    });
    return oom ? kBsrOutOfMemory : kBsrOk;
  }

  // sddmm picks the dense micro-kernel's tile when its width NR divides the
  // block width (b is then packed once and blocks are written in place), a
  // one-vector-wide tile of 8 rows when only the vector width divides it
  // (8×8 blocks on AVX2), and gathers b per task otherwise.
  static int sddmm(const float* a, int64_t m, int64_t k, const float* b, int64_t n, const BsrView& mask,
                   float* out) {
    using D = typename Cfg::Dense;
    if (mask.bc % (D::NRV * W) != 0) {
      if constexpr (D::NRV > 1)
        if (mask.bc % W == 0) return sddmm_tiled<8, 1>(a, m, k, b, n, mask, out);
    }
    return sddmm_tiled<D::MR, D::NRV>(a, m, k, b, n, mask, out);
  }

  using DenseUkernel = void (*)(int64_t, const float*, const float*, float*, int64_t, bool);
  template <int MR, int NRV, int... Rs>
  static DenseUkernel dense_ukernel(int rows, std::integer_sequence<int, Rs...>) {
    static const DenseUkernel t[] = {&gemm_ukernel<V, Rs + 1, NRV, MR>...};
    return t[rows - 1];
  }

  template <int MR, int NRV>
  static int sddmm_tiled(const float* a, int64_t m, int64_t k, const float* b, int64_t n, const BsrView& mask,
                         float* out) {
    constexpr int NR = NRV * W, KC = Cfg::Dense::KC;
    const int64_t br = mask.br, bc = mask.bc, nbr = mask.rows / mask.br;
    if (mask.nnz == 0) return kBsrOk;
    ThreadPool& pool = ThreadPool::instance();
    DenseUkernel uks[MR];
    for (int r = 1; r <= MR; ++r) uks[r - 1] = dense_ukernel<MR, NRV>(r, std::make_integer_sequence<int, MR>{});

    // a in MR-row panels (the dense kernel's packed-x layout), once for all block rows.
    const int64_t a_panels = sk_ceil_div(m, MR);
    float* ap = thread_workspace(static_cast<size_t>(a_panels * MR * k), 0);
    if (!ap) return kBsrOutOfMemory;
    pool.parallel_for(a_panels, [&](int64_t p, int) { pack_rows_kmajor<MR>(a, m, k, p, p + 1, ap); });

    // Where NR divides the block width, every NR panel of b lies inside one
    // block column: b is packed once (the block columns the mask uses) and
    // each block's products are written straight into its output block.
    // Otherwise each task gathers the b rows of its blocks into panels.
    const bool direct = bc % NR == 0;
    float* bp_all = nullptr;
    if (direct) {
      const int64_t nbc = n / bc;
      bp_all = thread_workspace(static_cast<size_t>(n * k), 1);
      ScratchArray<uint8_t> used(nbc);
      if (!bp_all || !used.data()) return kBsrOutOfMemory;
      for (int64_t c = 0; c < nbc; ++c) used.data()[c] = 0;
      for (int64_t j = 0; j < mask.nnz; ++j) used.data()[mask.col_idx[j]] = 1;
      const uint8_t* u = used.data();
      const int64_t per_col = bc / NR;
      pool.parallel_for(nbc, [&](int64_t c, int) {
        if (u[c]) pack_rows_kmajor<NR>(b, n, k, c * per_col, (c + 1) * per_col, bp_all);
      });
    }

    // Tasks: batches of up to `per_batch` kept blocks of one block row, about
    // 256 columns of b, so a KC-deep slice of them is an L2-sized buffer.
    const int64_t per_batch = bc >= 256 ? 1 : 256 / bc;
    const int64_t width_max = sk_ceil_div(per_batch * bc, NR) * NR;
    ScratchArray<int64_t> task_start(0);
    int64_t n_tasks = 0;
    for (int64_t R = 0; R < nbr; ++R) n_tasks += sk_ceil_div(mask.row_ptr[R + 1] - mask.row_ptr[R], per_batch);
    task_start.reset(n_tasks * 2);
    if (!task_start.data()) return kBsrOutOfMemory;
    {
      int64_t t = 0;
      for (int64_t R = 0; R < nbr; ++R)
        for (int64_t j = mask.row_ptr[R]; j < mask.row_ptr[R + 1]; j += per_batch) {
          task_start.data()[2 * t] = R;
          task_start.data()[2 * t + 1] = j;
          ++t;
        }
    }
    const int64_t* ts = task_start.data();
    const size_t scratch_floats = direct ? 1 : static_cast<size_t>(width_max * KC + br * width_max);
    std::atomic<bool> oom{false};

    // The block row's rows [r_begin, r_end), cut where the packed a panels of
    // MR rows end, each piece run against one NR panel slice of b.
    auto rows_times_panel = [&](int64_t r_begin, int64_t r_end, int64_t pc, int64_t kc, const float* bpan, float* c,
                                int64_t ldc) {
      for (int64_t r = r_begin; r < r_end;) {
        const int64_t panel = r / MR, off = r % MR;
        const int rows = static_cast<int>(sk_min64(MR - off, r_end - r));
        uks[rows - 1](kc, ap + panel * k * MR + pc * MR + off, bpan, c + (r - r_begin) * ldc, ldc, pc > 0);
        r += rows;
      }
    };

    pool.parallel_for(n_tasks, [&](int64_t task, int) {
      const int64_t R = ts[2 * task], j0 = ts[2 * task + 1];
      const int64_t j1 = sk_min64(mask.row_ptr[R + 1], j0 + per_batch);
      const int64_t r_begin = R * br, r_end = r_begin + br;
      if (direct) {
        const int64_t per_col = bc / NR;
        for (int64_t pc = 0; pc < k; pc += KC) {
          const int64_t kc = sk_min64(KC, k - pc);
          for (int64_t j = j0; j < j1; ++j) {
            const float* bcol = bp_all + static_cast<int64_t>(mask.col_idx[j]) * per_col * k * NR + pc * NR;
            for (int64_t p = 0; p < per_col; ++p)
              rows_times_panel(r_begin, r_end, pc, kc, bcol + p * k * NR, out + j * br * bc + p * NR, bc);
          }
        }
        return;
      }
      // Per-thread scratch (each pool thread has its own slot-3 buffer).
      float* bp = thread_workspace(scratch_floats, 3);
      if (!bp) {
        oom = true;
        return;
      }
      float* ct = bp + width_max * KC;  // [br][ldc] result tile
      const int64_t width = (j1 - j0) * bc;
      const int64_t panels = sk_ceil_div(width, NR);
      const int64_t ldc = panels * NR;
      const float* rows[NR];
      for (int64_t pc = 0; pc < k; pc += KC) {
        const int64_t kc = sk_min64(KC, k - pc);
        // Gather b rows of the batch's blocks, columns [pc, pc + kc), into NR panels.
        for (int64_t p = 0; p < panels; ++p) {
          for (int64_t jj = 0; jj < NR; ++jj) {
            const int64_t gcol = p * NR + jj;
            rows[jj] = gcol < width
                           ? b + (static_cast<int64_t>(mask.col_idx[j0 + gcol / bc]) * bc + gcol % bc) * k + pc
                           : nullptr;
          }
          gather_panel<NR>(rows, kc, bp + p * kc * NR);
        }
        for (int64_t p = 0; p < panels; ++p) rows_times_panel(r_begin, r_end, pc, kc, bp + p * kc * NR, ct + p * NR, ldc);
      }
      for (int64_t j = j0; j < j1; ++j) {
        float* dst = out + j * br * bc;
        const float* src = ct + (j - j0) * bc;
        for (int64_t i = 0; i < br; ++i)
          for (int64_t c = 0; c < bc; ++c) dst[i * bc + c] = src[i * ldc + c];
      }
    });
    return oom ? kBsrOutOfMemory : kBsrOk;
  }
};

}  // namespace
}  // namespace sparsekit
