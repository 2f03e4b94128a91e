/* Shared by the bench/machine programs: a monotonic clock and the median of
 * a set of timings. */
#pragma once
#include <stdlib.h>
#include <time.h>

static inline double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static inline int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

/* Sorts ts[0..n) and returns its median. */
static inline double median(double* ts, int n) {
  qsort(ts, n, sizeof ts[0], cmp_double);
  return ts[n / 2];
}
