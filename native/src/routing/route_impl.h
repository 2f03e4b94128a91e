// The routing row kernels, written once and instantiated in each ISA's file
// (route_scalar.cc, route_avx2.cc, ...), compiled there with that ISA's flags.
//
// Per token: routing logits (jitter, noise) → scores (softmax / sigmoid over
// all experts, only where needed) → selection keys → group-limited top-k →
// weights (renormalise, scale) → the block's histogram and loss partials.
//
// The exp/softmax/sigmoid/max rows use GCC vector extensions of LANES floats,
// which each ISA file's flags lower to its own instructions (AVX2 ymm, AVX-512
// zmm, NEON q, SSE2 pairs in the baseline build), exp from simd.h: a scalar exp loop does
// not auto-vectorise (GCC threads the clamps into constant branches and will
// not if-convert the float→int conversion without -fno-trapping-math). Tails
// go through the same vector code on a padded copy, and single values through
// lane 0 of it, so equal inputs give equal scores wherever they sit in a row.
// Reductions keep LANES partial sums combined in a fixed order: the same bits
// whichever thread runs the row. The selection itself (top-k over packed
// 64-bit keys) is branchy scalar code, the same for every ISA.
//
// Everything here has internal linkage (see the note in simd.h): the std
// algorithms are only instantiated with comparator types from this anonymous
// namespace, so no ISA file's copy can be picked for another.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../common/simd.h"
#include "route_job.h"
#include "sparsekit/memory.h"

namespace sparsekit {
namespace {  // internal linkage: see simd.h

template <int W>
struct RkVec : SkVec<W> {
  typedef double D __attribute__((vector_size(W * 8)));
};

struct RkKeyGreater {
  bool operator()(uint64_t a, uint64_t b) const { return a > b; }
};

// Inserts `key` into buf[0..n) kept in descending order, holding at most k.
SK_INLINE int64_t rk_insert(uint64_t* buf, int64_t n, int64_t k, uint64_t key) {
  if (n == k) {
    if (key <= buf[k - 1]) return n;
    n = k - 1;
  }
  int64_t i = n;
  while (i > 0 && buf[i - 1] < key) {
    buf[i] = buf[i - 1];
    --i;
  }
  buf[i] = key;
  return n + 1;
}

template <class Cfg>
struct RouteImpl {
  static constexpr int L = Cfg::LANES;

  // ---- vectorisable row primitives -----------------------------------------

  using F = typename RkVec<L>::F;
  using I = typename RkVec<L>::I;
  using D = typename RkVec<L>::D;

  static SK_INLINE F vsplat(float a) { return F{} + a; }
  static SK_INLINE F vload(const float* p) {
    F v;
    std::memcpy(&v, p, sizeof(F));
    return v;
  }
  // Lanes [i, i + L) of x; lanes at or past n read `fill`.
  static SK_INLINE F vload_part(const float* x, int64_t i, int64_t n, float fill) {
    if (i + L <= n) return vload(x + i);
    alignas(64) float tmp[L];
    for (int l = 0; l < L; ++l) tmp[l] = i + l < n ? x[i + l] : fill;
    return vload(tmp);
  }
  static SK_INLINE void vstore_part(float* out, int64_t i, int64_t n, F v) {
    if (i + L <= n) {
      std::memcpy(out + i, &v, sizeof(F));
      return;
    }
    for (int l = 0; l < L && i + l < n; ++l) out[i + l] = v[l];
  }

  // exp on LANES values (sk_vexp in simd.h: Cephes-style range reduction and
  // a degree-6 polynomial, relative error ~2e-7, clamped to [−87, 88]).
  static SK_INLINE F vexp(F x) { return sk_vexp<F, I>(x); }
  static SK_INLINE F vsigmoid(F x) { return 1.0f / (1.0f + vexp(-x)); }
  static SK_INLINE float exp1(float x) { return vexp(vsplat(x))[0]; }
  static SK_INLINE float sigmoid1(float x) { return vsigmoid(vsplat(x))[0]; }

  static SK_INLINE float row_max(const float* __restrict x, int64_t n) {
    F m = vsplat(-INFINITY);
    for (int64_t i = 0; i < n; i += L) {
      F v = vload_part(x, i, n, -INFINITY);
      m = v > m ? v : m;
    }
    float r = m[0];
    for (int l = 1; l < L; ++l) r = m[l] > r ? m[l] : r;
    return r;
  }

