// Quick core-level N:M timing against the dense kernel (no Node), interleaved
// call by call so machine noise hits both alike:
//   nm_bench ROWS COLS N M TOKENS [iters] [isa] [threads]
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>
#include <time.h>

#include "sparsekit/dense.h"
#include "sparsekit/nm.h"
#include "sparsekit/runtime.h"
#include "sparsekit/thread_pool.h"

using namespace sparsekit;

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: nm_bench ROWS COLS N M TOKENS [iters] [isa] [threads]\n");
    return 2;
  }
  NmShape s{std::atoll(argv[1]), std::atoll(argv[2]), std::atoi(argv[3]), std::atoi(argv[4])};
  int64_t m = std::atoll(argv[5]);
  int iters = argc > 6 ? std::atoi(argv[6]) : 10;
  Isa isa = active_isa();
  if (argc > 7) isa_from_name(argv[7], &isa);
  if (argc > 8) ThreadPool::instance().set_num_threads(std::atoi(argv[8]));
  if (!nm_check_shape(s).ok()) return 2;
  int64_t kept = nm_kept_per_row(s), ib = nm_index_bytes_per_row(s);
  std::vector<float> vals(s.rows * kept), dense(s.rows * s.cols), x(m * s.cols), y1(m * s.rows), y2(m * s.rows);
  std::vector<uint8_t> idx(s.rows * ib);
  nm_random(s, 1, 0.05f, vals.data(), idx.data());
  nm_to_dense(s, vals.data(), idx.data(), dense.data());
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& v : x) v = u(rng);
  std::shared_ptr<PackedNm> pn;
  std::shared_ptr<PackedLinear> pd;
  Status st = pack_nm(s, vals.data(), idx.data(), isa, &pn);
  if (!st.ok()) { std::fprintf(stderr, "pack_nm: %s\n", st.message.c_str()); return 1; }
  pack_linear(dense.data(), s.rows, s.cols, isa, &pd);
  LinearArgs da;
  da.x = x.data(); da.m = m; da.k = s.cols; da.y = y1.data();
  NmLinearArgs na;
  na.x = x.data(); na.m = m; na.y = y2.data();
  // Wall time, and process CPU time (all threads): on a shared machine the
  // CPU time shows the work each kernel does, whoever else runs.
  auto cpu = [] {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
  };
  std::vector<double> td, tn, cd, cn;
  for (int i = 0; i < iters + 2; ++i) {
    double c0 = cpu();
    auto t0 = std::chrono::steady_clock::now();
    if (!std::getenv("NM_ONLY")) linear_packed(da, *pd);
    auto t1 = std::chrono::steady_clock::now();
    double c1 = cpu();
    nm_linear_packed(na, *pn);
    auto t2 = std::chrono::steady_clock::now();
    double c2 = cpu();
    if (i >= 2) {
      td.push_back(std::chrono::duration<double>(t1 - t0).count());
      tn.push_back(std::chrono::duration<double>(t2 - t1).count());
      cd.push_back(c1 - c0);
      cn.push_back(c2 - c1);
    }
  }
  std::sort(cd.begin(), cd.end());
  std::sort(cn.begin(), cn.end());
  std::printf("cpu time median: dense %.3f ms, nm %.3f ms, ratio %.2f\n", cd[cd.size() / 2] * 1e3, cn[cn.size() / 2] * 1e3,
              cd[cd.size() / 2] / cn[cn.size() / 2]);
  double num = 0, den = 0;
  for (size_t i = 0; i < y1.size(); ++i) num += (y1[i] - y2[i]) * (y1[i] - y2[i]), den += y1[i] * y1[i];
  std::sort(td.begin(), td.end());
  std::sort(tn.begin(), tn.end());
  double mdn = td[td.size() / 2], mnm = tn[tn.size() / 2];
  std::printf("min: dense %.3f ms, nm %.3f ms, ratio %.2f\n", td[0] * 1e3, tn[0] * 1e3, td[0] / tn[0]);
  std::printf("%s %d:%d %ldx%ld tokens=%ld threads=%d: dense %.3f ms, nm %.3f ms, speedup %.2fx, eff %.1f GFLOP/s, "
              "W bytes %.2f MB (%.3f of dense), rel diff %.1e\n",
              pn->kernel_name().c_str(), s.n, s.m, (long)s.rows, (long)s.cols, (long)m,
              ThreadPool::instance().num_threads(), mdn * 1e3, mnm * 1e3, mdn / mnm, 2.0 * m * s.rows * s.cols / mnm / 1e9,
              pn->bytes_per_call() / 1e6, double(pn->bytes_per_call()) / (4.0 * s.rows * s.cols), std::sqrt(num / den));
  return 0;
}
