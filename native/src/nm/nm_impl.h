// N:M kernels, written once over a vector-traits type and instantiated in
// each ISA's file (nm_avx2.cc, ...), compiled there with that ISA's flags.
//
//   forward     y [m, rows] = act(x [m, cols] · Wᵀ + bias)
//   transposed  dx [m, cols] = dy [m, rows] · W
//
// W is read in its compressed form (see PackedNm in sparsekit/nm.h): per row,
// the kept values in column order and their in-group indices. Only kept
// values are multiplied; the work is rows · kept · m multiply-adds, N/M of the
// dense count.
//
// Forward, two kernels, chosen by the token count m and the pattern alone
// (never by the thread count):
//
// * Row-streaming (decode: m ≤ 4 for groups that span 2 windows of 8
//   columns per chunk — 1:2, 2:4, 4:8 —, m ≤ 2 for 4 windows — 1:4, 2:8 —,
//   m = 1 for 1:8; untuned patterns up to m = 2): memory-bound, so it reads W
//   once, in order, prefetching ahead, and spends little per value. It takes
//   the rows of a packed panel together (4 rows up to 2 tokens, 2 rows
//   beyond), so the panel streams once and the rows share each chunk's x
//   windows. A chunk of 8 kept values has its 8 indices in one small word;
//   they are decoded in a vector register (shift, mask, add the group
//   offsets) and the 8 matching x values are gathered from the few 8-column
//   windows of x the chunk spans (AVX2: one vpermps per window and fixed
//   blends; eight scalar loads when each value has its own window, 1:8), then
//   one FMA with the 8 values. Sums stay in lanes and are reduced once per row.
//
// * Gather-FMA tiles (more tokens, prefill/training): x is packed per call
//   into token tiles transposed to [cols][T] (T = TV vectors of tokens), so
//   the x data a kept value (v, c) needs is one contiguous row xp[c]: the
//   kernel broadcasts v and does TV FMAs v · xp[c] into a register tile of R
//   rows × T tokens. Indices are decoded in integer registers from the packed
//   bits (no expanded index array, no extra loads). Loads bound it: TV + 1
//   per TV FMAs (TV + 1/4 where the values come as lanes of one 4-float load:
//   AVX2, NEON), so T is as large as the token count and L1 allow: the slice
//   of xp for a block of KC columns (KC·T floats) stays in L1 while a block of
//   MC rows streams past it, and each MC × T accumulator tile lives in a
//   per-task scratch between column blocks. Tuned patterns run the panel tile
//   (nm_panel_tile; nm_panel_run steps it over a whole row block in one
//   call): its R rows (R | 4) lie in one packed panel, so it walks
//   one values pointer and one index pointer whatever R is; each value's x
//   row offset is one rotate and one mask of the chunk's pre-shifted index
//   word (T·4 bytes is a power of two: TV ∈ {1, 2, 4, 8}); and it prefetches
//   the panel two ahead in the task's walk one chunk per chunk it computes, so
//   W streams at a steady rate (one burst of prefetches per panel left the
//   tile waiting on memory: ~15% of the 16-token time). R × TV: 4 × 1 (two
//   chains per row), 4 × 2, 2 × 4, 1 × 8, and for the denser patterns
//   1 × 5..7 (two chains) and 1 × 9, 1 × 10, so that an uneven token count
//   (a routed expert's group) gets tiles that fit it (split_tiles). A task
//   runs all its tiles on each column block while the block's W is in
//   cache, whatever their widths.
//
// Every output element is one chain of FMAs over its row's kept values in
// column order (kernel B; narrow tiles split it into two chains, even and odd
// values, added at the end of each column block) or a fixed lane-then-tail
// reduction (kernel A), the same whatever the blocking or the thread that
// runs it: results are bitwise identical for any thread count.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstring>

#include <type_traits>

#include "../common/simd.h"
#include "nm_patterns.h"
#include "sparsekit/memory.h"
#include "sparsekit/nm.h"
#include "sparsekit/thread_pool.h"

