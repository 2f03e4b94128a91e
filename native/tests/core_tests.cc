// C++ tests of the core, run by ctest (also under AddressSanitizer + UBSan in CI).
// They check the core directly, below the binding: every ISA variant the CPU
// can run against a float64 reference, thread-count invariance, the pool.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "sparsekit/bsr.h"
#include "sparsekit/dense.h"
#include "sparsekit/runtime.h"
#include "sparsekit/thread_pool.h"
#include "routing_tests.h"

using namespace sparsekit;

static int failures = 0;
#define CHECK(cond, ...)                                   \
  do {                                                     \
    if (!(cond)) {                                         \
      ++failures;                                          \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);                   \
      std::fprintf(stderr, "\n");                          \
    }                                                      \
  } while (0)

static double act_ref(double v, Activation a) {
  switch (a) {
    case Activation::kNone: return v;
    case Activation::kRelu: return v > 0 ? v : 0;
    case Activation::kGelu: return 0.5 * v * std::erfc(-v / std::sqrt(2.0));
    case Activation::kGeluTanh: return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
    case Activation::kSilu: return v / (1 + std::exp(-v));
  }
  return v;
}

static double rel_err(const std::vector<float>& y, const std::vector<double>& r) {
  double num = 0, den = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    num += (y[i] - r[i]) * (y[i] - r[i]);
    den += r[i] * r[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

static void test_pool() {
  ThreadPool& pool = ThreadPool::instance();
  for (int threads : {1, 2, 3}) {
    pool.set_num_threads(threads);
    std::vector<std::atomic<int>> hits(1000);
    pool.parallel_for(1000, [&](int64_t t, int) { hits[t]++; });
    bool all_once = true;
    for (auto& h : hits) all_once = all_once && h.load() == 1;
    CHECK(all_once, "every task runs exactly once (threads=%d)", threads);
    // Nested calls run inline instead of deadlocking.
    std::atomic<int> inner{0};
    pool.parallel_for(4, [&](int64_t, int) { pool.parallel_for(3, [&](int64_t, int) { inner++; }); });
    CHECK(inner.load() == 12, "nested parallel_for ran %d of 12", inner.load());
  }
  // Resizing then immediately running: new workers must not miss the first job.
  std::atomic<int64_t> total{0};
  for (int rep = 0; rep < 300; ++rep) {
    pool.set_num_threads(1 + rep % 3);
    pool.parallel_for(7, [&](int64_t t, int) { total += t; });
  }
  CHECK(total.load() == 300 * 21, "resize + run lost tasks: %lld", static_cast<long long>(total.load()));
  // Back-to-back jobs (workers still spinning from the previous one).
  std::atomic<int64_t> count{0};
  pool.set_num_threads(2);
  for (int rep = 0; rep < 5000; ++rep) pool.parallel_for(3, [&](int64_t, int) { count++; });
  CHECK(count.load() == 15000, "back-to-back jobs ran %lld of 15000 tasks", static_cast<long long>(count.load()));
  pool.set_num_threads(default_num_threads());
}

static void test_linear_isa(Isa isa, std::mt19937& rng) {
  // k past 2048 takes several of the AVX-512 plain product's deep slices
  // (KC_PLAIN): in the small-batch walk (40 rows), the blocked one (200) and
  // the one-panel stream (3).
  const int shapes[][3] = {{1, 1, 1},     {1, 17, 5},       {7, 33, 31},     {6, 256, 16},  {13, 257, 47},
                           {64, 300, 100}, {300, 31, 17},    {5, 1000, 3},    {97, 513, 129}, {2, 0, 4},
                           {40, 4500, 70}, {200, 2100, 40}, {3, 2049, 33}};
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  for (auto& s : shapes) {
    int m = s[0], k = s[1], n = s[2];
    std::vector<float> x(m * k), w(n * k), b(n);
    for (auto& v : x) v = U(rng);
    for (auto& v : w) v = U(rng);
    for (auto& v : b) v = U(rng);
    for (int ai = 0; ai <= 4; ++ai) {
      Activation act = static_cast<Activation>(ai);
      std::vector<double> ref(m * n);
      for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j) {
          double acc = b[j];
          for (int kk = 0; kk < k; ++kk) acc += double(x[i * k + kk]) * w[j * k + kk];
          ref[i * n + j] = act_ref(acc, act);
        }
      std::shared_ptr<PackedLinear> packed;
      Status st = pack_linear(w.data(), n, k, isa, &packed);
      CHECK(st.ok(), "pack_linear: %s", st.message.c_str());
      if (!st.ok()) return;
      std::vector<float> y1(m * n), y2(m * n), y3(m * n);
      LinearArgs a;
      a.x = x.data(); a.m = m; a.k = k; a.bias = b.data(); a.act = act;
      ThreadPool::instance().set_num_threads(1);
      a.y = y1.data();
      CHECK(linear_packed(a, *packed).ok(), "linear_packed");
      ThreadPool::instance().set_num_threads(2);
      a.y = y2.data();
      CHECK(linear_packed(a, *packed).ok(), "linear_packed");
      a.y = y3.data();
      CHECK(linear(a, w.data(), n, isa).ok(), "linear");
      double e = rel_err(y1, ref);
      CHECK(e < 2e-6, "%s m=%d k=%d n=%d act=%s rel err %.3g", isa_name(isa), m, k, n, activation_name(act), e);
      CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * 4) == 0, "%s m=%d k=%d n=%d: 1 vs 2 threads differ",
            isa_name(isa), m, k, n);
      CHECK(std::memcmp(y1.data(), y3.data(), y1.size() * 4) == 0, "%s m=%d k=%d n=%d: packed vs unpacked differ",
            isa_name(isa), m, k, n);
    }
  }
}

