// Vector traits, one struct per instruction set. Each ISA's kernel file is
// compiled with its own flags and includes this header; only the traits its
// flags allow are defined there.
//
// Everything in here (and in every header included by ISA-specific files) must
// have internal linkage or be templated on an ISA type: an inline function
// shared by two ISA files would be merged by the linker, and the AVX-512 copy
// could end up running on a CPU without AVX-512.
#pragma once
#include <cstdint>
#include <cstring>

#include "sparsekit/common.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#define SK_INLINE inline __attribute__((always_inline))
#define SK_INLINE_LAMBDA __attribute__((always_inline))

namespace sparsekit {
namespace {  // internal linkage: see the note above

// A heap array with internal linkage. ISA-specific files avoid std containers:
// their inline members would be compiled with this file's -m flags and could be
// the copy the linker keeps for every other file too.
template <class T>
struct LocalArray {
  explicit LocalArray(int64_t n) : p(new T[n > 0 ? n : 1]) {}
  ~LocalArray() { delete[] p; }
  LocalArray(const LocalArray&) = delete;
  LocalArray& operator=(const LocalArray&) = delete;
  T& operator[](int64_t i) { return p[i]; }
  const T& operator[](int64_t i) const { return p[i]; }
  T* p;
};

// The owner of item i in a list cut into `count` consecutive runs, run q
// holding items [base[q], base[q+1]): the last q with base[q] <= i < base[q+1]
// (runs may be empty). The grouped expert ops use it to map a task or panel
// index back to its expert.
SK_INLINE int64_t sk_owner(const int64_t* base, int64_t count, int64_t i) {
  int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (base[mid] <= i) lo = mid; else hi = mid - 1;
  }
  while (lo < count - 1 && base[lo + 1] <= i) ++lo;
  return lo;
}


struct ScalarVec {
  using T = float;
  static constexpr int W = 1;
  static SK_INLINE T zero() { return 0.f; }
  static SK_INLINE T load(const float* p) { return *p; }
  static SK_INLINE void store(float* p, T v) { *p = v; }
  static SK_INLINE T bcast(const float* p) { return *p; }
  static SK_INLINE T fma(T a, T b, T c) { return a * b + c; }
  // Quads (see Avx2Vec): here just the pointer, each lane one load.
  static constexpr bool kQuadBcast = false;
  using Q = const float*;
  static SK_INLINE Q load4(const float* p) { return p; }
  static SK_INLINE T lane(Q q, int l) { return q[l]; }
};

#if defined(__AVX2__) && defined(__FMA__)
struct Avx2Vec {
  using T = __m256;
  static constexpr int W = 8;
  static SK_INLINE T zero() { return _mm256_setzero_ps(); }
  static SK_INLINE T load(const float* p) { return _mm256_loadu_ps(p); }
  static SK_INLINE void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static SK_INLINE T bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static SK_INLINE T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  // Quads: four consecutive floats in one load (in both 128-bit halves),
  // lane(q, l) broadcasting float l by an in-lane shuffle. Kernels bound by
  // load ports (the N:M tiles: a broadcast and TV loads per value) trade
  // three of every four broadcast loads for shuffles, which run on the
  // shuffle pipes beside the FMAs (measured on Zen 3, the tile alone with
  // its data in L1: +4 % for 8-vector N:M tiles, +11–18 % for the 2- and
  // 4-vector ones; in whole calls within noise). l must fold to a constant.
  static constexpr bool kQuadBcast = true;
  using Q = __m256;
  static SK_INLINE Q load4(const float* p) { return _mm256_broadcast_ps(reinterpret_cast<const __m128*>(p)); }
  static SK_INLINE T lane(Q q, int l) {
    switch (l & 3) {
      case 0: return _mm256_shuffle_ps(q, q, 0x00);
      case 1: return _mm256_shuffle_ps(q, q, 0x55);
      case 2: return _mm256_shuffle_ps(q, q, 0xAA);
      default: return _mm256_shuffle_ps(q, q, 0xFF);
    }
  }
};
#endif

#if defined(__AVX512F__)
struct Avx512Vec {
  using T = __m512;
  static constexpr int W = 16;
  static SK_INLINE T zero() { return _mm512_setzero_ps(); }
  static SK_INLINE T load(const float* p) { return _mm512_loadu_ps(p); }
  static SK_INLINE void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static SK_INLINE T bcast(const float* p) { return _mm512_set1_ps(*p); }
  static SK_INLINE T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  // Quads (see Avx2Vec): one 128-bit load into all four lanes, each value
  // broadcast by an in-lane vpermilps. Measured on Zen 5 (whole nmLinear
  // calls, 2 threads, 4096×4096): 2:4 +20 % at 16 tokens, +9 % at 32,
  // +2–4 % at 128–512; 1:4 and 1:8 +16 % / +11 % at 16 tokens.
  static constexpr bool kQuadBcast = true;
  using Q = __m512;
  // (The all-lanes maskz forms compile to the plain instructions; the plain
  // intrinsics trip GCC 12's -Wmaybe-uninitialized on their undefined operand.)
  static SK_INLINE Q load4(const float* p) { return _mm512_maskz_broadcast_f32x4(0xFFFF, _mm_loadu_ps(p)); }
  static SK_INLINE T lane(Q q, int l) {
    switch (l & 3) {
      case 0: return _mm512_maskz_permute_ps(0xFFFF, q, 0x00);
      case 1: return _mm512_maskz_permute_ps(0xFFFF, q, 0x55);
      case 2: return _mm512_maskz_permute_ps(0xFFFF, q, 0xAA);
      default: return _mm512_maskz_permute_ps(0xFFFF, q, 0xFF);
    }
  }
};
#endif

#if defined(__ARM_NEON)
struct NeonVec {
  using T = float32x4_t;
  static constexpr int W = 4;
  static SK_INLINE T zero() { return vdupq_n_f32(0.f); }
  static SK_INLINE T load(const float* p) { return vld1q_f32(p); }
  static SK_INLINE void store(float* p, T v) { vst1q_f32(p, v); }
  static SK_INLINE T bcast(const float* p) { return vld1q_dup_f32(p); }
  static SK_INLINE T fma(T a, T b, T c) { return vfmaq_f32(c, a, b); }
  // Quads (see Avx2Vec): one q load, each lane broadcast by a dup the
  // compiler folds into an FMA by element (fmla v.4s, v.s[l]).
  static constexpr bool kQuadBcast = true;
  using Q = float32x4_t;
  static SK_INLINE Q load4(const float* p) { return vld1q_f32(p); }
  static SK_INLINE T lane(Q q, int l) {
    switch (l & 3) {
      case 0: return vdupq_laneq_f32(q, 0);
      case 1: return vdupq_laneq_f32(q, 1);
      case 2: return vdupq_laneq_f32(q, 2);
      default: return vdupq_laneq_f32(q, 3);
    }
  }
};
#endif

// ---- Elementwise math on GCC vector-extension values of kSkLanes floats,
// which each ISA file's flags lower to its own registers (AVX2 ymm, AVX-512
// zmm, NEON q, SSE2 pairs in the baseline build). Scalar loops over the same
// formulas did not auto-vectorise: GCC threads the clamps into branches and
// will not if-convert the float→int conversion without -fno-trapping-math,
// which left every fused activation scalar (~25 cycles per value for
// GELU/SiLU).

#pragma GCC diagnostic ignored "-Wpsabi"  // vector values only pass between always-inline functions

template <int L>
struct SkVec {
  typedef float F __attribute__((vector_size(L * 4)));
  typedef int32_t I __attribute__((vector_size(L * 4)));
};
#if defined(__AVX512F__)
constexpr int kSkLanes = 16;
#elif defined(__AVX2__)
constexpr int kSkLanes = 8;
#else
constexpr int kSkLanes = 4;
#endif
using SkF = SkVec<kSkLanes>::F;
using SkI = SkVec<kSkLanes>::I;

template <class F>
SK_INLINE F sk_vsplat(float a) {
  return F{} + a;
}

// exp(x) on every lane, relative error ~2e-7 over the clamped range
// [−87, 88] (Cephes-style range reduction x = n·ln2 + r and a degree-6
// polynomial for exp(r)).
template <class F, class I>
SK_INLINE F sk_vexp(F x) {
  const F lo = sk_vsplat<F>(-87.0f), hi = sk_vsplat<F>(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  F fx = x * 1.44269504088896341f;
  F n = (fx + 12582912.0f) - 12582912.0f;  // round to nearest
  F r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  F p = sk_vsplat<F>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  I e = (__builtin_convertvector(n, I) + 127) << 23;
  return p * (F)e;  // bit cast, as for any two vector types of one size
}

// erfc(z) on every lane, fractional error < 1.2e-7 everywhere (Numerical
// Recipes' Chebyshev fit).
template <class F, class I>
SK_INLINE F sk_verfc(F z) {
  F az = z < 0.f ? -z : z;
  F t = 1.0f / (1.0f + 0.5f * az);
  F p = sk_vsplat<F>(0.17087277f);
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  F ans = t * sk_vexp<F, I>(-az * az + p);
  return z >= 0.f ? ans : 2.0f - ans;
}

// y[j] = f(y[j]) for j < n, kSkLanes at a time; the tail goes through the same
// vector code on a padded copy, so a value's result never depends on where it
// sits in the row (or on how a kernel split the row).
#if defined(__AVX2__)
// d[c·ldd + r] = row[r][off + c] for an 8×8 tile, in registers (row: 8 row
// pointers, any strides).
SK_INLINE void sk_transpose8x8_rows(const float* const* row, int64_t off, float* __restrict d, int64_t ldd) {
  __m256 r0 = _mm256_loadu_ps(row[0] + off), r1 = _mm256_loadu_ps(row[1] + off), r2 = _mm256_loadu_ps(row[2] + off),
         r3 = _mm256_loadu_ps(row[3] + off), r4 = _mm256_loadu_ps(row[4] + off), r5 = _mm256_loadu_ps(row[5] + off),
         r6 = _mm256_loadu_ps(row[6] + off), r7 = _mm256_loadu_ps(row[7] + off);
  __m256 u0 = _mm256_unpacklo_ps(r0, r1), u1 = _mm256_unpackhi_ps(r0, r1), u2 = _mm256_unpacklo_ps(r2, r3),
         u3 = _mm256_unpackhi_ps(r2, r3), u4 = _mm256_unpacklo_ps(r4, r5), u5 = _mm256_unpackhi_ps(r4, r5),
         u6 = _mm256_unpacklo_ps(r6, r7), u7 = _mm256_unpackhi_ps(r6, r7);
  __m256 v0 = _mm256_shuffle_ps(u0, u2, 0x44), v1 = _mm256_shuffle_ps(u0, u2, 0xEE), v2 = _mm256_shuffle_ps(u1, u3, 0x44),
         v3 = _mm256_shuffle_ps(u1, u3, 0xEE), v4 = _mm256_shuffle_ps(u4, u6, 0x44), v5 = _mm256_shuffle_ps(u4, u6, 0xEE),
         v6 = _mm256_shuffle_ps(u5, u7, 0x44), v7 = _mm256_shuffle_ps(u5, u7, 0xEE);
  _mm256_storeu_ps(d, _mm256_permute2f128_ps(v0, v4, 0x20));
  _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(v1, v5, 0x20));
  _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(v2, v6, 0x20));
  _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(v3, v7, 0x20));
  _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(v0, v4, 0x31));
  _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(v1, v5, 0x31));
  _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(v2, v6, 0x31));
  _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(v3, v7, 0x31));
}
// d[c·ldd + r] = s[r·lds + c] for an 8×8 tile, in registers.
SK_INLINE void sk_transpose8x8(const float* __restrict s, int64_t lds, float* __restrict d, int64_t ldd) {
  const float* row[8] = {s, s + lds, s + 2 * lds, s + 3 * lds, s + 4 * lds, s + 5 * lds, s + 6 * lds, s + 7 * lds};
  sk_transpose8x8_rows(row, 0, d, ldd);
}
#endif

