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

namespace sparsekit {
namespace {  // internal linkage: see the note above

struct ScalarVec {
  using T = float;
  static constexpr int W = 1;
  static SK_INLINE T zero() { return 0.f; }
  static SK_INLINE T load(const float* p) { return *p; }
  static SK_INLINE void store(float* p, T v) { *p = v; }
  static SK_INLINE T bcast(const float* p) { return *p; }
  static SK_INLINE T fma(T a, T b, T c) { return a * b + c; }
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
};
#endif

// ---- Scalar math written so that loops over arrays auto-vectorise with the
// file's flags (branch-free, no library calls).

SK_INLINE float sk_bits_to_float(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }

// exp(x), relative error ~2e-7 over the clamped range (Cephes-style range
// reduction x = n·ln2 + r and a degree-6 polynomial for exp(r)).
SK_INLINE float sk_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  float fx = x * 1.44269504088896341f;
  // round to nearest without a library call: add and subtract 1.5·2^23
  const float magic = 12582912.0f;
  float n = (fx + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  return p * sk_bits_to_float(e);
}

// erfc(z), fractional error < 1.2e-7 everywhere (Numerical Recipes' Chebyshev fit).
SK_INLINE float sk_erfc(float z) {
  float az = z < 0.f ? -z : z;
  float t = 1.0f / (1.0f + 0.5f * az);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  float ans = t * sk_exp(-az * az + p);
  return z >= 0.f ? ans : 2.0f - ans;
}

// y[j] = act(y[j] + bias[j]) for j < n; bias may be null.
SK_INLINE void sk_epilogue_row(float* __restrict y, const float* __restrict bias, int64_t n, Activation act) {
  if (bias) {
    for (int64_t j = 0; j < n; ++j) y[j] += bias[j];
  }
  switch (act) {
    case Activation::kNone: break;
    case Activation::kRelu:
      for (int64_t j = 0; j < n; ++j) y[j] = y[j] > 0.f ? y[j] : 0.f;
      break;
    case Activation::kGelu:  // x·Φ(x) = 0.5·x·erfc(−x/√2)
      for (int64_t j = 0; j < n; ++j) y[j] = 0.5f * y[j] * sk_erfc(-0.70710678118654752f * y[j]);
      break;
    case Activation::kGeluTanh:  // 0.5·x·(1+tanh(u)) = x / (1 + e^(−2u)), u = √(2/π)(x + 0.044715x³)
      for (int64_t j = 0; j < n; ++j) {
        float x = y[j];
        float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        y[j] = x / (1.0f + sk_exp(-2.0f * u));
      }
      break;
    case Activation::kSilu:
      for (int64_t j = 0; j < n; ++j) y[j] = y[j] / (1.0f + sk_exp(-y[j]));
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