namespace sparsekit {
namespace {  // internal linkage: see simd.h

SK_INLINE int64_t nm_min(int64_t a, int64_t b) { return a < b ? a : b; }
SK_INLINE int64_t nm_max(int64_t a, int64_t b) { return a > b ? a : b; }
SK_INLINE int64_t nm_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
// a + b through the traits' FMA (a·1 + b rounds exactly like a + b).
template <class V>
SK_INLINE typename V::T nm_add(typename V::T a, typename V::T b) {
  const float one = 1.f;
  return V::fma(a, V::bcast(&one), b);
}
constexpr int nm_bits_of(int m) { return m <= 2 ? 1 : m <= 4 ? 2 : m <= 8 ? 3 : 4; }

// ---- patterns: where each kept value's column is -----------------------------
//
// Values come in chunks of 8 (c = j / 8); col(row, c, word, l) is the column of
// value 8c + l, word = word(row, c) loaded once per chunk.

template <int N, int M>
struct TunedPattern {
  static constexpr bool kTuned = true;
  static constexpr int kN = N, kM = M;
  static constexpr int B = nm_bits_of(M);
  static constexpr int CC = 8 / N * M;  // columns one chunk spans
  static constexpr int PR = kNmPanelRows;
  static_assert(8 % N == 0 && (M == 2 || M == 4 || M == 8), "tuned patterns need N | 8 and M in {2, 4, 8}");
  // A row inside its panel: chunk c of the row is 8 values at v + c·PR·8 and
  // B index bytes at meta + c·PR·B (the panel's rows interleave chunk by chunk).
  struct Row {
    const float* v;
    const uint8_t* meta;
  };
  static SK_INLINE Row row(const PackedNm& w, int64_t r) {
    return {w.values.data() + (r / PR) * w.vstride + (r % PR) * 8, w.meta.data() + (r / PR) * w.mstride + (r % PR) * B};
  }
  static SK_INLINE const float* chunk_values(const Row& r, int64_t c) { return r.v + c * (PR * 8); }
  static SK_INLINE const float* value(const Row& r, int64_t j) { return r.v + (j >> 3) * (PR * 8) + (j & 7); }
  static SK_INLINE const uint8_t* chunk_meta(const Row& r, int64_t c) { return r.meta + c * (PR * B); }
  // The chunk's B bytes (and up to 3 more, inside the padded panel) in one load.
  static SK_INLINE uint32_t word(const Row& r, int64_t c) {
    uint32_t x;
    std::memcpy(&x, chunk_meta(r, c), 4);
    return x;
  }
  static SK_INLINE int64_t col(const Row&, int64_t c, uint32_t word, int l) {
    return c * CC + (l / N) * M + ((word >> (l * B)) & (M - 1));
  }
  // Any value, e.g. the tail past the last full chunk (its chunk is stored whole).
  static SK_INLINE int64_t col_of(const Row& r, int64_t j) { return col(r, j >> 3, word(r, j >> 3), int(j & 7)); }
  // Columns a chunk spans: for blocking heuristics.
  static int64_t chunk_cols(const NmShape&) { return CC; }
};

// Any other N:M: the packed weight holds each value's column as int32.
struct GenericPattern {
  static constexpr bool kTuned = false;
  struct Row {
    const float* v;
    const int32_t* cols;
  };
  static SK_INLINE Row row(const PackedNm& w, int64_t r) {
    return {w.values.data() + r * w.vstride, w.cols.data() + r * w.vstride};
  }
  static SK_INLINE const float* chunk_values(const Row& r, int64_t c) { return r.v + c * 8; }
  static SK_INLINE const float* value(const Row& r, int64_t j) { return r.v + j; }
  static SK_INLINE uint32_t word(const Row&, int64_t) { return 0; }
  static SK_INLINE int64_t col(const Row& r, int64_t c, uint32_t, int l) { return r.cols[c * 8 + l]; }
  static SK_INLINE int64_t col_of(const Row& r, int64_t j) { return r.cols[j]; }
  static int64_t chunk_cols(const NmShape& s) { return nm_cdiv(8 * int64_t(s.m), s.n); }
};

// f(j, col) for every value j in [j0, j1) of a row, in order.
template <class P, class F>
SK_INLINE void nm_for_values(const typename P::Row& row, int64_t j0, int64_t j1, F&& f) {
  int64_t j = j0;
  for (; j < j1 && (j & 7); ++j) f(j, P::col_of(row, j));
  for (; j + 8 <= j1; j += 8) {
    int64_t c = j >> 3;
    uint32_t w = P::word(row, c);
#pragma GCC unroll 8
    for (int l = 0; l < 8; ++l) f(j + l, P::col(row, c, w, l));
  }
  for (; j < j1; ++j) f(j, P::col_of(row, j));
}

// ---- kernel A: row-streaming dot products for m ≤ 2 ---------------------------

// Portable: 8 lane sums per token, kept in an array the compiler can
// vectorise; RG rows one after the other.
// Most tokens the row-streaming kernel takes for a tuned pattern whose chunk
// spans `win` 8-column windows (measured against the tiles, 4096×4096, 2
// threads); the AVX-512 kernel has its own.
constexpr int nm_small_max_tokens(int win) { return win <= 2 ? 4 : win <= 4 ? 2 : 1; }

template <class V>
struct NmSmall {
  static constexpr int max_tokens(int win) { return nm_small_max_tokens(win); }
  template <class P, int RG, int TOK>
  static void dot(const typename P::Row* rows, int64_t kept, const float* x, int64_t ldx, float* out) {
    for (int r = 0; r < RG; ++r) dot1<P, TOK>(rows[r], kept, x, ldx, out + r * TOK);
  }
  template <class P, int TOK>
  static void dot1(const typename P::Row& row, int64_t kept, const float* x, int64_t ldx, float* out) {
    float acc[TOK][8] = {};
    const int64_t chunks = kept / 8;
    for (int64_t c = 0; c < chunks; ++c) {
      uint32_t w = P::word(row, c);
      const float* v = P::chunk_values(row, c);
      for (int l = 0; l < 8; ++l) {
        int64_t col = P::col(row, c, w, l);
        for (int t = 0; t < TOK; ++t) acc[t][l] += v[l] * x[t * ldx + col];
      }
    }
    for (int t = 0; t < TOK; ++t) {
      float s = ((acc[t][0] + acc[t][1]) + (acc[t][2] + acc[t][3])) + ((acc[t][4] + acc[t][5]) + (acc[t][6] + acc[t][7]));
      for (int64_t j = chunks * 8; j < kept; ++j) s += *P::value(row, j) * x[t * ldx + P::col_of(row, j)];
      out[t] = s;
    }
  }
};

#if defined(__AVX2__) && defined(__FMA__)
// AVX2 (also used by the AVX-512 build: 8 values per chunk fit a ymm).
struct NmSmallYmm {
  static constexpr int max_tokens(int win) { return nm_small_max_tokens(win); }
  // RG rows of one panel together: they stream W once, in order, and share
  // the x windows of each chunk.
  template <class P, int RG, int TOK>
  static void dot(const typename P::Row* rows, int64_t kept, const float* x, int64_t ldx, float* out) {
    if constexpr (!P::kTuned) {
      NmSmall<ScalarVec>::template dot<P, RG, TOK>(rows, kept, x, ldx, out);
    } else {
      constexpr int N = P::kN, M = P::kM, B = P::B, CC = P::CC, WIN = CC / 8;
      const __m256i shifts = _mm256_setr_epi32(0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B);
      const __m256i lowmask = _mm256_set1_epi32(M - 1);
      // Column of lane l's group inside the chunk; with windows, inside its 8-column window.
      constexpr int g0 = (0 / N) * M, g1 = (1 / N) * M, g2 = (2 / N) * M, g3 = (3 / N) * M, g4 = (4 / N) * M,
                    g5 = (5 / N) * M, g6 = (6 / N) * M, g7 = (7 / N) * M;
      const __m256i base = WIN == 8 ? _mm256_setr_epi32(g0, g1, g2, g3, g4, g5, g6, g7)
                                    : _mm256_setr_epi32(g0 & 7, g1 & 7, g2 & 7, g3 & 7, g4 & 7, g5 & 7, g6 & 7, g7 & 7);
      auto gather = [&](const float* xc, __m256i idx) -> __m256 {
        if constexpr (WIN == 2) {
          // lanes 0-3 read window 0, lanes 4-7 window 1 (groups never straddle windows)
          return _mm256_blend_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(xc), idx),
                                 _mm256_permutevar8x32_ps(_mm256_loadu_ps(xc + 8), idx), 0xF0);
        } else if constexpr (WIN == 4) {
          __m256 p0 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xc), idx);
          __m256 p1 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xc + 8), idx);
          __m256 p2 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xc + 16), idx);
          __m256 p3 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xc + 24), idx);
          return _mm256_blend_ps(_mm256_blend_ps(p0, p1, 0x0C), _mm256_blend_ps(p2, p3, 0xC0), 0xF0);
        } else {
          // One window per lane (1:8). Eight scalar loads joined in registers:
          // measured ~15 % faster per call than vgatherdps on Zen 3 (1 token, 2 threads).
          alignas(32) int32_t o[8];
          _mm256_store_si256(reinterpret_cast<__m256i*>(o), idx);
          __m128 lo = _mm_unpacklo_ps(_mm_load_ss(xc + o[0]), _mm_load_ss(xc + o[1]));
          __m128 lo2 = _mm_unpacklo_ps(_mm_load_ss(xc + o[2]), _mm_load_ss(xc + o[3]));
          __m128 hi = _mm_unpacklo_ps(_mm_load_ss(xc + o[4]), _mm_load_ss(xc + o[5]));
          __m128 hi2 = _mm_unpacklo_ps(_mm_load_ss(xc + o[6]), _mm_load_ss(xc + o[7]));
          return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_movelh_ps(lo, lo2)), _mm_movelh_ps(hi, hi2), 1);
        }
      };
      __m256 acc[RG][TOK];
      for (int r = 0; r < RG; ++r)
        for (int t = 0; t < TOK; ++t) acc[r][t] = _mm256_setzero_ps();
      const int64_t chunks = kept / 8;
      // W streams from memory once: prefetch ~3 KB of the panel ahead; the
      // hardware prefetcher alone leaves this loop well short of the
      // bandwidth the dense kernel reaches.
      constexpr int64_t kAheadChunks = 24;
      for (int64_t c = 0; c < chunks; ++c) {
        const char* ahead = reinterpret_cast<const char*>(P::chunk_values(rows[0], c + kAheadChunks));
        __builtin_prefetch(ahead);
        __builtin_prefetch(ahead + 64);
        if ((c & 7) == 0) __builtin_prefetch(P::chunk_meta(rows[0], c + kAheadChunks));
#pragma GCC unroll 4
        for (int r = 0; r < RG; ++r) {
          __m256i idx = _mm256_add_epi32(
              _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(P::word(rows[r], c))), shifts), lowmask), base);
          __m256 v = _mm256_loadu_ps(P::chunk_values(rows[r], c));