// Block-sparse products against double references built from the blocks,
// 1 vs 2 threads bitwise, packed vs unpacked bitwise.
static void test_bsr_isa(Isa isa, std::mt19937& rng) {
  // br, bc, block rows, block cols, tokens, density·100
  const int cases[][6] = {{1, 16, 5, 4, 50, 40},  {4, 1, 3, 20, 17, 30}, {8, 8, 3, 4, 9, 50},   {16, 16, 2, 3, 16, 60},
                          {32, 32, 2, 2, 33, 75}, {64, 64, 1, 2, 5, 100}, {3, 5, 4, 3, 7, 50},  {2, 3, 3, 3, 1, 0},
                          {7, 2, 2, 5, 20, 100}};
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  ThreadPool& pool = ThreadPool::instance();
  for (auto& c : cases) {
    const int64_t br = c[0], bc = c[1], nbr = c[2], nbc = c[3], m = c[4];
    const int64_t n = nbr * br, k = nbc * bc;
    std::vector<int32_t> row_ptr(nbr + 1, 0), col_idx;
    for (int64_t R = 0; R < nbr; ++R) {
      for (int64_t j = 0; j < nbc; ++j)
        if (int(rng() % 100) < c[5]) col_idx.push_back(int32_t(j));
      row_ptr[R + 1] = int32_t(col_idx.size());
    }
    const int64_t nnz = int64_t(col_idx.size());
    std::vector<float> values(nnz * br * bc), x(m * k), dy(m * n), bias(n);
    for (auto& v : values) v = U(rng);
    for (auto& v : x) v = U(rng);
    for (auto& v : dy) v = U(rng);
    for (auto& v : bias) v = U(rng);
    BsrView w;
    w.rows = n; w.cols = k; w.br = br; w.bc = bc; w.nnz = nnz;
    w.row_ptr = row_ptr.data(); w.col_idx = col_idx.data(); w.values = values.data();
    Status st = bsr_validate(w, nbr + 1, nnz, nnz * br * bc);
    CHECK(st.ok(), "bsr_validate: %s", st.message.c_str());
    std::vector<double> dense(n * k, 0.0);
    for (int64_t R = 0; R < nbr; ++R)
      for (int64_t j = row_ptr[R]; j < row_ptr[R + 1]; ++j)
        for (int64_t i = 0; i < br; ++i)
          for (int64_t q = 0; q < bc; ++q) dense[(R * br + i) * k + col_idx[j] * bc + q] = values[(j * br + i) * bc + q];
    std::vector<double> yref(m * n), dxref(m * k, 0.0);
    for (int64_t t = 0; t < m; ++t)
      for (int64_t o = 0; o < n; ++o) {
        double acc = bias[o];
        for (int64_t q = 0; q < k; ++q) acc += double(x[t * k + q]) * dense[o * k + q];
        yref[t * n + o] = act_ref(acc, Activation::kSilu);
        for (int64_t q = 0; q < k; ++q) dxref[t * k + q] += double(dy[t * n + o]) * dense[o * k + q];
      }
    std::shared_ptr<PackedBsr> packed;
    st = bsr_pack(w, isa, &packed);
    CHECK(st.ok(), "bsr_pack: %s", st.message.c_str());
    if (!st.ok()) return;
    BsrLinearArgs a;
    a.x = x.data(); a.m = m; a.k = k; a.bias = bias.data(); a.act = Activation::kSilu;
    std::vector<float> y1(m * n), y2(m * n), y3(m * n), dx1(m * k), dx2(m * k), dx3(m * k);
    BsrLinearArgs t = a;
    t.x = dy.data(); t.k = n; t.bias = nullptr; t.act = Activation::kNone;
    for (int threads : {1, 2}) {
      pool.set_num_threads(threads);
      a.y = threads == 1 ? y1.data() : y2.data();
      CHECK(bsr_linear_packed(a, *packed).ok(), "bsr_linear_packed");
      t.y = threads == 1 ? dx1.data() : dx2.data();
      CHECK(bsr_linear_transposed_packed(t, *packed).ok(), "bsr_linear_transposed_packed");
    }
    a.y = y3.data();
    CHECK(bsr_linear(a, w, isa).ok(), "bsr_linear");
    t.y = dx3.data();
    CHECK(bsr_linear_transposed(t, w, isa).ok(), "bsr_linear_transposed");
    double e = rel_err(y1, yref), ed = rel_err(dx1, dxref);
    CHECK(e < 2e-6, "bsr_linear %s %dx%d rel err %.3g", isa_name(isa), int(br), int(bc), e);
    CHECK(ed < 2e-6, "bsr_linear_transposed %s %dx%d rel err %.3g", isa_name(isa), int(br), int(bc), ed);
    CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * 4) == 0, "bsr_linear %s %dx%d: 1 vs 2 threads differ",
          isa_name(isa), int(br), int(bc));
    CHECK(std::memcmp(y1.data(), y3.data(), y1.size() * 4) == 0, "bsr_linear %s: packed vs unpacked differ", isa_name(isa));
    CHECK(std::memcmp(dx1.data(), dx2.data(), dx1.size() * 4) == 0, "bsr_linear_transposed %s: threads differ", isa_name(isa));
    CHECK(std::memcmp(dx1.data(), dx3.data(), dx1.size() * 4) == 0, "bsr_linear_transposed %s: packed vs unpacked differ",
          isa_name(isa));
    // Grouped experts (three experts sharing this W, the middle one empty):
    // enough rows for the grouped kernel, plain and, where the rows split
    // into whole gate/up block rows, gated.
    {
      const int32_t off[4] = {0, 100, 100, 260};
      const int64_t gm = off[3];
      std::vector<float> gx(gm * k);
      for (auto& v : gx) v = U(rng);
      const PackedBsr* ws[3] = {packed.get(), packed.get(), packed.get()};
      for (int gated = 0; gated < 2; ++gated) {
        const int64_t gr = gated ? n / 2 : 0, on = gated ? n / 2 : n;
        if (gated && (n % 2 != 0 || gr % br != 0 || gr == 0)) continue;
        std::vector<double> gref(gm * on);
        for (int64_t t = 0; t < gm; ++t)
          for (int64_t o = 0; o < on; ++o) {
            double g = 0, u = 0;
            for (int64_t q = 0; q < k; ++q) g += double(gx[t * k + q]) * dense[o * k + q];
            if (gated)
              for (int64_t q = 0; q < k; ++q) u += double(gx[t * k + q]) * dense[(o + gr) * k + q];
            gref[t * on + o] = gated ? act_ref(g, Activation::kSilu) * u : act_ref(g, Activation::kSilu);
          }
        std::vector<float> g1(gm * on, -7.f), g2(gm * on, -7.f);
        for (int threads : {1, 2}) {
          pool.set_num_threads(threads);
          st = bsr_grouped_linear(ws, 3, off, gx.data(), gr, Activation::kSilu, threads == 1 ? g1.data() : g2.data());
          CHECK(st.ok(), "bsr_grouped_linear: %s", st.message.c_str());
        }
        double ge = rel_err(g1, gref);
        CHECK(ge < 2e-6, "bsr_grouped_linear %s %dx%d gated=%d rel err %.3g", isa_name(isa), int(br), int(bc), gated, ge);
        CHECK(std::memcmp(g1.data(), g2.data(), g1.size() * 4) == 0, "bsr_grouped_linear %s: threads differ", isa_name(isa));
      }
    }
    // sddmm: a [n, kk], b [k, kk] on W's pattern
    const int64_t kk = 1 + int64_t(rng() % 300);
    std::vector<float> sa(n * kk), sb(k * kk), c1(nnz * br * bc), c2(nnz * br * bc);
    for (auto& v : sa) v = U(rng);
    for (auto& v : sb) v = U(rng);
    std::vector<double> cref(nnz * br * bc);
    for (int64_t R = 0; R < nbr; ++R)
      for (int64_t j = row_ptr[R]; j < row_ptr[R + 1]; ++j)
        for (int64_t i = 0; i < br; ++i)
          for (int64_t q = 0; q < bc; ++q) {
            double acc = 0;
            for (int64_t z = 0; z < kk; ++z) acc += double(sa[(R * br + i) * kk + z]) * sb[(col_idx[j] * bc + q) * kk + z];
            cref[(j * br + i) * bc + q] = acc;
          }
    for (int threads : {1, 2}) {
      pool.set_num_threads(threads);
      CHECK(bsr_sddmm(sa.data(), n, kk, sb.data(), k, w, threads == 1 ? c1.data() : c2.data(), isa).ok(), "bsr_sddmm");
    }
    double es = rel_err(c1, cref);
    CHECK(es < 2e-6, "bsr_sddmm %s %dx%d k=%d rel err %.3g", isa_name(isa), int(br), int(bc), int(kk), es);
    CHECK(c1.empty() || std::memcmp(c1.data(), c2.data(), c1.size() * 4) == 0, "bsr_sddmm %s: threads differ", isa_name(isa));
  }
}

int main() {
  std::mt19937 rng(1234);
  test_pool();
  int ran = 0;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    if (!dense_kernels(isa)) continue;
    if (!isa_supported(isa)) {
      std::printf("skip %s: this CPU cannot run it\n", isa_name(isa));
      continue;
    }
    test_linear_isa(isa, rng);
    ++ran;
    std::printf("linear %s (%s): checked\n", isa_name(isa), dense_kernels(isa)->name);
    test_bsr_isa(isa, rng);
    std::printf("bsr %s (%s): checked\n", isa_name(isa), bsr_kernels(isa)->name);
    failures += routing_tests::run(isa, rng);
    std::printf("routing %s (%s): checked\n", isa_name(isa), routing_kernels(isa)->name);
  }
  CHECK(ran >= 1, "no ISA variant ran");
  std::printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
