// Quick core-level GEMM timing (no Node): gemm_bench M K N [iters] [isa]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>
#include <algorithm>

#include "sparsekit/dense.h"
#include "sparsekit/runtime.h"

using namespace sparsekit;

int main(int argc, char** argv) {
  if (argc < 4) { std::fprintf(stderr, "usage: gemm_bench M K N [iters] [isa]\n"); return 2; }
  int64_t m = std::atoll(argv[1]), k = std::atoll(argv[2]), n = std::atoll(argv[3]);
  int iters = argc > 4 ? std::atoi(argv[4]) : 10;
  Isa isa = active_isa();
  if (argc > 5) isa_from_name(argv[5], &isa);
  std::vector<float> x(m * k, 0.5f), w(n * k, 0.25f), y(m * n);
  std::shared_ptr<PackedLinear> p;
  pack_linear(w.data(), n, k, isa, &p);
  LinearArgs a; a.x = x.data(); a.m = m; a.k = k; a.y = y.data();
  std::vector<double> t;
  for (int i = 0; i < iters + 2; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    linear_packed(a, *p);
    auto t1 = std::chrono::steady_clock::now();
    if (i >= 2) t.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  std::sort(t.begin(), t.end());
  double med = t[t.size() / 2];
  std::printf("%s %s m=%ld k=%ld n=%ld median %.3f ms  %.1f GFLOP/s  %.1f GB/s(W)\n", isa_name(isa), p->kernels->name,
              (long)m, (long)k, (long)n, med * 1e3, 2.0 * m * k * n / med / 1e9, 4.0 * n * k / med / 1e9);
  return 0;
}
