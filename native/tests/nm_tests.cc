// C++ tests of the N:M core (ctest; also under AddressSanitizer + UBSan and,
// cross-compiled, under qemu for NEON): every kernel path on every ISA the CPU
// runs against a float64 reference built from the dense matrix, thread-count
// invariance, the format operations and the half-precision conversions.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "sparsekit/nm.h"
#include "sparsekit/runtime.h"
#include "sparsekit/thread_pool.h"

using namespace sparsekit;

static int failures = 0;
#define CHECK(cond, ...)                                        \
  do {                                                          \
    if (!(cond)) {                                              \
      ++failures;                                               \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);                        \
      std::fprintf(stderr, "\n");                               \
    }                                                           \
  } while (0)

static double rel_err(const std::vector<float>& y, const std::vector<double>& r) {
  double num = 0, den = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    num += (y[i] - r[i]) * (y[i] - r[i]);
    den += r[i] * r[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

struct Pattern {
  int n, m;
};
// Tuned ones and a few generic ones (n ∤ 8, m not a power of two, m = 16).
static const Pattern kPatterns[] = {{1, 2}, {2, 4}, {1, 4}, {2, 8}, {1, 8}, {4, 8}, {3, 4}, {2, 3}, {5, 16}, {2, 16}};

static void test_kernels() {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1, 1);
  // rows prime; tokens cover the row-streaming path (1, 2) and every tile width.
  const int64_t rows_list[] = {1, 7, 97, 131, 389};
  const int64_t tokens_list[] = {1, 2, 3, 9, 17, 33, 70, 130};
  for (const Pattern& p : kPatterns) {
    for (int64_t rows : rows_list) {
      int64_t groups = 1 + int64_t(rng() % 40);
      NmShape s{rows, groups * p.m, p.n, p.m};
      int64_t kept = nm_kept_per_row(s), ib = nm_index_bytes_per_row(s);
      std::vector<float> vals(s.rows * kept), dense(s.rows * s.cols);
      std::vector<uint8_t> idx(s.rows * ib);
      nm_random(s, uint64_t(rows * 1000 + p.m), 1.0f, vals.data(), idx.data());
      nm_to_dense(s, vals.data(), idx.data(), dense.data());
      for (int64_t m : tokens_list) {
        std::vector<float> x(m * s.cols), bias(s.rows), dy(m * s.rows);
        for (auto& v : x) v = u(rng);
        for (auto& v : bias) v = u(rng);
        for (auto& v : dy) v = u(rng);
        std::vector<double> ref(m * s.rows, 0.0), dref(m * s.cols, 0.0);
        for (int64_t t = 0; t < m; ++t)
          for (int64_t r = 0; r < s.rows; ++r) {
            double a = bias[r];
            for (int64_t c = 0; c < s.cols; ++c) a += double(x[t * s.cols + c]) * dense[r * s.cols + c];
            ref[t * s.rows + r] = a > 0 ? a : 0;  // relu
            for (int64_t c = 0; c < s.cols; ++c) dref[t * s.cols + c] += double(dy[t * s.rows + r]) * dense[r * s.cols + c];
          }
        for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
          if (!nm_kernels(isa) || !isa_supported(isa)) continue;
          std::shared_ptr<PackedNm> w;
          Status st = pack_nm(s, vals.data(), idx.data(), isa, &w);
          CHECK(st.ok(), "pack_nm: %s", st.message.c_str());
          if (!st.ok()) continue;
          std::vector<float> y[2], dx[2];
          for (int threads : {1, 2}) {
            ThreadPool::instance().set_num_threads(threads);
            y[threads - 1].assign(m * s.rows, -7.f);
            dx[threads - 1].assign(m * s.cols, -7.f);
            NmLinearArgs a;
            a.x = x.data();
            a.m = m;
            a.bias = bias.data();
            a.act = Activation::kRelu;
            a.y = y[threads - 1].data();
            CHECK(nm_linear_packed(a, *w).ok(), "nm_linear_packed");
            CHECK(nm_linear_transposed_packed(dy.data(), m, *w, dx[threads - 1].data()).ok(), "transposed");
          }
          double e = rel_err(y[0], ref), et = rel_err(dx[0], dref);
          CHECK(e < 1e-5, "%s %d:%d rows=%ld cols=%ld m=%ld: forward rel err %g", isa_name(isa), p.n, p.m, (long)rows,
                (long)s.cols, (long)m, e);
          CHECK(et < 1e-5, "%s %d:%d rows=%ld cols=%ld m=%ld: transposed rel err %g", isa_name(isa), p.n, p.m,
                (long)rows, (long)s.cols, (long)m, et);
          CHECK(std::memcmp(y[0].data(), y[1].data(), y[0].size() * 4) == 0, "%s %d:%d m=%ld: 1 vs 2 threads differ",
                isa_name(isa), p.n, p.m, (long)m);
          CHECK(std::memcmp(dx[0].data(), dx[1].data(), dx[0].size() * 4) == 0,
                "%s %d:%d m=%ld: transposed 1 vs 2 threads differ", isa_name(isa), p.n, p.m, (long)m);
        }
      }
    }
  }
  ThreadPool::instance().set_num_threads(default_num_threads());
}