  static SK_INLINE float row_sum(const float* __restrict x, int64_t n) {
    float acc[L];
    for (int l = 0; l < L; ++l) acc[l] = 0.f;
    int64_t i = 0;
    for (; i + L <= n; i += L) {
#pragma GCC unroll 16
      for (int l = 0; l < L; ++l) acc[l] += x[i + l];
    }
    float s = 0.f;
    for (int l = 0; l < L; ++l) s += acc[l];
    for (; i < n; ++i) s += x[i];
    return s;
  }

  static SK_INLINE float row_dot(const float* __restrict x, const float* __restrict y, int64_t n) {
    float acc[L];
    for (int l = 0; l < L; ++l) acc[l] = 0.f;
    int64_t i = 0;
    for (; i + L <= n; i += L) {
#pragma GCC unroll 16
      for (int l = 0; l < L; ++l) acc[l] += x[i + l] * y[i + l];
    }
    float s = 0.f;
    for (int l = 0; l < L; ++l) s += acc[l];
    for (; i < n; ++i) s += x[i] * y[i];
    return s;
  }

  // out = exp(x − shift); returns Σ out accumulated in float64 and rounded
  // once: the same float for any order of the same values (to within a double
  // rounding), so two tokens whose logits are permutations of each other get
  // bitwise equal softmax scores. Expert choice and score-based dropping
  // compare scores across tokens.
  static SK_INLINE float row_exp(const float* __restrict x, int64_t n, float shift, float* __restrict out) {
    D acc = D{};
    double tail = 0.0;
    for (int64_t i = 0; i < n; i += L) {
      F e = vexp(vload_part(x, i, n, shift) - shift);
      vstore_part(out, i, n, e);
      if (i + L <= n) {
        acc += __builtin_convertvector(e, D);
      } else {
        for (int l = 0; i + l < n; ++l) tail += static_cast<double>(e[l]);
      }
    }
    double s = 0.0;
    for (int l = 0; l < L; ++l) s += acc[l];
    return static_cast<float>(s + tail);
  }

  static SK_INLINE void row_sigmoid(const float* __restrict x, int64_t n, float* __restrict out) {
    for (int64_t i = 0; i < n; i += L) vstore_part(out, i, n, vsigmoid(vload_part(x, i, n, 0.f)));
  }

  // ---- scratch ---------------------------------------------------------------

  struct Scratch {
    float *lp, *ex, *sg, *sel;
    uint64_t *keys, *cand, *buf, *gkeys;
    uint8_t* gchosen;
  };

  // Per-thread scratch (thread_workspace slot 2), in u64 units where noted:
  // four float rows of E (l', exp, sigmoid, selection values); keys: E u64 or the chosen-group ranges (2G + 2
  // int64); cand: E + 1 u64 (the branch-free filter stores one past its
  // count); buf: max(k, G) u64 (top-k, or the chosen groups); G group keys
  // and G flags.
  static bool get_scratch(const RouteJob& J, Scratch* s) {
    const int64_t E = J.experts;
    const int64_t G = J.opts->groups > 0 ? J.opts->groups : 1;
    const int64_t K = J.k > G ? J.k : G;
    auto up16 = [](int64_t n) { return (n + 15) / 16 * 16; };
    const int64_t rowf = up16(E);
    const int64_t keys_u64 = up16(E + 2 * G + 2), cand_u64 = up16(E + 1), buf_u64 = up16(K), g_u64 = up16(G);
    int64_t need = 4 * rowf + 2 * (keys_u64 + cand_u64 + buf_u64 + g_u64) + up16(G);
    float* base = thread_workspace(static_cast<size_t>(need), 2);
    if (!base) {
      __atomic_store_n(&J.failed, 1, __ATOMIC_RELAXED);
      return false;
    }
    s->lp = base;
    s->ex = base + rowf;
    s->sg = base + 2 * rowf;
    s->sel = base + 3 * rowf;
    float* p = base + 4 * rowf;
    s->keys = reinterpret_cast<uint64_t*>(p);
    p += 2 * keys_u64;
    s->cand = reinterpret_cast<uint64_t*>(p);
    p += 2 * cand_u64;
    s->buf = reinterpret_cast<uint64_t*>(p);
    p += 2 * buf_u64;
    s->gkeys = reinterpret_cast<uint64_t*>(p);
    p += 2 * g_u64;
    s->gchosen = reinterpret_cast<uint8_t*>(p);
    return true;
  }