// y[t][o] = stage[o][t] for t < tv, o < rows (stage rows are nr floats).
// Whole-vector stores matter: the y lines are cold, and scalar stores that
// miss fill the store buffer after a few lines.
SK_INLINE void sk_write_transposed(const float* __restrict stage, int64_t nr, int64_t rows, int64_t tv,
                                float* __restrict y, int64_t ldy) {
  int64_t o0 = 0;
#if defined(__AVX2__)
  // 8×8 register transposes while 8 rows and 8 tokens are available.
  const int64_t tv8 = tv / 8 * 8;
  for (; o0 + 8 <= rows; o0 += 8) {
    for (int64_t t0 = 0; t0 < tv8; t0 += 8) sk_transpose8x8(stage + o0 * nr + t0, nr, y + t0 * ldy + o0, ldy);
    for (int64_t t = tv8; t < tv; ++t)
      for (int64_t o = o0; o < o0 + 8; ++o) y[t * ldy + o] = stage[o * nr + t];
  }
#endif
  for (int64_t t = 0; t < tv; ++t)
    for (int64_t o = o0; o < rows; ++o) y[t * ldy + o] = stage[o * nr + t];
}

template <class Fn>
SK_INLINE void sk_map_row(float* __restrict y, int64_t n, Fn&& f) {
  constexpr int L = kSkLanes;
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    SkF v;
    std::memcpy(&v, y + j, sizeof v);
    v = f(v);
    std::memcpy(y + j, &v, sizeof v);
  }
  if (j < n) {
    alignas(64) float t[L];
    for (int l = 0; l < L; ++l) t[l] = j + l < n ? y[j + l] : 0.f;
    SkF v;
    std::memcpy(&v, t, sizeof v);
    v = f(v);
    std::memcpy(t, &v, sizeof v);
    for (int l = 0; j + l < n; ++l) y[j + l] = t[l];
  }
}

