/* OpenBLAS sgemm on the dense benchmark's shapes (y = x·Wᵀ, row-major), median
 * of several calls: what a tuned BLAS reaches on this machine. Build and run:
 * bench/machine/run.sh (needs Debian's libopenblas-dev). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include "timing.h"

int main(void) {
  const int shapes[][4] = {{1, 4096, 4096, 41},  {16, 4096, 4096, 21}, {128, 1024, 4096, 21},
                           {512, 1024, 4096, 11}, {2048, 1024, 4096, 7}, {512, 4096, 14336, 7}};
  for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; ++s) {
    int m = shapes[s][0], k = shapes[s][1], n = shapes[s][2], reps = shapes[s][3];
    float* x = malloc(4L * m * k);
    float* w = malloc(4L * n * k);
    float* y = malloc(4L * m * n);
    for (long i = 0; i < (long)m * k; ++i) x[i] = (float)(i % 7) * 0.1f;
    for (long i = 0; i < (long)n * k; ++i) w[i] = (float)(i % 5) * 0.1f;
    double ts[64];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.f, x, k, w, k, 0.f, y, n);
    for (int r = 0; r < reps; ++r) {
      double t0 = now();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.f, x, k, w, k, 0.f, y, n);
      ts[r] = now() - t0;
    }
    double med = median(ts, reps);
    printf("OpenBLAS sgemm %dx%dx%d: median %.2f ms, %.1f GFLOP/s\n", m, k, n, med * 1e3, 2.0 * m * k * n / med / 1e9);
    free(x);
    free(w);
    free(y);
  }
  return 0;
}