#pragma GCC unroll 4
          for (int t = 0; t < TOK; ++t) acc[r][t] = _mm256_fmadd_ps(v, gather(x + t * ldx + c * CC, idx), acc[r][t]);
        }
      }
      for (int r = 0; r < RG; ++r)
        for (int t = 0; t < TOK; ++t) {
          alignas(32) float l[8];
          _mm256_store_ps(l, acc[r][t]);
          float s = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
          for (int64_t j = chunks * 8; j < kept; ++j) s += *P::value(rows[r], j) * x[t * ldx + P::col_of(rows[r], j)];
          out[r * TOK + t] = s;
        }
    }
  }
};
template <>
struct NmSmall<Avx2Vec> : NmSmallYmm {};
#if defined(__AVX512F__)
// AVX-512: two chunks (16 values, 2·CC columns) per step. The x columns they
// span are 2·CC/16 zmm windows, shared by the RG rows; each pair of windows is
// one vpermt2ps table of 32 floats, and every lane's table is fixed by its
// position (its group), so a lane's x value is one permute of its table and
// at most three constant-mask blends: 1 permute per 16 values for 2:4, 1:2
// and 4:8, 2 (+1 blend) for 1:4 and 2:8, 4 (+3) for 1:8, against the ymm
// kernel's per-8-value window permutes or, for 1:8, eight scalar loads.
struct NmSmallZmm {
  // Against the tiles on Zen 5 (4096×4096, 2 threads): 1:4 and 2:8 at 4
  // tokens 0.77 vs 0.80 ms (at 2, 0.35 vs 0.79); 1:8 at 2 tokens 0.23 vs
  // 0.48 ms, at 3 even (fewer rows share the windows once there are 3).
  static constexpr int max_tokens(int win) { return win <= 4 ? 4 : 2; }
  template <class P, int RG, int TOK>
  static void dot(const typename P::Row* rows, int64_t kept, const float* x, int64_t ldx, float* out) {
    if constexpr (!P::kTuned) {
      NmSmallYmm::template dot<P, RG, TOK>(rows, kept, x, ldx, out);
    } else {
      constexpr int N = P::kN, M = P::kM, B = P::B, CC = P::CC;
      constexpr int NWIN = 2 * CC / 16;    // zmm windows per step: 2, 4 or 8
      constexpr int NTAB = NWIN / 2;       // vpermt2ps tables: 1, 2 or 4
      // Lane l: value l % 8 of chunk l / 8; its column inside the step's span
      // is colbase(l) + index, and its table colbase(l) / 32.
      auto colbase = [](int l) constexpr { return (l / 8) * CC + ((l % 8) / N) * M; };
      alignas(64) static constexpr int32_t kShift[16] = {0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B,
                                                         0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B};
      alignas(64) static constexpr int32_t kBase[16] = {
          colbase(0) & 31,  colbase(1) & 31,  colbase(2) & 31,  colbase(3) & 31, colbase(4) & 31,  colbase(5) & 31,
          colbase(6) & 31,  colbase(7) & 31,  colbase(8) & 31,  colbase(9) & 31, colbase(10) & 31, colbase(11) & 31,
          colbase(12) & 31, colbase(13) & 31, colbase(14) & 31, colbase(15) & 31};
      // Lanes whose table is t.
      auto tabmask = [&](int t) constexpr {
        unsigned k = 0;
        for (int l = 0; l < 16; ++l)
          if (colbase(l) / 32 == t) k |= 1u << l;
        return __mmask16(k);
      };
      const __m512i shifts = _mm512_load_si512(kShift), base = _mm512_load_si512(kBase);
      const __m512i lowmask = _mm512_set1_epi32(M - 1);
      __m512 acc[RG][TOK];
      for (int r = 0; r < RG; ++r)
        for (int t = 0; t < TOK; ++t) acc[r][t] = _mm512_setzero_ps();
      // One step over chunks c, c + 1 (HALF: chunk c only; the upper lanes'
      // values are zero and their windows, past the row's end, not read).
      auto step = [&](int64_t c, auto half) SK_INLINE_LAMBDA {
        constexpr bool H = decltype(half)::value;
        __m512 win[TOK][NWIN];
#pragma GCC unroll 4
        for (int t = 0; t < TOK; ++t)
#pragma GCC unroll 8
          for (int i = 0; i < NWIN; ++i)
            win[t][i] = H && i >= NWIN / 2 ? _mm512_setzero_ps() : _mm512_loadu_ps(x + t * ldx + c * CC + i * 16);
#pragma GCC unroll 4
        for (int r = 0; r < RG; ++r) {
          const float* v = P::chunk_values(rows[r], c);
          __m512 vals = H ? _mm512_maskz_loadu_ps(0x00FF, v)
                          : _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(v)),
                                               _mm256_loadu_ps(P::chunk_values(rows[r], c + 1)), 1);
          const __m512i words =
              H ? _mm512_set1_epi32(int(P::word(rows[r], c)))
                : _mm512_mask_set1_epi32(_mm512_set1_epi32(int(P::word(rows[r], c))), 0xFF00, int(P::word(rows[r], c + 1)));
          const __m512i idx = _mm512_add_epi32(_mm512_and_si512(_mm512_maskz_srlv_epi32(0xFFFF, words, shifts), lowmask), base);
#pragma GCC unroll 4
          for (int t = 0; t < TOK; ++t) {
            __m512 g = _mm512_permutex2var_ps(win[t][0], idx, win[t][1]);
#pragma GCC unroll 4
            for (int tb = 1; tb < NTAB; ++tb)
              g = _mm512_mask_blend_ps(tabmask(tb), g, _mm512_permutex2var_ps(win[t][2 * tb], idx, win[t][2 * tb + 1]));
            acc[r][t] = _mm512_fmadd_ps(vals, g, acc[r][t]);
          }
        }
      };
      const int64_t chunks = kept / 8;
      // W prefetch distance: 64 chunks ahead measured 1.09–1.12x over the ymm
      // kernel's 24 for 2:4 and 1:4 at 1 token (Zen 5); 128 was no better.
      constexpr int64_t kAheadChunks = 64;
      int64_t c = 0;
      for (; c + 2 <= chunks; c += 2) {
        const char* ahead = reinterpret_cast<const char*>(P::chunk_values(rows[0], c + kAheadChunks));
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) __builtin_prefetch(ahead + 64 * i);
        if ((c & 7) == 0) __builtin_prefetch(P::chunk_meta(rows[0], c + kAheadChunks));
        step(c, std::false_type{});
      }
      if (c < chunks) step(c, std::true_type{});
      for (int r = 0; r < RG; ++r)
        for (int t = 0; t < TOK; ++t) {
          // (not _mm512_reduce_add_ps, whose undefined operands trip GCC 12's warnings)
          alignas(64) float l[16];
          _mm512_store_ps(l, acc[r][t]);
          float s = 0.f;
          for (int i = 0; i < 16; i += 4) s += (l[i] + l[i + 1]) + (l[i + 2] + l[i + 3]);
          for (int64_t j = chunks * 8; j < kept; ++j) s += *P::value(rows[r], j) * x[t * ldx + P::col_of(rows[r], j)];
          out[r * TOK + t] = s;
        }
    }
  }
};
template <>
struct NmSmall<Avx512Vec> : NmSmallZmm {};
#endif
#endif

// A tile's accumulators: acc[0] from acc_io (or zero), the other chains (S > 1)
// from zero; stored back as their sum, chain 0 first, then 1, 2, …
template <class V, int R, int TV, int S>
SK_INLINE void nm_acc_init(typename V::T (&acc)[S][R][TV], const float* acc_io, bool load) {
  constexpr int W = V::W, TT = TV * W;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < TV; ++v) {
      acc[0][r][v] = load ? V::load(acc_io + r * TT + v * W) : V::zero();
#pragma GCC unroll 4
      for (int c = 1; c < S; ++c) acc[c][r][v] = V::zero();
    }
}
template <class V, int R, int TV, int S>
SK_INLINE void nm_acc_store(typename V::T (&acc)[S][R][TV], float* acc_io) {
  constexpr int W = V::W, TT = TV * W;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < TV; ++v) {
      typename V::T a = acc[0][r][v];
#pragma GCC unroll 4
      for (int c = 1; c < S; ++c) a = nm_add<V>(a, acc[c][r][v]);
      V::store(acc_io + r * TT + v * W, a);
    }
}

// ---- kernel B: gather-FMA register tile ---------------------------------------
//
// acc[R rows][TV vectors of tokens] (+)= Σ_j v[r][j] · xp[col(r, j)] over the
// chunks [c0, c1) and the tail values [jt0, jt1). With S = 2 each row keeps
// two chains (even and odd values of a chunk), added once at the end: narrow
// tiles (TV = 1) need the extra independent FMAs, and more rows would need
// more integer registers (pointers, index words) than x86-64 has.
template <class V, class P, int R, int TV, int S>
__attribute__((noinline)) void nm_tile(const typename P::Row* rows, int64_t c0, int64_t c1, int64_t jt0, int64_t jt1,
                                       const float* __restrict xp, float* __restrict acc_io, bool load) {
  using T = typename V::T;
  constexpr int W = V::W, TT = TV * W;
  T acc[S][R][TV];
  nm_acc_init<V, R, TV, S>(acc, acc_io, load);
  for (int64_t c = c0; c < c1; ++c) {
    uint32_t word[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) word[r] = P::word(rows[r], c);
    typename V::Q q[R];
#pragma GCC unroll 8
    for (int l = 0; l < 8; ++l) {
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const float* xr = xp + P::col(rows[r], c, word[r], l) * TT;
        if (V::kQuadBcast && l % 4 == 0) q[r] = V::load4(P::chunk_values(rows[r], c) + l);
        T b = V::kQuadBcast ? V::lane(q[r], l) : V::bcast(P::chunk_values(rows[r], c) + l);
#pragma GCC unroll 16
        for (int v = 0; v < TV; ++v) acc[l % S][r][v] = V::fma(b, V::load(xr + v * W), acc[l % S][r][v]);
      }
    }
  }
  for (int64_t j = jt0; j < jt1; ++j) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const float* xr = xp + P::col_of(rows[r], j) * TT;
      T b = V::bcast(P::value(rows[r], j));
#pragma GCC unroll 16
      for (int v = 0; v < TV; ++v) acc[0][r][v] = V::fma(b, V::load(xr + v * W), acc[0][r][v]);
    }
  }
  nm_acc_store<V, R, TV, S>(acc, acc_io);
}