  // ---- routing logits: l' = l·m + z·softplus(noise_logits) -------------------

  static SK_INLINE float jitter_factor(const RouteJob& J, uint32_t ht, int64_t e) {
    double eps = J.opts->jitter;
    double u = rk_uniform(rk_mix32(ht ^ static_cast<uint32_t>(e)));
    return static_cast<float>(1.0 - eps + 2.0 * eps * u);
  }

  static const float* routing_logits(const RouteJob& J, int64_t t, float* buf) {
    const RouteOptions& o = *J.opts;
    const int64_t E = J.experts;
    const float* l = J.logits + t * E;
    if (o.jitter == 0.0 && !o.noise_logits) return l;
    if (o.jitter != 0.0) {
      uint32_t ht = rk_mix32(J.key_jitter ^ static_cast<uint32_t>(t));
      for (int64_t e = 0; e < E; ++e) buf[e] = l[e] * jitter_factor(J, ht, e);
    } else {
      std::memcpy(buf, l, static_cast<size_t>(E) * 4);
    }
    if (o.noise_logits) {
      // Shazeer et al. 2017: H = logits + N(0,1)·softplus(x·W_noise). Normals by
      // Box–Muller from two uniforms per element, in float64 (not a hot path).
      const float* nl = o.noise_logits + t * E;
      uint32_t hn = rk_mix32(J.key_noise ^ static_cast<uint32_t>(t));
      for (int64_t e = 0; e < E; ++e) {
        double u1 = rk_uniform(rk_mix32(hn ^ static_cast<uint32_t>(2 * e)));
        double u2 = rk_uniform(rk_mix32(hn ^ static_cast<uint32_t>(2 * e + 1)));
        double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
        double x = nl[e];
        double sp = x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x));
        buf[e] = static_cast<float>(static_cast<double>(buf[e]) + z * sp);
      }
    }
    return buf;
  }

  // Multiplies a gradient row by d l' / d l (the jitter factors).
  static void apply_jitter(const RouteJob& J, int64_t t, float* g) {
    if (J.opts->jitter == 0.0) return;
    uint32_t ht = rk_mix32(J.key_jitter ^ static_cast<uint32_t>(t));
    for (int64_t e = 0; e < J.experts; ++e) g[e] *= jitter_factor(J, ht, e);
  }

  // ---- per-token statistics ---------------------------------------------------

  struct RowStats {
    float max = 0, sum = 0, inv_sum = 0;  // softmax of l': ex[e] = exp(l'_e − max), Σ = sum
    bool has_softmax = false;
    bool has_sigmoid = false;  // sg[e] = σ(l'_e)
  };

  static SK_INLINE void ensure_softmax(const float* lp, int64_t E, float* ex, RowStats* st) {
    if (st->has_softmax) return;
    st->max = row_max(lp, E);
    st->sum = row_exp(lp, E, st->max, ex);
    st->inv_sum = 1.0f / st->sum;
    st->has_softmax = true;
  }
  static SK_INLINE void ensure_sigmoid(const float* lp, int64_t E, float* sg, RowStats* st) {
    if (st->has_sigmoid) return;
    row_sigmoid(lp, E, sg);
    st->has_sigmoid = true;
  }

  // Adds this token's router probabilities p (softmax of l', or σ(l')/Σσ(l')
  // for sigmoid scores) and logsumexp² to the block's partial sums.
  static void add_loss_partials(const RouteJob& J, const float* lp, Scratch& s, RowStats& st, double* psum,
                                double* zsum) {
    const int64_t E = J.experts;
    if (psum) {
      if (J.opts->score == RouteScore::kSigmoid) {
        ensure_sigmoid(lp, E, s.sg, &st);
        double inv = 1.0 / static_cast<double>(row_sum(s.sg, E));
        for (int64_t e = 0; e < E; ++e) psum[e] += static_cast<double>(s.sg[e]) * inv;
      } else {
        ensure_softmax(lp, E, s.ex, &st);
        double inv = 1.0 / static_cast<double>(st.sum);
        for (int64_t e = 0; e < E; ++e) psum[e] += static_cast<double>(s.ex[e]) * inv;
      }
    }
    if (zsum) {
      ensure_softmax(lp, E, s.ex, &st);
      double lse = static_cast<double>(st.max) + std::log(static_cast<double>(st.sum));
      *zsum += lse * lse;
    }
  }