// y[j] = act(y[j] + bias[j]) for j < n; bias may be null.
SK_INLINE void sk_epilogue_row(float* __restrict y, const float* __restrict bias, int64_t n, Activation act) {
  if (bias) {
    for (int64_t j = 0; j < n; ++j) y[j] += bias[j];
  }
  switch (act) {
    case Activation::kNone: break;
    case Activation::kRelu:
      sk_map_row(y, n, [](SkF x) { return x > 0.f ? x : SkF{}; });
      break;
    case Activation::kGelu:  // x·Φ(x) = 0.5·x·erfc(−x/√2)
      sk_map_row(y, n, [](SkF x) { return 0.5f * x * sk_verfc<SkF, SkI>(-0.70710678118654752f * x); });
      break;
    case Activation::kGeluTanh:  // 0.5·x·(1+tanh(u)) = x / (1 + e^(−2u)), u = √(2/π)(x + 0.044715x³)
      sk_map_row(y, n, [](SkF x) {
        SkF u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        return x / (1.0f + sk_vexp<SkF, SkI>(-2.0f * u));
      });
      break;
    case Activation::kSilu:
      sk_map_row(y, n, [](SkF x) { return x / (1.0f + sk_vexp<SkF, SkI>(-x)); });
      break;
  }
}

// Gated-linear-unit store: h[j] = act(h[j]) · g[j] (SwiGLU with silu, GeGLU
// with gelu/gelu_tanh; relu gives ReGLU; none gives the bilinear GLU).
SK_INLINE void sk_gate_row(float* __restrict h, const float* __restrict g, int64_t n, Activation act) {
  sk_epilogue_row(h, nullptr, n, act);
  for (int64_t j = 0; j < n; ++j) h[j] *= g[j];
}

}  // namespace
}  // namespace sparsekit
