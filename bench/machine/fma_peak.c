/* fp32 FMA peak of this machine: 12 independent 8-wide FMA chains per thread,
 * registers only (acc = a·b + acc, the form a GEMM micro-kernel runs). Each
 * chain starts from a different value so the compiler cannot merge them.
 * Build and run: bench/machine/run.sh */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include "timing.h"

int main(void) {
  const long iters = 200000000;
  float sink = 0;
  double t0 = now();
#pragma omp parallel reduction(+ : sink)
  {
    __m256 a = _mm256_set1_ps(1.0000001f), b = _mm256_set1_ps(0.9999999f);
    __m256 c[12];
    for (int i = 0; i < 12; ++i) c[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < iters; ++it) {
      __asm__ volatile("" : "+x"(a), "+x"(b));
#pragma GCC unroll 12
      for (int i = 0; i < 12; ++i) c[i] = _mm256_fmadd_ps(a, b, c[i]);
    }
    __m256 s = c[0];
    for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, c[i]);
    float o[8];
    _mm256_storeu_ps(o, s);
    sink += o[0];
  }
  double dt = now() - t0;
  int th = omp_get_max_threads();
  printf("fp32 FMA peak, %d thread(s): %.1f GFLOP/s (%.1f per thread)  [%g]\n", th, th * iters * 12.0 * 16 / dt / 1e9,
         iters * 12.0 * 16 / dt / 1e9, sink);
  return 0;
}