  // ---- selection --------------------------------------------------------------

  // Top-k over the keys of `cand` (n of them) into s.buf, descending.
  static void topk_keys(const uint64_t* cand, int64_t n, int64_t k, uint64_t* buf, uint64_t* tmp) {
    if (k <= 16) {
      int64_t m = 0;
      for (int64_t i = 0; i < n; ++i) {
        uint64_t c = cand[i];
        if (m == k && c <= buf[k - 1]) continue;
        m = rk_insert(buf, m, k, c);
      }
      return;
    }
    // Large k (tests, unusual routers): partial selection, then order the k.
    if (tmp != cand) std::memcpy(tmp, cand, static_cast<size_t>(n) * 8);
    std::nth_element(tmp, tmp + (k - 1), tmp + n, RkKeyGreater());
    std::sort(tmp, tmp + k, RkKeyGreater());
    std::memcpy(buf, tmp, static_cast<size_t>(k) * 8);
  }

  // Bit l set ⇔ v[l] ≥ t[l] (false for NaN).
  static SK_INLINE uint32_t mask_ge(F v, F t) {
#if defined(__AVX512F__)
    if constexpr (L == 16) return _mm512_cmp_ps_mask(reinterpret_cast<__m512&>(v), reinterpret_cast<__m512&>(t), _CMP_GE_OQ);
#endif
#if defined(__AVX2__)
    if constexpr (L == 8) {
      I m = v >= t;
      return static_cast<uint32_t>(_mm256_movemask_ps(reinterpret_cast<__m256&>(m)));
    }
#endif
    I m = v >= t;
    uint32_t r = 0;
    for (int l = 0; l < L; ++l) r |= static_cast<uint32_t>(m[l] & 1) << l;
    return r;
  }

  static SK_INLINE float hmax(F m) {
    float r = m[0];
    for (int l = 1; l < L; ++l) r = m[l] > r ? m[l] : r;
    return r;
  }

  // Top-k of sel[e] over e in the ranges [r[2i], r[2i+1]) into s.buf as
  // keys, best first.
  //
  // For k ≤ LANES, a vector pass first finds the k-th largest of the
  // per-lane maxima: the k best lanes each hold a distinct candidate at least
  // that large, so it is a lower bound of the k-th largest value and every
  // top-k candidate passes a `≥` filter on it. The filter (a vector compare,
  // then the set bits) keeps a few dozen of the candidates; only those go
  // through the insertion.
  static void topk_ranges(const float* sel, const int64_t* r, int64_t nr, int64_t k, Scratch& s) {
    float thr = -INFINITY;
    if (k <= L) {
      F m = vsplat(-INFINITY);
      for (int64_t q = 0; q < nr; ++q)
        for (int64_t i = r[2 * q]; i < r[2 * q + 1]; i += L) {
          F v = vload_part(sel, i, r[2 * q + 1], -INFINITY);
          m = v > m ? v : m;
        }
      float lm[L];
      for (int l = 0; l < L; ++l) {
        float v = m[l];
        int j = l;
        while (j > 0 && lm[j - 1] < v) {
          lm[j] = lm[j - 1];
          --j;
        }
        lm[j] = v;
      }
      thr = lm[k - 1];
    }
    uint64_t* c = s.cand;
    int64_t n = 0;
    const F vthr = vsplat(thr);
    for (int64_t q = 0; q < nr; ++q) {
      const int64_t b = r[2 * q + 1];
      for (int64_t i = r[2 * q]; i < b; i += L) {
        F v = vload_part(sel, i, b, -INFINITY);
        uint32_t msk = mask_ge(v, vthr);
        if (i + L > b) msk &= (1u << (b - i)) - 1u;  // lanes past the range
        while (msk) {
          int l = __builtin_ctz(msk);
          msk &= msk - 1u;
          c[n++] = rk_key(v[l], static_cast<uint32_t>(i + l));
        }
      }
    }
    if (n < k) {
      // Only with NaN selection values (overflowed noise or bias): take
      // every candidate; NaN keys sort last.
      n = 0;
      for (int64_t q = 0; q < nr; ++q)
        for (int64_t e = r[2 * q]; e < r[2 * q + 1]; ++e) c[n++] = rk_key(sel[e], static_cast<uint32_t>(e));
    }
    topk_keys(c, n, k, s.buf, c);
  }