// Tuned patterns: the same tile over R consecutive rows of one packed panel
// (q + R ≤ kNmPanelRows for the first row q), full chunks only. The panel
// layout puts every row's chunk c at a fixed offset from one values pointer
// and one index pointer, so the tile needs two pointers and the x block
// pointer whatever R is. Index decoding is a rotate and a mask per value: the
// chunk's index word is pre-shifted so that (word >> l·B) & ((M−1) << SH) is
// already the byte offset idx · TT · 4 of the x row when TT · 4 = 2^SH (the
// group's first column is an immediate displacement); other widths multiply
// that by the odd factor of TT · 4.
//   pv: values of chunk 0 of row q; pm: its index bytes; xc: x rows of the
//   first column of chunk 0; nc chunks.
template <class V, class P, int R, int TV, int S>
SK_INLINE void nm_panel_tile(const float* pv, const uint8_t* pm, int64_t nc, const float* __restrict xc_f,
                                             float* __restrict acc_io, bool load, const char* pfv, const char* pfm) {
  using T = typename V::T;
  constexpr int N = P::kN, M = P::kM, B = P::B, CC = P::CC, PR = P::PR, W = V::W, TT = TV * W;
  // TT · 4 = ODD · 2^SH: the pre-shifted word gives idx · 2^SH, times ODD (a
  // lea for 3, 5, 9) off the FMAs' critical path.
  constexpr int SH = __builtin_ctz(unsigned(TT * 4));
  constexpr uint64_t ODD = uint64_t(TT * 4) >> SH;
  static_assert(R <= PR, "a panel tile stays inside one panel");
  const char* xc = reinterpret_cast<const char*>(xc_f);
  T acc[S][R][TV];
  nm_acc_init<V, R, TV, S>(acc, acc_io, load);
  for (int64_t c = 0; c < nc; ++c) {
    if (pfv) {
      __builtin_prefetch(pfv + c * (PR * 32));
      __builtin_prefetch(pfv + c * (PR * 32) + 64);
      __builtin_prefetch(pfm + c * (PR * B));
    }
    uint64_t word[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      uint32_t x;
      std::memcpy(&x, pm + r * B, 4);  // B bytes (and up to 3 more inside the padded panel)
      word[r] = uint64_t(x) << SH;
    }
    typename V::Q q[R];
#pragma GCC unroll 8
    for (int l = 0; l < 8; ++l) {
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        // a rotate (not a shift) lets the compiler keep the word and use one non-destructive op
        const uint64_t rot = l == 0 ? word[r] : (word[r] >> (l * B)) | (word[r] << ((64 - l * B) & 63));
        const uint64_t off = (rot & (uint64_t(M - 1) << SH)) * ODD;
        const float* xr = reinterpret_cast<const float*>(xc + (l / N) * M * TT * 4 + off);
        // the value: a lane of its quad (one load per four values) or a broadcast load
        if (V::kQuadBcast && l % 4 == 0) q[r] = V::load4(pv + r * 8 + l);
        T b = V::kQuadBcast ? V::lane(q[r], l) : V::bcast(pv + r * 8 + l);
#pragma GCC unroll 16
        for (int v = 0; v < TV; ++v) acc[l % S][r][v] = V::fma(b, V::load(xr + v * W), acc[l % S][r][v]);
      }
    }
    pv += PR * 8;
    pm += PR * B;
    xc += CC * TT * 4;
  }
  nm_acc_store<V, R, TV, S>(acc, acc_io);
}

// The panel tile over the rows [g0, g1) of w (R at a time, g0 a panel's first
// row; the last step may run past g1 inside the padded panel, its extra sums
// landing in unused scratch), chunks [c0, c0 + nc), sums at acc (R·TT floats
// a step). One call per row block and column block, so the step loop costs a
// few integer ops instead of a call each. With `pf`, every step that starts a
// panel prefetches the panel kNmPfPanels ahead in the walk (past g1: the
// first panels of the block, chunks from c1), one chunk per chunk computed;
// with `xnext`, each step prefetches its share (xshare bytes) of the next
// token tile's x slice (xbytes), so it is in cache when its turn comes.
template <class V, class P, int R, int TV, int S>
__attribute__((noinline)) void nm_panel_run(const PackedNm& w, int64_t g0, int64_t g1, int64_t c0, int64_t c1,
                                            const float* __restrict xc, float* __restrict acc, bool pf, int64_t pf_panels,
                                            const char* xnext, int64_t xshare, int64_t xbytes) {
  constexpr int PR = P::PR, B = P::B, TT = TV * V::W;
  const int64_t chunks = w.kept / 8, nc = c1 - c0, nblk = nm_cdiv(g1 - g0, PR);
  const float* vals = w.values.data() + c0 * (PR * 8);
  const uint8_t* meta = w.meta.data() + c0 * (PR * B);
  for (int64_t g = g0, pi = 0; g < g1; g += R, acc += R * TT, ++pi) {
    const int64_t panel = g / PR, q = g % PR;
    if (xnext)
      for (int64_t b = pi * xshare; b < (pi + 1) * xshare && b < xbytes; b += 64) __builtin_prefetch(xnext + b, 0, 2);
    const char *pfv = nullptr, *pfm = nullptr;
    if (pf && q == 0) {
      int64_t pp = panel + pf_panels, pc0 = c0;
      if (pp * PR >= g1) pp -= nblk, pc0 = c1;  // wraps to the block's start, next column block
      if (pp * PR < g1 && pc0 < chunks) {
        pfv = reinterpret_cast<const char*>(w.values.data() + pp * w.vstride + pc0 * (PR * 8));
        pfm = reinterpret_cast<const char*>(w.meta.data() + pp * w.mstride + pc0 * (PR * B));
      }
    }
    nm_panel_tile<V, P, R, TV, S>(vals + panel * w.vstride + q * 8, meta + panel * w.mstride + q * B, nc, xc, acc, c0 > 0,
                                  pfv, pfm);
  }
}

// dst[tile][k][TT] = src[tile·TT + t][k] (zero past m): token tiles transposed
// so one column's tokens are contiguous. Parallel over (tile, block of k).
// Columns [k0, k1) of one token tile: d[kk][t] = src[t][kk] for the tile's
// first `valid` tokens (rows of src, k floats apart; valid may exceed the
// tile), 0 for the rest.
SK_INLINE void nm_pack_tile_cols(const float* src, int64_t valid, int64_t k, int64_t k0, int64_t k1, int64_t tt_size,
                                 float* d) {
  int64_t t0 = 0;
#if defined(__AVX2__)
  // 8 × 8 register transposes over whole groups of 8 tokens and 8 columns,
  // a group of columns at a time, so each x row of the tile is written in
  // whole vectors, in order. Against the scalar copy (Zen 5, 2 threads,
  // Mixtral-shaped 2:4 experts at T = 512): down 1.12x, gate/up 1.05x.
  const int64_t t8 = nm_min(valid, tt_size) / 8 * 8, kb = k0 + (k1 - k0) / 8 * 8;
  for (int64_t kk = k0; kk < kb; kk += 8)
    for (int64_t t = 0; t < t8; t += 8) sk_transpose8x8(src + t * k + kk, k, d + kk * tt_size + t, tt_size);
  for (int64_t t = 0; t < t8; ++t)
    for (int64_t kk = kb; kk < k1; ++kk) d[kk * tt_size + t] = src[t * k + kk];
  t0 = t8;
#endif
  for (int64_t t = t0; t < tt_size; ++t) {
    if (t < valid) {
      const float* s = src + t * k;
      for (int64_t kk = k0; kk < k1; ++kk) d[kk * tt_size + t] = s[kk];
    } else {
      for (int64_t kk = k0; kk < k1; ++kk) d[kk * tt_size + t] = 0.f;
    }
  }
}
constexpr int64_t kNmPackCols = 256;  // columns per packing task

SK_INLINE void nm_pack_tiles(const float* src, int64_t m, int64_t k, int64_t tt_size, float* dst) {
  const int64_t tiles = nm_cdiv(m, tt_size), kblocks = nm_cdiv(k, kNmPackCols);
  ThreadPool::instance().parallel_for(tiles * kblocks, [&](int64_t task, int) {
    const int64_t tile = task / kblocks, k0 = (task % kblocks) * kNmPackCols, k1 = nm_min(k, k0 + kNmPackCols);
    nm_pack_tile_cols(src + tile * tt_size * k, m - tile * tt_size, k, k0, k1, tt_size, dst + tile * k * tt_size);
  });
}

template <class Cfg>
struct NmDriver {
  using V = typename Cfg::V;
  static constexpr int W = V::W;
  // Rows per task (row block): a multiple of kMCStep (every R below: 4, 3,
  // 2, 1), kMCMin to kMCMax. Each task reads its tiles' whole x (K × tokens)
  // from L3 or memory, so taller blocks read x fewer times: 384 rows over 96
  // measured 1.05–1.15× on 4096-row weights at 128–512 tokens (more the
  // longer K: a 14336-wide x is 7 MB per 128 tokens). See row_block.
  static constexpr int64_t kMCStep = 12, kMCMin = 96, kMCMax = 384;
  static constexpr int64_t kNmPfPanels = 2;  // tuned tiles prefetch W this many panels ahead

  // ---- forward

  template <class P, int TOK>
  static void run_small(const PackedNm& w, const float* x, int64_t m, const float* bias, Activation act, float* y) {
    // Rows in groups inside a panel (64 is a multiple of the panel height).
    constexpr int RG = TOK <= 2 ? kNmPanelRows : kNmPanelRows / 2;
    const int64_t rows = w.shape.rows, K = w.shape.cols, rb = 64;
    ThreadPool::instance().parallel_for(nm_cdiv(rows, rb), [&](int64_t task, int) {
      int64_t r0 = task * rb, r1 = nm_min(rows, r0 + rb);
      for (int64_t r = r0; r < r1; r += RG) {
        typename P::Row rr[RG];
        // A partial group repeats its last row; the extra results are dropped.
        for (int i = 0; i < RG; ++i) rr[i] = P::row(w, nm_min(r + i, r1 - 1));
        float s[RG * TOK];
        NmSmall<V>::template dot<P, RG, TOK>(rr, w.kept, x, K, s);
        for (int i = 0; i < RG && r + i < r1; ++i)
          for (int t = 0; t < TOK; ++t) y[t * rows + r + i] = s[i * TOK + t];
      }
      for (int t = 0; t < TOK; ++t) sk_epilogue_row(y + t * rows + r0, bias ? bias + r0 : nullptr, r1 - r0, act);
    });
    (void)m;
  }