static void test_format() {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1, 1);
  for (const Pattern& p : kPatterns) {
    NmShape s{13, p.m * 9, p.n, p.m};
    int64_t kept = nm_kept_per_row(s), ib = nm_index_bytes_per_row(s);
    std::vector<float> w(s.rows * s.cols), vals(s.rows * kept), dense(w.size()), mask(w.size()), vals2(vals.size()),
        pmask(w.size());
    std::vector<uint8_t> idx(s.rows * ib), idx2(idx.size());
    for (auto& v : w) v = u(rng);
    // Ties: equal magnitudes in the first group of every row.
    for (int64_t r = 0; r < s.rows; ++r)
      for (int i = 0; i < s.m; ++i) w[r * s.cols + i] = (i % 2 ? -0.5f : 0.5f);
    nm_prune(w.data(), s, vals.data(), idx.data());
    CHECK(nm_validate_indices(s, idx.data()).ok(), "%d:%d prune makes valid indices", p.n, p.m);
    nm_to_dense(s, vals.data(), idx.data(), dense.data());
    nm_mask(s, idx.data(), mask.data());
    nm_prune_mask(w.data(), s, pmask.data());
    CHECK(std::memcmp(mask.data(), pmask.data(), mask.size() * 4) == 0, "%d:%d prune mask = mask of prune", p.n, p.m);
    CHECK(nm_is_nm(dense.data(), s.rows, s.cols, s.n, s.m), "%d:%d pruned matrix is N:M", p.n, p.m);
    for (int64_t r = 0; r < s.rows; ++r) {
      // ties: the first n columns of the tied group are kept
      for (int i = 0; i < s.m; ++i)
        CHECK(mask[r * s.cols + i] == (i < s.n ? 1.f : 0.f), "%d:%d ties keep lower columns", p.n, p.m);
      for (int64_t g = 1; g < s.cols / s.m; ++g) {
        float min_kept = 2, max_dropped = -1;
        for (int i = 0; i < s.m; ++i) {
          float a = std::fabs(w[r * s.cols + g * s.m + i]);
          if (mask[r * s.cols + g * s.m + i] == 1.f) min_kept = std::min(min_kept, a);
          else max_dropped = std::max(max_dropped, a);
        }
        CHECK(min_kept >= max_dropped, "%d:%d prune keeps the largest", p.n, p.m);
      }
    }
    Status st = nm_from_mask(dense.data(), mask.data(), s, vals2.data(), idx2.data());
    CHECK(st.ok() && vals == vals2 && idx == idx2, "%d:%d fromMask(toDense, mask) round trip", p.n, p.m);
    // corrupt: duplicate index
    if (s.n >= 2) {
      std::vector<uint8_t> bad = idx;
      // slot 1 of group 0 of row 3 := slot 0's index
      int bits = nm_index_bits(s.m);
      int first = 0;
      for (int b = 0; b < bits; ++b) first |= ((bad[3 * ib + (b / 8)] >> (b % 8)) & 1) << b;
      for (int b = 0; b < bits; ++b) {
        int pos = bits + b;
        uint8_t& byte = bad[3 * ib + pos / 8];
        byte = uint8_t((byte & ~(1 << (pos % 8))) | (((first >> b) & 1) << (pos % 8)));
      }
      Status sb = nm_validate_indices(s, bad.data());
      CHECK(!sb.ok() && sb.message.find("row 3") != std::string::npos, "%d:%d duplicate index rejected: %s", p.n, p.m,
            sb.message.c_str());
    }
  }
}

static void test_half() {
  // Exact conversions both ways for every finite half (fp16) and a bf16 sweep.
  for (uint32_t h = 0; h < 65536; ++h) {
    uint16_t b = uint16_t(h);
    float f = half_bits_to_float(b, HalfType::kFloat16);
    if (std::isnan(f)) continue;
    CHECK(float_to_half_bits(f, HalfType::kFloat16) == b, "fp16 round trip %04x", h);
    float g = half_bits_to_float(b, HalfType::kBFloat16);
    if (!std::isnan(g)) CHECK(float_to_half_bits(g, HalfType::kBFloat16) == b, "bf16 round trip %04x", h);
  }
  // Round to nearest even at a tie, overflow, underflow.
  CHECK(float_to_half_bits(1.0f + 1.0f / 2048, HalfType::kFloat16) == 0x3c00, "fp16 tie to even (down)");
  CHECK(float_to_half_bits(1.0f + 3.0f / 2048, HalfType::kFloat16) == 0x3c02, "fp16 tie to even (up)");
  CHECK(float_to_half_bits(65520.f, HalfType::kFloat16) == 0x7c00, "fp16 overflow to inf");
  CHECK(float_to_half_bits(65519.f, HalfType::kFloat16) == 0x7bff, "fp16 max");
  CHECK(float_to_half_bits(2.9802322e-8f, HalfType::kFloat16) == 0x0000, "fp16 2^-25 ties to 0");
  CHECK(float_to_half_bits(2.9802326e-8f, HalfType::kFloat16) == 0x0001, "fp16 just above 2^-25 rounds up");
  CHECK(float_to_half_bits(1.0f + 1.0f / 256, HalfType::kBFloat16) == 0x3f80, "bf16 tie to even");
  CHECK(std::isnan(half_bits_to_float(float_to_half_bits(std::nanf(""), HalfType::kFloat16), HalfType::kFloat16)),
        "fp16 NaN stays NaN");
}