  // Expert ids of the top-k of `sel` (with group-limited selection if asked)
  // into s.buf as keys, descending.
  static void select(const RouteJob& J, const float* sel, Scratch& s) {
    const RouteOptions& o = *J.opts;
    const int64_t E = J.experts, k = J.k;
    if (o.groups <= 1) {
      int64_t all[2] = {0, E};
      topk_ranges(sel, all, 1, k, s);
      return;
    }
    const int64_t G = o.groups, gs = E / G, M = o.topk_groups;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t g0 = g * gs, g1 = g0 + gs;
      float score;
      if (o.group_score == GroupScore::kMax) {
        F m = vsplat(-INFINITY);
        for (int64_t i = g0; i < g1; i += L) {
          F v = vload_part(sel, i, g1, -INFINITY);
          m = v > m ? v : m;
        }
        score = hmax(m);
      } else {
        // Sum of the two best scores (DeepSeek-V3): per-lane best and
        // second best, then the top two of those.
        F a = vsplat(-INFINITY), b2 = vsplat(-INFINITY);
        for (int64_t i = g0; i < g1; i += L) {
          F v = vload_part(sel, i, g1, -INFINITY);
          F lo = v < a ? v : a;
          b2 = lo > b2 ? lo : b2;
          a = v > a ? v : a;
        }
        int best = 0;
        for (int l = 1; l < L; ++l)
          if (a[l] > a[best]) best = l;
        float second = b2[best];
        for (int l = 0; l < L; ++l)
          if (l != best && a[l] > second) second = a[l];
        score = a[best] + second;
      }
      s.gkeys[g] = rk_key(score, static_cast<uint32_t>(g));  // ties to the lower group
    }
    // Chosen groups: the M best group keys, as candidate ranges.
    uint64_t* gbuf = s.buf;  // free until the final top-k below
    int64_t m = 0;
    for (int64_t g = 0; g < G; ++g) m = rk_insert(gbuf, m, M, s.gkeys[g]);
    for (int64_t g = 0; g < G; ++g) s.gchosen[g] = 0;
    for (int64_t i = 0; i < M; ++i) s.gchosen[rk_key_index(gbuf[i])] = 1;
    int64_t* ranges = reinterpret_cast<int64_t*>(s.keys);
    int64_t nr = 0;
    for (int64_t g = 0; g < G; ++g) {
      if (!s.gchosen[g]) continue;
      if (nr > 0 && ranges[2 * nr - 1] == g * gs) {
        ranges[2 * nr - 1] += gs;  // merge with the previous chosen group
      } else {
        ranges[2 * nr] = g * gs;
        ranges[2 * nr + 1] = g * gs + gs;
        ++nr;
      }
    }
    topk_ranges(sel, ranges, nr, k, s);
  }

  // ---- top-k and hash modes: one block --------------------------------------

  static void forward_block(const RouteJob& J, int64_t b) {
    Scratch s;
    if (!get_scratch(J, &s)) return;
    const RouteOptions& o = *J.opts;
    const int64_t E = J.experts, k = J.k;
    int64_t t0, t1;
    rk_block_range(J, b, &t0, &t1);
    int32_t* counts = J.counts + b * E;
    int32_t* sel_counts = J.sel_counts ? J.sel_counts + b * E : nullptr;
    double* psum = J.psum ? J.psum + b * E : nullptr;
    double* zsum = J.zsum ? J.zsum + b : nullptr;
    double* wsum = J.wsum ? J.wsum + b * E : nullptr;
    const bool hash = o.mode == RouteMode::kHash;
    const bool before = o.score_before_topk || hash;

    for (int64_t t = t0; t < t1; ++t) {
      const float* lp = routing_logits(J, t, s.lp);
      RowStats st;
      int32_t* ids = J.expert_ids + t * k;
      float* wt = J.weights + t * k;

      // Which experts.
      if (hash) {
        uint32_t tok = static_cast<uint32_t>(o.token_ids[t]);
        uint32_t h = rk_mix32(rk_mix32(J.key_hash ^ tok) ^ 0u);
        int64_t e0 = static_cast<int64_t>((static_cast<uint64_t>(h) * static_cast<uint64_t>(E)) >> 32);
        for (int64_t j = 0; j < k; ++j) ids[j] = static_cast<int32_t>((e0 + j) % E);
      } else {
        const float* sel;
        if (J.select_on_scores) {
          float* __restrict sv = s.sel;
          const float* __restrict bias = o.selection_bias;
          if (o.score == RouteScore::kSoftmax) {
            ensure_softmax(lp, E, s.ex, &st);
            const float* __restrict ex = s.ex;
            const float inv = st.inv_sum;
            if (bias)
              for (int64_t e = 0; e < E; ++e) sv[e] = ex[e] * inv + bias[e];
            else
              for (int64_t e = 0; e < E; ++e) sv[e] = ex[e] * inv;
          } else {
            ensure_sigmoid(lp, E, s.sg, &st);
            const float* __restrict sg = s.sg;
            if (bias)
              for (int64_t e = 0; e < E; ++e) sv[e] = sg[e] + bias[e];
            else
              sv = s.sg;
          }
          sel = sv;
        } else if (o.selection_bias) {
          for (int64_t e = 0; e < E; ++e) s.sel[e] = lp[e] + o.selection_bias[e];
          sel = s.sel;
        } else {
          sel = lp;  // softmax and sigmoid are monotone: same order, exact ties
        }
        select(J, sel, s);
        for (int64_t j = 0; j < k; ++j) ids[j] = static_cast<int32_t>(rk_key_index(s.buf[j]));
      }

      // Raw weights (before renormalisation and scaling).
      if (before) {
        switch (o.score) {
          case RouteScore::kSoftmax:
            ensure_softmax(lp, E, s.ex, &st);
            for (int64_t j = 0; j < k; ++j) wt[j] = s.ex[ids[j]] * st.inv_sum;
            break;
          case RouteScore::kSigmoid:
            if (st.has_sigmoid)
              for (int64_t j = 0; j < k; ++j) wt[j] = s.sg[ids[j]];
            else
              for (int64_t j = 0; j < k; ++j) wt[j] = sigmoid1(lp[ids[j]]);
            break;
          case RouteScore::kNone:
            // Hash layers have no gate (Roller et al. 2021): weight 1.
            for (int64_t j = 0; j < k; ++j) wt[j] = hash ? 1.0f : lp[ids[j]];
            break;
        }
      } else {
        switch (o.score) {
          case RouteScore::kSoftmax: {
            float m = lp[ids[0]];
            for (int64_t j = 1; j < k; ++j) m = lp[ids[j]] > m ? lp[ids[j]] : m;
            float sum = 0.f;
            for (int64_t j = 0; j < k; ++j) {
              wt[j] = exp1(lp[ids[j]] - m);
              sum += wt[j];
            }
            float inv = 1.0f / sum;
            for (int64_t j = 0; j < k; ++j) wt[j] *= inv;
            break;
          }
          case RouteScore::kSigmoid:
            for (int64_t j = 0; j < k; ++j) wt[j] = sigmoid1(lp[ids[j]]);
            break;
          case RouteScore::kNone:
            for (int64_t j = 0; j < k; ++j) wt[j] = lp[ids[j]];
            break;
        }
      }

      // GShard (Lepikhin et al. 2020): the 2nd expert is dispatched only if
      // 2·g2 > u, with g2 normalised over the top 2 and u ~ U(0, 1).
      if (J.flags) {
        uint8_t* fl = J.flags + t * k;
        for (int64_t j = 0; j < k; ++j) fl[j] = 0;
        if (o.random_second_expert) {
          double g1 = wt[0], g2 = wt[1];
          double u = rk_uniform(rk_mix32(rk_mix32(J.key_gshard ^ static_cast<uint32_t>(t)) ^ 0u));
          double sum = g1 + g2;
          bool keep = sum != 0.0 && 2.0 * g2 / sum > u;
          if (!keep) fl[1] = 1;
        }
      }
      if (J.slot_score)
        for (int64_t j = 0; j < k; ++j) J.slot_score[t * k + j] = wt[j];

      if (o.renormalize) {
        float sum = 0.f;
        for (int64_t j = 0; j < k; ++j) sum += wt[j];
        if (sum > 0.f) {
          float inv = 1.0f / sum;
          for (int64_t j = 0; j < k; ++j) wt[j] *= inv;
        }
      }
      if (o.scaling_factor != 1.0f)
        for (int64_t j = 0; j < k; ++j) wt[j] *= o.scaling_factor;

      // Histogram and loss partials.
      for (int64_t j = 0; j < k; ++j) {
        int32_t e = ids[j];
        if (!(J.flags && J.flags[t * k + j])) counts[e]++;
        if (sel_counts) sel_counts[e]++;
        if (wsum) wsum[e] += static_cast<double>(wt[j]);
      }
      if (psum || zsum) add_loss_partials(J, lp, s, st, psum, zsum);
    }
  }

  // ---- expert choice: scores of one block ---------------------------------------

  static void score_block(const RouteJob& J, int64_t b) {
    Scratch s;
    if (!get_scratch(J, &s)) return;
    const RouteOptions& o = *J.opts;
    const int64_t E = J.experts;
    int64_t t0, t1;
    rk_block_range(J, b, &t0, &t1);
    double* psum = J.psum ? J.psum + b * E : nullptr;
    double* zsum = J.zsum ? J.zsum + b : nullptr;
    for (int64_t t = t0; t < t1; ++t) {
      const float* lp = routing_logits(J, t, s.lp);
      RowStats st;
      float* out = J.scores + t * E;
      switch (o.score) {
        case RouteScore::kSoftmax:
          ensure_softmax(lp, E, s.ex, &st);
          for (int64_t e = 0; e < E; ++e) out[e] = s.ex[e] * st.inv_sum;
          break;
        case RouteScore::kSigmoid:
          ensure_sigmoid(lp, E, s.sg, &st);
          for (int64_t e = 0; e < E; ++e) out[e] = s.sg[e];
          break;
        case RouteScore::kNone:
          for (int64_t e = 0; e < E; ++e) out[e] = lp[e];
          break;
      }
      if (psum || zsum) add_loss_partials(J, lp, s, st, psum, zsum);
    }
  }

  // ---- gradients ---------------------------------------------------------------

  // g (d loss / d p) → d loss / d l' through p = softmax(l') or σ(l')/Σσ(l').
  static void probs_backward(const RouteJob& J, const float* lp, Scratch& s, RowStats& st, const float* up,
                             float* out) {
    const int64_t E = J.experts;
    if (J.opts->score == RouteScore::kSigmoid) {
      ensure_sigmoid(lp, E, s.sg, &st);
      float ssum = row_sum(s.sg, E);
      float inv = 1.0f / ssum;
      float dot = row_dot(s.sg, up, E) * inv;  // Σ p_i g_i
      for (int64_t e = 0; e < E; ++e) out[e] += s.sg[e] * (1.0f - s.sg[e]) * inv * (up[e] - dot);
    } else {
      ensure_softmax(lp, E, s.ex, &st);
      float dot = row_dot(s.ex, up, E) * st.inv_sum;
      for (int64_t e = 0; e < E; ++e) out[e] += s.ex[e] * st.inv_sum * (up[e] - dot);
    }
  }

  // d loss / d l' for the weights of the experts ids[0..k) (−1 skipped), given
  // d loss / d weights gw[0..k). Adds into out (zeroed by the caller).
  static void weights_backward(const RouteJob& J, const float* lp, Scratch& s, RowStats& st, const int32_t* ids,
                               const float* gw, int64_t k, float* out) {
    const RouteOptions& o = *J.opts;
    const int64_t E = J.experts;
    const float scale = o.scaling_factor;
    const bool hash = o.mode == RouteMode::kHash;
    const bool before = o.score_before_topk || o.mode != RouteMode::kTopK;
    switch (o.score) {
      case RouteScore::kNone:
        if (hash) return;  // constant weights
        for (int64_t j = 0; j < k; ++j)
          if (ids[j] >= 0) out[ids[j]] += scale * gw[j];
        return;
      case RouteScore::kSigmoid: {
        float z = 0.f, dot = 0.f;
        if (o.renormalize) {
          for (int64_t j = 0; j < k; ++j)
            if (ids[j] >= 0) z += sigmoid1(lp[ids[j]]);
          for (int64_t j = 0; j < k; ++j)
            if (ids[j] >= 0) dot += gw[j] * sigmoid1(lp[ids[j]]);
          dot /= z;
        }
        for (int64_t j = 0; j < k; ++j) {
          if (ids[j] < 0) continue;
          float sj = sigmoid1(lp[ids[j]]);
          float ds = o.renormalize ? scale / z * (gw[j] - dot) : scale * gw[j];
          out[ids[j]] += ds * sj * (1.0f - sj);
        }
        return;
      }
      case RouteScore::kSoftmax: {
        if (o.renormalize || !before) {
          // The weights are a softmax over the kept logits only.
          float m = -INFINITY;
          for (int64_t j = 0; j < k; ++j)
            if (ids[j] >= 0) m = lp[ids[j]] > m ? lp[ids[j]] : m;
          if (m == -INFINITY) return;
          float sum = 0.f, dot = 0.f;
          for (int64_t j = 0; j < k; ++j)
            if (ids[j] >= 0) sum += exp1(lp[ids[j]] - m);
          float inv = 1.0f / sum;
          for (int64_t j = 0; j < k; ++j)
            if (ids[j] >= 0) dot += gw[j] * exp1(lp[ids[j]] - m) * inv;
          for (int64_t j = 0; j < k; ++j) {
            if (ids[j] < 0) continue;
            float wj = exp1(lp[ids[j]] - m) * inv;
            out[ids[j]] += scale * wj * (gw[j] - dot);
          }
          return;
        }
        // Weights are the full softmax's entries: Jacobian diag(s) − s·sᵀ.
        ensure_softmax(lp, E, s.ex, &st);
        float dot = 0.f;
        for (int64_t j = 0; j < k; ++j)
          if (ids[j] >= 0) dot += s.ex[ids[j]] * st.inv_sum * scale * gw[j];
        for (int64_t e = 0; e < E; ++e) out[e] -= s.ex[e] * st.inv_sum * dot;
        for (int64_t j = 0; j < k; ++j)
          if (ids[j] >= 0) out[ids[j]] += s.ex[ids[j]] * st.inv_sum * scale * gw[j];
        return;
      }
    }
  }

  static void loss_grad_block(const RouteJob& J, int64_t b) {
    Scratch s;
    if (!get_scratch(J, &s)) return;
    const int64_t E = J.experts;
    int64_t t0, t1;
    rk_block_range(J, b, &t0, &t1);
    float* gw = reinterpret_cast<float*>(s.cand);  // per-slot upstream for importance
    for (int64_t t = t0; t < t1; ++t) {
      const float* lp = routing_logits(J, t, s.lp);
      RowStats st;
      if (J.grad_load_balance) {
        float* g = J.grad_load_balance + t * E;
        for (int64_t e = 0; e < E; ++e) g[e] = 0.f;
        probs_backward(J, lp, s, st, J.lb_up, g);
        apply_jitter(J, t, g);
      }
      if (J.grad_sequence) {
        float* g = J.grad_sequence + t * E;
        for (int64_t e = 0; e < E; ++e) g[e] = 0.f;
        probs_backward(J, lp, s, st, J.seq_up + (t / J.seq_len) * E, g);
        apply_jitter(J, t, g);
      }
      if (J.grad_z) {
        float* g = J.grad_z + t * E;
        ensure_softmax(lp, E, s.ex, &st);
        float lse = st.max + std::log(st.sum);
        float c = static_cast<float>(J.z_scale) * lse * st.inv_sum;
        for (int64_t e = 0; e < E; ++e) g[e] = c * s.ex[e];
        apply_jitter(J, t, g);
      }
      if (J.grad_importance) {
        float* g = J.grad_importance + t * E;
        for (int64_t e = 0; e < E; ++e) g[e] = 0.f;
        const int32_t* ids = J.plan_ids + t * J.plan_k;
        for (int64_t j = 0; j < J.plan_k; ++j) gw[j] = ids[j] >= 0 ? J.imp_up[ids[j]] : 0.f;
        weights_backward(J, lp, s, st, ids, gw, J.plan_k, g);
        apply_jitter(J, t, g);
      }
    }
  }

  static void backward_block(const RouteJob& J, int64_t b) {
    Scratch s;
    if (!get_scratch(J, &s)) return;
    const int64_t E = J.experts;
    int64_t t0, t1;
    rk_block_range(J, b, &t0, &t1);
    for (int64_t t = t0; t < t1; ++t) {
      const float* lp = routing_logits(J, t, s.lp);
      RowStats st;
      float* g = J.bw_out + t * E;
      for (int64_t e = 0; e < E; ++e) g[e] = 0.f;
      weights_backward(J, lp, s, st, J.bw_ids + t * J.bw_k, J.bw_grad_w + t * J.bw_k, J.bw_k, g);
      apply_jitter(J, t, g);
    }
  }
};

}  // namespace
}  // namespace sparsekit