  // Per-task scratch: one slice per pool thread, taken from one buffer the
  // calling thread holds; a worker index past what was sized (the pool grew
  // meanwhile) takes its own. Returns null only when memory is exhausted.
  struct Scratch {
    float* all = nullptr;
    int64_t per = 0;
    int threads = 0;
    std::atomic<bool> failed{false};
    Scratch(int64_t per_task) : per(per_task), threads(ThreadPool::instance().num_threads()) {
      all = thread_workspace(size_t(per * threads), 1);
      if (!all) failed = true;
    }
    float* get(int worker) {
      float* p = worker < threads && all ? all + int64_t(worker) * per : thread_workspace(size_t(per), 2);
      if (!p) failed = true;
      return p;
    }
  };

  // Values [8·c0, j1) and their index data of rows [r0, r1), into L2. For
  // tuned patterns a panel's rows interleave, so this is one contiguous run
  // per panel.
  template <class P>
  static SK_INLINE void prefetch_rows(const PackedNm& w, int64_t r0, int64_t r1, int64_t c0, int64_t j1) {
    if (r0 >= r1) return;
    if constexpr (P::kTuned) {
      const int64_t c1 = nm_cdiv(j1, 8);
      for (int64_t pr = r0 / P::PR; pr <= (r1 - 1) / P::PR; ++pr) {
        typename P::Row row = P::row(w, pr * P::PR);
        const char* v0 = reinterpret_cast<const char*>(P::chunk_values(row, c0));
        const char* v1 = reinterpret_cast<const char*>(P::chunk_values(row, c1));
        for (const char* b = v0; b < v1; b += 64) __builtin_prefetch(b, 0, 2);
        const char* m0 = reinterpret_cast<const char*>(P::chunk_meta(row, c0));
        const char* m1 = reinterpret_cast<const char*>(P::chunk_meta(row, c1));
        for (const char* b = m0; b < m1; b += 64) __builtin_prefetch(b, 0, 2);
      }
    } else {
      for (int64_t r = r0; r < r1; ++r) {
        const char* v = reinterpret_cast<const char*>(w.values.data() + r * w.vstride);
        for (int64_t b = (c0 * 8 * 4) & ~int64_t(63); b < j1 * 4; b += 64) __builtin_prefetch(v + b, 0, 2);
        const char* cl = reinterpret_cast<const char*>(w.cols.data() + r * w.vstride);
        for (int64_t b = (c0 * 8 * 4) & ~int64_t(63); b < j1 * 4; b += 64) __builtin_prefetch(cl + b, 0, 2);
      }
    }
  }

  // Column blocks (in chunks) whose xp slice (columns × tt floats) fits L1: the
  // ISA's budget for tiles of one or two vectors, a larger one for wider tiles.
  template <class P>
  static int64_t kc_chunks_of(const PackedNm& w, int64_t tt) {
    const int64_t l1 = tt > 2 * W ? Cfg::kL1FloatsWide : Cfg::kL1Floats;
    return nm_max(1, l1 / tt / P::chunk_cols(w.shape));
  }

  // One column block [c0, c1) of one token tile (xs: the tile's packed x,
  // [K][TV·W]; `last`: the block that also takes the values past the last
  // full chunk) for output rows [r0, r1) (rows rbase + r of w: rbase > 0 is
  // the up half of a stacked gate/up matrix), into acc[(r − r0)][TV·W]
  // (added to what is there unless c0 = 0). `first`: the task's first tile
  // on this block, which prefetches W ahead; xnext: the next tile's x slice
  // of this block (xbytes), prefetched a share per panel.
  template <class P, int R, int TV, int S>
  static void tile_block(const PackedNm& w, int64_t rbase, const float* xs, int64_t r0, int64_t r1, int64_t c0,
                         int64_t c1, bool last, bool first, const char* xnext, int64_t xbytes, float* acc_tile) {
    constexpr int TT = TV * W;
    const int64_t kept = w.kept, chunks = kept / 8;
    // The panel tile needs a tile's R rows inside one packed panel.
    bool panel_ok = true;
    if constexpr (P::kTuned) panel_ok = rbase % P::PR == 0;
    const int64_t n_panels = nm_cdiv(r1 - r0, R), xshare = nm_cdiv(nm_cdiv(xbytes, 64), n_panels) * 64;
    if constexpr (P::kTuned) {
      if (panel_ok) {
        // The panel tiles of the whole row block in one call (prefetching W
        // kNmPfPanels panels ahead in this task's walk when `first`, and the
        // next tile's x slice a share per step), then the values past the
        // last full chunk, if any (each row's chain stays in column order).
        nm_panel_run<V, P, R, TV, S>(w, rbase + r0, rbase + r1, c0, c1, xs + c0 * P::CC * TT, acc_tile, first, kNmPfPanels,
                                     xnext, xshare, xbytes);
        if (last && kept > chunks * 8)
          for (int64_t p = r0; p < r1; p += R) {
            typename P::Row rr[R];
            for (int i = 0; i < R; ++i) rr[i] = P::row(w, rbase + nm_min(p + i, r1 - 1));
            nm_tile<V, P, R, TV, 1>(rr, 0, 0, chunks * 8, kept, xs, acc_tile + (p - r0) * TT, true);
          }
        return;
      }
    }
    for (int64_t p = r0, pi = 0; p < r1; p += R, ++pi) {
      typename P::Row rr[R];
      // A partial panel repeats its last row; the extra results land in unused scratch.
      for (int i = 0; i < R; ++i) rr[i] = P::row(w, rbase + nm_min(p + i, r1 - 1));
      // Generic patterns (and unaligned row bases): W rows two tiles ahead,
      // prefetched in one go (the panel tile prefetches inside itself):
      // W streams from memory once per block and the row-by-row jumps are
      // too long for the hardware prefetcher.
      if (first) prefetch_rows<P>(w, rbase + p + 2 * R, rbase + nm_min(p + 3 * R, r1), c0, last ? kept : c1 * 8);
      if (xnext)
        for (int64_t b = pi * xshare; b < (pi + 1) * xshare && b < xbytes; b += 64) __builtin_prefetch(xnext + b, 0, 2);
      nm_tile<V, P, R, TV, S>(rr, c0, c1, last ? chunks * 8 : 0, last ? kept : 0, xs, acc_tile + (p - r0) * TT, c0 > 0);
    }
  }

  // A token tile of a task: the tile_block of its width, its packed x
  // ([K][tt]) and its sums ([row block][tt]).
  using BlockFn = void (*)(const PackedNm&, int64_t, const float*, int64_t, int64_t, int64_t, int64_t, bool, bool,
                           const char*, int64_t, float*);
  struct TaskTile {
    BlockFn block;
    const float* xs;
    float* acc;
    int64_t tt;
  };
  static constexpr int kMaxTaskTiles = 16;

  template <class P>
  static BlockFn block_fn(int tv) {
    BlockFn f = nullptr;
    with_tv<P>(tv, [&](auto r, auto v, auto s) {
      // null (and the call fails) should a width ever map to another tile's
      if (decltype(v)::value == tv) f = &tile_block<P, decltype(r)::value, decltype(v)::value, decltype(s)::value>;
      return true;
    });
    return f;
  }

  // One task: output rows [r0, r1) (rows rbase + r of w) against its token
  // tiles, summed over all of K a column block at a time (kc_chunks chunks:
  // the widest tile's x slice fits L1), every tile on a block while the
  // block's W is in cache: W streams from memory once per task.
  template <class P>
  static void run_task(const PackedNm& w, int64_t rbase, const TaskTile* t, int nt, int64_t r0, int64_t r1,
                       int64_t kc_chunks) {
    const int64_t K = w.shape.cols, chunks = w.kept / 8, cc = P::chunk_cols(w.shape);
    const int64_t n_kb = nm_max(1, nm_cdiv(chunks, kc_chunks));
    for (int64_t kb = 0; kb < n_kb; ++kb) {
      const int64_t c0 = kb * kc_chunks, c1 = nm_min(chunks, c0 + kc_chunks);
      const bool last = kb == n_kb - 1;
      // x columns of this block: [xc0, xc1) of every tile's xp
      const int64_t xc0 = nm_min(K, c0 * cc), xc1 = last ? K : nm_min(K, c1 * cc);
      for (int i = 0; i < nt; ++i) {
        // The next tile's x slice, a share per row step, so it is in cache when its turn comes.
        const TaskTile* nx = i + 1 < nt ? &t[i + 1] : nullptr;
        const char* xnext = nx ? reinterpret_cast<const char*>(nx->xs + xc0 * nx->tt) : nullptr;
        t[i].block(w, rbase, t[i].xs, r0, r1, c0, c1, last, i == 0, xnext, nx ? (xc1 - xc0) * nx->tt * 4 : 0, t[i].acc);
      }
    }
  }