// Grouped experts (plain and gated) against a float64 per-expert loop: uneven
// groups with empty experts, decode-sized groups, row counts that are not a
// multiple of the panel height (gated: the up half starts mid-panel).
static void test_grouped() {
  std::mt19937 rng(23);
  std::uniform_real_distribution<float> u(-1, 1);
  struct Case { int64_t experts; std::vector<int32_t> sizes; };
  // Uneven groups: small experts, whole main tiles with a narrower tail
  // tile riding along (130 = 2·64 + 2, 72, 136), tails as wide as the main
  // tiles (119, 100), empty experts.
  const Case cases[] = {{4, {0, 37, 5, 90}},  {3, {1, 0, 2}},   {5, {64, 64, 0, 129, 3}}, {1, {200}},
                        {2, {0, 0}},          {3, {130, 72, 136}}, {4, {119, 100, 9, 66}}};
  const Pattern pats[] = {{2, 4}, {1, 4}, {1, 8}, {3, 4}};
  for (const Pattern& p : pats)
    for (int64_t out : {int64_t(38), int64_t(96), int64_t(202), int64_t(398)})
      for (const Case& c : cases)
        for (int gated = 0; gated < 2; ++gated) {
          // up to 600 columns: several column blocks for every tile width
          const int64_t E = c.experts, cols = p.m * (3 + int64_t(rng() % (600 / p.m)));
          NmShape s{out, cols, p.n, p.m};
          const int64_t kept = nm_kept_per_row(s), ib = nm_index_bytes_per_row(s);
          std::vector<int32_t> off(E + 1, 0);
          for (int64_t e = 0; e < E; ++e) off[e + 1] = off[e] + c.sizes[e];
          const int64_t rows = off[E], ycols = gated ? out / 2 : out;
          std::vector<float> xs(rows * cols);
          for (auto& v : xs) v = u(rng);
          std::vector<std::vector<float>> dense(E, std::vector<float>(out * cols));
          std::vector<std::vector<float>> vals(E, std::vector<float>(out * kept));
          std::vector<std::vector<uint8_t>> idx(E, std::vector<uint8_t>(out * ib));
          for (int64_t e = 0; e < E; ++e) {
            nm_random(s, uint64_t(e * 77 + out), 1.0f, vals[e].data(), idx[e].data());
            nm_to_dense(s, vals[e].data(), idx[e].data(), dense[e].data());
          }
          std::vector<double> ref(rows * ycols);
          for (int64_t e = 0; e < E; ++e)
            for (int64_t r = off[e]; r < off[e + 1]; ++r)
              for (int64_t j = 0; j < ycols; ++j) {
                auto dot = [&](int64_t o) {
                  double a = 0;
                  for (int64_t k = 0; k < cols; ++k) a += double(xs[r * cols + k]) * dense[e][o * cols + k];
                  return a;
                };
                double g = dot(j);
                ref[r * ycols + j] = gated ? g / (1 + std::exp(-g)) * dot(j + ycols) : (g > 0 ? g : 0);
              }
          for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
            if (!nm_kernels(isa) || !isa_supported(isa)) continue;
            std::vector<std::shared_ptr<PackedNm>> w(E);
            std::vector<const PackedNm*> wp(E);
            for (int64_t e = 0; e < E; ++e) {
              CHECK(pack_nm(s, vals[e].data(), idx[e].data(), isa, &w[e]).ok(), "pack_nm");
              wp[e] = w[e].get();
            }
            std::vector<float> y[2];
            for (int threads : {1, 2}) {
              ThreadPool::instance().set_num_threads(threads);
              y[threads - 1].assign(rows * ycols, -7.f);
              Status st = nm_grouped_linear(wp.data(), E, off.data(), xs.data(), gated ? ycols : 0,
                                            gated ? Activation::kSilu : Activation::kRelu, y[threads - 1].data());
              CHECK(st.ok(), "nm_grouped_linear: %s", st.message.c_str());
            }
            double e = rel_err(y[0], ref);
            CHECK(e < 1e-5, "%s grouped %d:%d out=%ld cols=%ld E=%ld rows=%ld gated=%d: rel err %g", isa_name(isa), p.n,
                  p.m, (long)out, (long)cols, (long)E, (long)rows, gated, e);
            CHECK(y[0].empty() || std::memcmp(y[0].data(), y[1].data(), y[0].size() * 4) == 0,
                  "%s grouped %d:%d: 1 vs 2 threads differ",
                  isa_name(isa), p.n, p.m);
          }
        }
  ThreadPool::instance().set_num_threads(default_num_threads());
}

int main() {
  test_format();
  test_half();
  test_kernels();
  test_grouped();
  if (failures) {
    std::fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  std::printf("nm_tests: all passed\n");
  return 0;
}
