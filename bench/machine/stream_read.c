/* Streaming read bandwidth: sums a 256 MB buffer with 8-wide loads, split
 * statically over the threads; median of 21 passes. Build and run:
 * bench/machine/run.sh */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include "timing.h"

int main(void) {
  const long n = 64L << 20; /* floats: 256 MB */
  float* a = aligned_alloc(64, n * 4);
  for (long i = 0; i < n; ++i) a[i] = 1.f;
  double ts[21];
  float total = 0;
  for (int r = 0; r < 21; ++r) {
    double t0 = now();
    float s = 0;
#pragma omp parallel reduction(+ : s)
    {
      __m256 x0 = _mm256_setzero_ps(), x1 = x0, x2 = x0, x3 = x0;
#pragma omp for schedule(static)
      for (long i = 0; i < n; i += 32) {
        x0 = _mm256_add_ps(x0, _mm256_load_ps(a + i));
        x1 = _mm256_add_ps(x1, _mm256_load_ps(a + i + 8));
        x2 = _mm256_add_ps(x2, _mm256_load_ps(a + i + 16));
        x3 = _mm256_add_ps(x3, _mm256_load_ps(a + i + 24));
      }
      float o[8];
      _mm256_storeu_ps(o, _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3)));
      for (int j = 0; j < 8; ++j) s += o[j];
    }
    ts[r] = now() - t0;
    total += s;
  }
  double med = median(ts, 21);
  printf("streaming read, %d thread(s): median %.1f GB/s, best %.1f GB/s  [%g]\n", omp_get_max_threads(),
         n * 4 / med / 1e9, n * 4 / ts[0] / 1e9, total);
  free(a);
  return 0;
}