  // Writes one tile's sums (acc [r1 − r0][tt], as tile_block leaves them) for
  // its first tn tokens to y [tokens, ldy] at column r0: y = act(s + bias),
  // or with `up` (the up product's sums, same layout) y = act(s) ⊙ up (acc is
  // overwritten with it).
  static void store_tile(float* acc, const float* up, int64_t tn, int64_t tt, int64_t ldy, int64_t r0, int64_t r1,
                         const float* bias, Activation act, float* y) {
    const int64_t nr = r1 - r0;
    float* yt = y + r0;
    // Gated: act(gate) ⊙ up element by element in the tile's layout (the
    // padding tokens' sums are zero) before the one transpose: ~1 % of the
    // gated call over gating the transposed rows with the up sums
    // transposed beside them.
    if (up) sk_gate_row(acc, up, nr * tt, act);
    sk_write_transposed(acc, tt, nr, tn, yt, ldy);
    if (!up && (bias || act != Activation::kNone))
      for (int64_t t = 0; t < tn; ++t) sk_epilogue_row(yt + t * ldy, bias ? bias + r0 : nullptr, nr, act);
  }

  // Tile widths (vectors of W tokens) for an expert of `rows` tokens, into
  // tv[] (at most ⌈rows / W⌉ + 2); returns the count. Patterns dense enough
  // for 8-vector tiles (tuned, 2n ≥ m) cut the v = ⌈rows / W⌉ vectors into
  // tiles of 8 and spread what is left over them (9 or 10 wide), or give it
  // a tile of its own 5–7 wide: a narrow last tile cost ~2.4× per token what
  // an 8-wide one costs (a broadcast, a decode and loop work per value,
  // whatever the width), and padding it to 8 wasted the rest (a group of
  // 136 tokens is 9 + 8 vectors, not 8 + 8 + 1). Other patterns: tiles of
  // tv_main and the rest in tiles of the width it alone would take.
  static int split_tiles(int64_t rows, int n, int mm, bool tuned, int tv_main, int* tv) {
    const int64_t v = nm_cdiv(rows, W);
    int k = 0;
    if (tuned && 2 * n >= mm && v > 4) {
      if (v <= 10) {
        tv[k++] = int(v);
        return k;
      }
      const int64_t q = v / 8, r = v % 8;
      if (r <= 2 * q) {
        // r ≤ q: r tiles of 9; otherwise r − q tiles of 10 and 2q − r of 9
        const int64_t tens = r > q ? r - q : 0, nines = r > q ? 2 * q - r : r;
        for (int64_t i = 0; i < q; ++i) tv[k++] = i < tens ? 10 : i < tens + nines ? 9 : 8;
      } else {
        for (int64_t i = 0; i < q; ++i) tv[k++] = 8;
        tv[k++] = r >= 5 ? int(r) : 4;  // r = 3, 4 (q = 1): one 4-wide tile
      }
      return k;
    }
    const int64_t tt_main = int64_t(tv_main) * W, full = rows / tt_main, rem = rows - full * tt_main;
    for (int64_t i = 0; i < full; ++i) tv[k++] = tv_main;
    if (rem > 0) {
      const int t = tile_tv(rem, n, mm, tuned);
      for (int64_t i = 0, c = nm_cdiv(rem, int64_t(t) * W); i < c; ++i) tv[k++] = t;
    }
    return k;
  }

  // Rows per task for `out` output rows cut into task groups `ng` ways:
  // blocks of up to kMCMax rows (n_rb0 of them), their count raised until
  // the tasks (ng × blocks) split evenly over the pool when they are few
  // (under 16 per thread: with k tasks each, one more on one thread costs it
  // 1/k of its time: 4096 rows were 11 blocks, 6 on one thread and 5 on the
  // other), then evened out in steps of kMCStep rows.
  static int64_t row_block(int64_t out, int64_t n_rb0, int64_t ng, int threads) {
    int64_t n_rb = n_rb0;
    if (ng * n_rb < 16 * int64_t(threads))
      for (int64_t b = n_rb0; b < n_rb0 + threads; ++b)
        if ((ng * b) % threads == 0) {
          n_rb = b;
          break;
        }
    return nm_max(kMCStep, nm_cdiv(nm_cdiv(out, n_rb), kMCStep) * kMCStep);
  }

  // Grouped forward over experts: for each expert e, rows offsets[e] ..
  // offsets[e+1] of xs times ws[e]ᵀ, all in one task list (no per-expert
  // barrier; empty experts add no tasks). gate_rows = 0: y = act(xs·Wᵀ +
  // bias), y [Σ rows, out]. gate_rows > 0: each W stacks gate rows [0,
  // gate_rows) over up rows [gate_rows, 2·gate_rows), and y [Σ rows,
  // gate_rows] = act(xs·Wgᵀ) ⊙ (xs·Wuᵀ), the two products of a row block
  // computed by one task from the same packed x tiles. Every W has the same
  // shape and pattern. The plain forward is this with one expert.
  //
  // Each expert's tokens are cut into tiles by split_tiles (uneven routed
  // groups get tiles that fit them: padding each one's last tile to the main
  // width wasted ~20 % of the work at Mixtral's T = 512), and its tiles into
  // task groups of at most 512 tokens, fewer when the row blocks alone would
  // not give the pool enough tasks. The cut depends on the offsets only.
  //
  // xp_in: x already packed in this call's tile layout (each tile [K][tt] at
  // K × the tokens of the tiles before it), as a gated call with xp_out left
  // it; xs is then unused. xp_out (gated calls): the gated sums go to a
  // buffer this call sizes from its own tiles (thread workspace slot 3, its
  // address left in *xp_out), in that layout with K = gate_rows, instead of
  // to y: the next projection's packed input, never transposed into rows and
  // packed back.
  template <class P>
  static bool run_grouped(const PackedNm* const* ws, int64_t experts, const int32_t* offsets, const float* xs,
                          int64_t gate_rows, Activation act, float* y, int tv_main, const float* bias,
                          const float* xp_in = nullptr, float** xp_out = nullptr) {
    const PackedNm& w0 = *ws[0];
    const int64_t K = w0.shape.cols, out = gate_rows > 0 ? gate_rows : w0.shape.rows;
    const int n = w0.shape.n, mm = w0.shape.m;
    const int threads = ThreadPool::instance().num_threads();
    // Row blocks: kMCMax rows, more (down to kMCMin rows) when the experts
    // with tokens would not give the pool ~4 tasks per thread, and only then
    // task groups split below (each group more streams W once more, and W is
    // larger than x).
    int64_t busy = 0;
    for (int64_t e = 0; e < experts; ++e) busy += offsets[e + 1] > offsets[e];
    const int64_t n_rb0 =
        nm_max(nm_cdiv(out, kMCMax), nm_min(nm_cdiv(out, kMCMin), nm_cdiv(4 * int64_t(threads), nm_max(1, busy))));
    struct Tile {
      int64_t e, tok0, ntok, tt, xoff;  // expert, its tokens [tok0, tok0 + ntok), width, floats into xp
      int64_t tokoff;                   // Σ widths of the tiles before it (xoff = tokoff · K)
      BlockFn block;                    // tile_block of its width
    };
    struct Group {
      // tiles [t0, t1); the expert's widest tile (it sets the column blocks of
      // all its tiles, however the pool size groups them); Σ tile widths
      int64_t t0, t1, tt_max, width;
    };
    int64_t max_tiles = 0;
    for (int64_t e = 0; e < experts; ++e) max_tiles += nm_cdiv(offsets[e + 1] - offsets[e], W) + 2;
    LocalArray<Tile> tiles(max_tiles);
    LocalArray<Group> groups(max_tiles);
    LocalArray<int> tvs(max_tiles);
    int64_t nt = 0, ng = 0, xfloats = 0, tokw = 0, tok_max = 1;
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t rows = offsets[e + 1] - offsets[e];
      if (rows == 0) continue;
      const int k = split_tiles(rows, n, mm, P::kTuned, tv_main, tvs.p);
      // Tiles per task group: at most 512 tokens (bounded scratch), and
      // enough groups that the pool has ~4 tasks per thread, counting the
      // other experts' tasks (each expert's share of them).
      int64_t tt_max = 0;
      for (int i = 0; i < k; ++i) tt_max = nm_max(tt_max, int64_t(tvs[i]) * W);
      const int64_t want = nm_cdiv(4 * int64_t(threads), n_rb0 * busy);
      const int64_t cap = nm_min(kMaxTaskTiles, nm_max(1, nm_min(512 / tt_max, nm_cdiv(k, want))));
      int64_t tok = 0;
      for (int i = 0; i < k; ++i) {
        Tile& t = tiles[nt];
        t.e = e, t.tt = int64_t(tvs[i]) * W, t.tok0 = tok, t.ntok = nm_min(t.tt, rows - tok);
        t.block = block_fn<P>(tvs[i]);
        if (!t.block) return false;
        t.xoff = xfloats, t.tokoff = tokw;
        xfloats += t.tt * K, tok += t.tt, tokw += t.tt;
        if (i % cap == 0) groups[ng++] = {nt, nt, tt_max, 0};
        Group& g = groups[ng - 1];
        g.t1 = ++nt, g.width += t.tt;
        tok_max = nm_max(tok_max, g.width);
      }
    }
    if (nt == 0) return true;
    const int64_t mc = row_block(out, n_rb0, ng, threads), n_rb = nm_cdiv(out, mc), per = mc * tok_max;
    float* hp = nullptr;  // the gated sums' packed tiles (xp_out)
    if (xp_out) {
      if (gate_rows <= 0) return false;
      hp = thread_workspace(size_t(tokw * gate_rows), 3);
      if (!hp) return false;
      *xp_out = hp;
    }
    const float* xp = xp_in;
    if (!xp) {
      float* buf = thread_workspace(size_t(xfloats), 0);
      if (!buf) return false;
      // Pack every tile ([K][tt], zero past its tokens), in one parallel pass.
      const int64_t kblocks = nm_cdiv(K, kNmPackCols);
      ThreadPool::instance().parallel_for(nt * kblocks, [&](int64_t task, int) {
        const Tile& t = tiles[task / kblocks];
        const int64_t k0 = (task % kblocks) * kNmPackCols, k1 = nm_min(K, k0 + kNmPackCols);
        nm_pack_tile_cols(xs + (int64_t(offsets[t.e]) + t.tok0) * K, t.ntok, K, k0, k1, t.tt, buf + t.xoff);
      });
      xp = buf;
    }
    Scratch scr(gate_rows > 0 ? 2 * per : per);
    if (scr.failed) return false;
    ThreadPool::instance().parallel_for(ng * n_rb, [&](int64_t task, int worker) {
      const Group& g = groups[task / n_rb];
      const int64_t rb = task % n_rb, r0 = rb * mc, r1 = nm_min(out, r0 + mc);
      float* scratch = scr.get(worker);
      if (!scratch) return;
      float* up = gate_rows > 0 ? scratch + per : nullptr;
      const int cnt = int(g.t1 - g.t0);
      TaskTile tg[kMaxTaskTiles], tu[kMaxTaskTiles];
      for (int64_t i = 0, at = 0; i < cnt; ++i) {
        const Tile& t = tiles[g.t0 + i];
        tg[i] = {t.block, xp + t.xoff, scratch + at, t.tt};
        tu[i] = {t.block, xp + t.xoff, up ? up + at : nullptr, t.tt};
        at += mc * t.tt;
      }
      const PackedNm& w = *ws[tiles[g.t0].e];
      const int64_t kc = kc_chunks_of<P>(w, g.tt_max);
      run_task<P>(w, 0, tg, cnt, r0, r1, kc);
      if (up) run_task<P>(w, gate_rows, tu, cnt, r0, r1, kc);
      for (int i = 0; i < cnt; ++i) {
        const Tile& t = tiles[g.t0 + i];
        if (hp && up) {
          // Rows [r0, r1) of the tile's [gate_rows][tt] packed block, as
          // they lie in acc (padding tokens included: they stay per lane).
          sk_gate_row(tg[i].acc, tu[i].acc, (r1 - r0) * t.tt, act);
          std::memcpy(hp + t.tokoff * gate_rows + r0 * t.tt, tg[i].acc, sizeof(float) * size_t((r1 - r0) * t.tt));
          continue;
        }
        store_tile(tg[i].acc, up ? tu[i].acc : nullptr, t.ntok, t.tt, out, r0, r1, bias, act,
                   y + (int64_t(offsets[t.e]) + t.tok0) * out);
      }
    });
    return !scr.failed;
  }

  // Register tiles (R rows × TV vectors of tokens). The largest TV allowed
  // falls with density: a column block's xp slice must stay in L1, so sparser
  // patterns get fewer values per block, and the accumulator load/store per
  // block must stay small against the FMAs.
  static int tile_tv(int64_t m, int n, int mm, bool tuned) {
    const int64_t need = nm_cdiv(m, W);
    // Tuned tiles take TV = 1, 2, 4, 8 here (split_tiles also makes 5-7, 9
    // and 10 wide ones for the denser patterns).
    const int tv_max = 2 * n >= mm ? 8 : 4 * n >= mm ? (tuned ? 4 : 6) : 4;
    static const int kTvs[] = {1, 2, 4, 6, 8};
    for (int tv : kTvs)
      if (tv >= need && tv <= tv_max && !(tuned && tv == 6)) return tv;
    int best = 4;
    int64_t best_pad = nm_cdiv(need, 4) * 4;
    for (int tv : kTvs) {
      if (tv < 4 || tv > tv_max || (tuned && tv == 6)) continue;
      int64_t pad = nm_cdiv(need, tv) * tv;
      if (pad <= best_pad) best = tv, best_pad = pad;
    }
    return best;
  }

  // Tokens up to which the row-streaming kernel beats the tiles: it pays per
  // token a few window loads and permutes per 8 values, the tiles a broadcast
  // and one FMA per value whatever the token count (up to a vector).
  template <class P>
  static int64_t small_tokens() {
    if constexpr (P::kTuned) {
      return NmSmall<V>::max_tokens(P::CC / 8);
    } else {
      return 2;
    }
  }

  template <class P>
  static bool forward(const PackedNm& w, const float* x, int64_t m, const float* bias, Activation act, float* y) {
    const int n = w.shape.n, mm = w.shape.m;
    if (m <= small_tokens<P>()) {
      switch (m) {
        case 1: run_small<P, 1>(w, x, m, bias, act, y); break;
        case 2: run_small<P, 2>(w, x, m, bias, act, y); break;
        case 3: run_small<P, 3>(w, x, m, bias, act, y); break;
        default: run_small<P, 4>(w, x, m, bias, act, y); break;
      }
      return true;
    }
    const PackedNm* ws[1] = {&w};
    const int32_t off[2] = {0, int32_t(m)};
    return run_grouped<P>(ws, 1, off, x, 0, act, y, tile_tv(m, n, mm, P::kTuned), bias);
  }

  // Calls f(R, TV, S) (as integral constants) for the register tile of
  // width tv (a split_tiles width).
  template <class P, class F>
  static bool with_tv(int tv, F&& f) {
    using I1 = std::integral_constant<int, 1>;
    using I2 = std::integral_constant<int, 2>;
    using I4 = std::integral_constant<int, 4>;
    // Tuned 8-10-vector tiles: two rows where there are 32 vector registers
    // (AVX-512: 16-20 accumulators), halving the per-call overhead of the
    // short column blocks; measured on Zen 5, 2 threads: 2:4 4096² at 128-512
    // tokens 1.03-1.05x, 4096×14336 1.01x, grouped experts unchanged.
    using RW = std::integral_constant<int, (W >= 16 ? 2 : 1)>;
    switch (tv) {
      case 1: return f(I4{}, I1{}, I2{});
      case 2: return f(I4{}, I2{}, I1{});
      // tuned: rows of a tile share a panel (R | 4)
      case 4:
        if constexpr (P::kTuned) return f(I2{}, I4{}, I1{});
        else return f(std::integral_constant<int, 3>{}, I4{}, I1{});
      // one row, tokens wide; under 8 vectors two chains per row (FMA latency)
      case 5:
        if constexpr (P::kTuned) return f(I1{}, std::integral_constant<int, 5>{}, I2{});
        [[fallthrough]];
      case 6:
        if constexpr (!P::kTuned) return f(I2{}, std::integral_constant<int, 6>{}, I1{});
        else return f(I1{}, std::integral_constant<int, 6>{}, I2{});
      case 7:
        if constexpr (P::kTuned) return f(I1{}, std::integral_constant<int, 7>{}, I2{});
        [[fallthrough]];
      case 9:
        if constexpr (P::kTuned) return f(RW{}, std::integral_constant<int, 9>{}, I1{});
        [[fallthrough]];
      case 10:
        if constexpr (P::kTuned) return f(RW{}, std::integral_constant<int, 10>{}, I1{});
        [[fallthrough]];
      default:
        if constexpr (P::kTuned) return f(RW{}, std::integral_constant<int, 8>{}, I1{});
        else return f(I1{}, std::integral_constant<int, 8>{}, I1{});
    }
  }

  // Grouped forward (see run_grouped). Decode-sized groups (every expert at
  // most small_tokens rows) run the row-streaming kernel expert by expert;
  // otherwise one tiled pass over all experts, its tile chosen by the mean
  // rows of the experts that have any.
  template <class P>
  static bool grouped(const PackedNm* const* ws, int64_t experts, const int32_t* offsets, const float* xs,
                      int64_t gate_rows, Activation act, float* y) {
    const PackedNm& w0 = *ws[0];
    const int n = w0.shape.n, mm = w0.shape.m;
    int64_t total = 0, busy = 0, most = 0;
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t r = offsets[e + 1] - offsets[e];
      total += r, busy += r > 0, most = nm_max(most, r);
    }
    if (total == 0) return true;
    const int64_t out = gate_rows > 0 ? gate_rows : w0.shape.rows;
    if (most <= small_tokens<P>()) {
      float* tmp = gate_rows > 0 ? thread_workspace(size_t(most * 2 * gate_rows), 0) : nullptr;
      if (gate_rows > 0 && !tmp) return false;
      for (int64_t e = 0; e < experts; ++e) {
        const int64_t r = offsets[e + 1] - offsets[e];
        if (r == 0) continue;
        const float* xe = xs + int64_t(offsets[e]) * w0.shape.cols;
        float* ye = y + int64_t(offsets[e]) * out;
        if (gate_rows == 0) {
          if (!forward<P>(*ws[e], xe, r, nullptr, act, ye)) return false;
          continue;
        }
        if (!forward<P>(*ws[e], xe, r, nullptr, Activation::kNone, tmp)) return false;
        for (int64_t i = 0; i < r; ++i) {
          std::memcpy(ye + i * out, tmp + i * 2 * out, sizeof(float) * size_t(out));
          sk_gate_row(ye + i * out, tmp + i * 2 * out + out, out, act);
        }
      }
      return true;
    }
    return run_grouped<P>(ws, experts, offsets, xs, gate_rows, act, y, tile_tv(nm_cdiv(total, busy), n, mm, P::kTuned),
                          nullptr);
  }

  // The expert block's two projections: y = down_e(act(gate_e·x) ⊙ up_e·x)
  // over each expert's rows, gu[e] stacking gate over up rows ([2·ffn, in]),
  // dn[e] [out, ffn], both of pattern P. The tiled path hands the gated
  // sums to the down projection in its packed tile layout (run_grouped's
  // xp_out / xp_in): the same tiles, the same values, bit for bit what the
  // two grouped calls give, without transposing h into rows and back.
  template <class P>
  static bool gated_down(const PackedNm* const* gu, const PackedNm* const* dn, int64_t experts, const int32_t* offsets,
                         const float* xs, Activation act, float* y) {
    const int n = gu[0]->shape.n, mm = gu[0]->shape.m;
    const int64_t ffn = gu[0]->shape.rows / 2;
    int64_t total = 0, busy = 0, most = 0;
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t r = offsets[e + 1] - offsets[e];
      total += r, busy += r > 0, most = nm_max(most, r);
    }
    if (total == 0) return true;
    if (most <= small_tokens<P>()) {
      float* h = thread_workspace(size_t(total * ffn), 3);
      return h && grouped<P>(gu, experts, offsets, xs, ffn, act, h) &&
             grouped<P>(dn, experts, offsets, h, 0, Activation::kNone, y);
    }
    // Both calls cut the same tiles (same offsets, pattern and tile width).
    const int tv = tile_tv(nm_cdiv(total, busy), n, mm, P::kTuned);
    float* hp = nullptr;
    return run_grouped<P>(gu, experts, offsets, xs, ffn, act, nullptr, tv, nullptr, nullptr, &hp) &&
           run_grouped<P>(dn, experts, offsets, nullptr, 0, Activation::kNone, y, tv, nullptr, hp, nullptr);
  }

  // ---- transposed: dx [m, cols] = dy [m, rows] · W
  //
  // Each task owns a block of whole groups (columns) and a token tile, and
  // walks all rows in order, adding v · dy[:, row] into the block's columns
  // (an L1 scratch [columns][TT]): every dx element is summed over rows in
  // increasing order, whatever the blocking.

  template <class P, int TV>
  static bool run_transposed(const PackedNm& w, const float* dy, int64_t m, float* dx) {
    constexpr int TT = TV * W;
    using T = typename V::T;
    const int64_t rows = w.shape.rows, K = w.shape.cols, n = w.shape.n, mm = w.shape.m, groups = K / mm;
    const int64_t tiles = nm_cdiv(m, TT);
    float* dyp = thread_workspace(size_t(tiles * TT * rows), 0);
    if (!dyp) return false;
    nm_pack_tiles(dy, m, rows, TT, dyp);
    // Groups per block: chunk-aligned (8/n groups) for tuned patterns.
    const int64_t align = P::kTuned ? 8 / n : 1;
    const int64_t gb = nm_max(align, (Cfg::kL1Floats / TT / mm) / align * align);
    const int64_t n_blocks = nm_cdiv(groups, gb);
    Scratch scr(gb * mm * TT);
    if (scr.failed) return false;
    ThreadPool::instance().parallel_for(n_blocks * tiles, [&](int64_t task, int worker) {
      const int64_t b = task / tiles, tt = task % tiles;
      const int64_t g0 = b * gb, g1 = nm_min(groups, g0 + gb), cb = g0 * mm, span = (g1 - g0) * mm;
      float* sc = scr.get(worker);
      if (!sc) return;
      for (int64_t i = 0; i < span * TT; ++i) sc[i] = 0.f;
      const float* dt = dyp + tt * rows * TT;
      for (int64_t o = 0; o < rows; ++o) {
        T d[TV];
#pragma GCC unroll 16
        for (int v = 0; v < TV; ++v) d[v] = V::load(dt + o * TT + v * W);
        typename P::Row row = P::row(w, o);
        nm_for_values<P>(row, g0 * n, g1 * n, [&](int64_t j, int64_t col) {
          T bv = V::bcast(P::value(row, j));
          float* s = sc + (col - cb) * TT;
#pragma GCC unroll 16
          for (int v = 0; v < TV; ++v) V::store(s + v * W, V::fma(bv, d[v], V::load(s + v * W)));
        });
      }
      for (int64_t t = 0; t < TT; ++t) {
        int64_t tok = tt * TT + t;
        if (tok >= m) break;
        float* out = dx + tok * K + cb;
        for (int64_t i = 0; i < span; ++i) out[i] = sc[i * TT + t];
      }
    });
    return !scr.failed;
  }

  static int transposed_tv(int64_t m) {
    int64_t need = nm_cdiv(m, W);
    return need <= 1 ? 1 : need <= 2 ? 2 : 4;
  }

  template <class P>
  static bool transposed(const PackedNm& w, const float* dy, int64_t m, float* dx) {
    switch (transposed_tv(m)) {
      case 1: return run_transposed<P, 1>(w, dy, m, dx);
      case 2: return run_transposed<P, 2>(w, dy, m, dx);
      default: return run_transposed<P, 4>(w, dy, m, dx);
    }
  }

  // ---- entry points (the NmKernels table); false: out of memory

  static bool linear(const PackedNm& w, const float* x, int64_t m, const float* bias, Activation act, float* y) {
#define SK_NM_CASE(N_, M_) \
  if (w.shape.n == N_ && w.shape.m == M_) return forward<TunedPattern<N_, M_>>(w, x, m, bias, act, y);
    SPARSEKIT_NM_TUNED_PATTERNS(SK_NM_CASE)
#undef SK_NM_CASE
    return forward<GenericPattern>(w, x, m, bias, act, y);
  }

  static bool grouped_linear(const PackedNm* const* ws, int64_t experts, const int32_t* offsets, const float* xs,
                             int64_t gate_rows, Activation act, float* y) {
    const NmShape& sh = ws[0]->shape;
#define SK_NM_CASE(N_, M_) \
  if (sh.n == N_ && sh.m == M_) return grouped<TunedPattern<N_, M_>>(ws, experts, offsets, xs, gate_rows, act, y);
    SPARSEKIT_NM_TUNED_PATTERNS(SK_NM_CASE)
#undef SK_NM_CASE
    return grouped<GenericPattern>(ws, experts, offsets, xs, gate_rows, act, y);
  }

  static bool grouped_gated_down(const PackedNm* const* gu, const PackedNm* const* dn, int64_t experts,
                                 const int32_t* offsets, const float* xs, Activation act, float* y) {
    const NmShape& sh = gu[0]->shape;
    if (dn[0]->shape.n == sh.n && dn[0]->shape.m == sh.m) {
#define SK_NM_CASE(N_, M_) \
  if (sh.n == N_ && sh.m == M_) return gated_down<TunedPattern<N_, M_>>(gu, dn, experts, offsets, xs, act, y);
      SPARSEKIT_NM_TUNED_PATTERNS(SK_NM_CASE)
#undef SK_NM_CASE
      return gated_down<GenericPattern>(gu, dn, experts, offsets, xs, act, y);
    }
    // Different patterns: the two grouped calls through h [rows, ffn].
    float* h = thread_workspace(size_t(nm_max(1, offsets[experts]) * (sh.rows / 2)), 3);
    return h && grouped_linear(gu, experts, offsets, xs, sh.rows / 2, act, h) &&
           grouped_linear(dn, experts, offsets, h, 0, Activation::kNone, y);
  }

  static bool linear_transposed(const PackedNm& w, const float* dy, int64_t m, float* dx) {
#define SK_NM_CASE(N_, M_) \
  if (w.shape.n == N_ && w.shape.m == M_) return transposed<TunedPattern<N_, M_>>(w, dy, m, dx);
    SPARSEKIT_NM_TUNED_PATTERNS(SK_NM_CASE)
#undef SK_NM_CASE
    return transposed<GenericPattern>(w, dy, m, dx);
  }
};

}  // namespace
}  // namespace sparsekit
