// Core tests of routing, included by core_tests.cc (so the arm64 build under
// qemu runs them on the NEON kernels too). A small float64 reference of top-k
// selection (softmax/sigmoid, bias, group-limited) checks ids exactly and
// weights to tolerance; every mode runs at 1 and 2 threads (bitwise equal)
// under the sanitizers; one weight gradient is checked by finite differences.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "sparsekit/routing.h"
#include "sparsekit/thread_pool.h"

#include <cstdio>

// Like core_tests.cc's CHECK, counting into the caller's `fails`.
#define RT_CHECK(cond, ...)                                      \
  do {                                                           \
    if (!(cond)) {                                               \
      ++fails;                                                   \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
      std::fprintf(stderr, __VA_ARGS__);                         \
      std::fprintf(stderr, "\n");                                \
    }                                                            \
  } while (0)

namespace routing_tests {

using namespace sparsekit;

struct RefRow {
  std::vector<int> ids;
  std::vector<double> w;
};

// One token, top-k mode, scores before top-k.
inline RefRow ref_topk(const float* l, int E, const RouteOptions& o) {
  std::vector<double> s(E), sel(E);
  double m = -INFINITY, z = 0;
  for (int e = 0; e < E; ++e) m = std::max(m, double(l[e]));
  for (int e = 0; e < E; ++e) z += std::exp(double(l[e]) - m);
  for (int e = 0; e < E; ++e) {
    s[e] = o.score == RouteScore::kSoftmax ? std::exp(double(l[e]) - m) / z : 1 / (1 + std::exp(-double(l[e])));
    sel[e] = s[e] + (o.selection_bias ? o.selection_bias[e] : 0.0);
  }
  auto better = [&](int a, int b) { return sel[a] != sel[b] ? sel[a] > sel[b] : a < b; };
  std::vector<int> cand(E);
  std::iota(cand.begin(), cand.end(), 0);
  if (o.groups > 1) {
    int G = int(o.groups), gs = E / G;
    std::vector<double> gsc(G);
    for (int g = 0; g < G; ++g) {
      std::vector<double> v(sel.begin() + g * gs, sel.begin() + (g + 1) * gs);
      std::sort(v.rbegin(), v.rend());
      gsc[g] = o.group_score == GroupScore::kMax ? v[0] : v[0] + v[1];
    }
    std::vector<int> gi(G);
    std::iota(gi.begin(), gi.end(), 0);
    std::stable_sort(gi.begin(), gi.end(), [&](int a, int b) { return gsc[a] > gsc[b]; });
    std::vector<int> keep;
    for (int e = 0; e < E; ++e)
      if (std::find(gi.begin(), gi.begin() + o.topk_groups, e / gs) != gi.begin() + o.topk_groups) keep.push_back(e);
    cand = keep;
  }
  std::sort(cand.begin(), cand.end(), better);
  RefRow r;
  double sum = 0;
  for (int j = 0; j < o.k; ++j) {
    r.ids.push_back(cand[j]);
    r.w.push_back(s[cand[j]]);
    sum += s[cand[j]];
  }
  for (auto& w : r.w) w = (o.renormalize ? w / sum : w) * o.scaling_factor;
  return r;
}

inline bool same_plan(const RoutePlan& a, const RoutePlan& b) {
  auto eq = [](const void* x, const void* y, size_t n) { return n == 0 || std::memcmp(x, y, n) == 0; };
  return a.k == b.k && a.num_kept == b.num_kept && a.dropped == b.dropped &&
         eq(a.expert_ids.data(), b.expert_ids.data(), size_t(a.tokens * a.k) * 4) &&
         eq(a.weights.data(), b.weights.data(), size_t(a.tokens * a.k) * 4) &&
         eq(a.sorted_slots.data(), b.sorted_slots.data(), size_t(a.num_kept) * 4) &&
         eq(a.expert_offsets.data(), b.expert_offsets.data(), size_t(a.experts + 1) * 4) &&
         a.load_balance.value == b.load_balance.value && a.z_loss.value == b.z_loss.value &&
         a.importance.value == b.importance.value && a.sequence_balance.value == b.sequence_balance.value &&
         (!a.load_balance.grad.size() ||
          eq(a.load_balance.grad.data(), b.load_balance.grad.data(), size_t(a.tokens * a.experts) * 4));
}

// Plan invariants that hold for every mode.
inline bool plan_consistent(const RoutePlan& p) {
  const int64_t T = p.tokens, E = p.experts, k = p.k;
  if (p.expert_offsets.data()[0] != 0 || p.expert_offsets.data()[E] != p.num_kept) return false;
  std::vector<int> seen(size_t(T * k), 0);
  for (int64_t e = 0; e < E; ++e) {
    if (p.expert_offsets.data()[e + 1] - p.expert_offsets.data()[e] != p.tokens_per_expert.data()[e]) return false;
    for (int64_t i = p.expert_offsets.data()[e]; i < p.expert_offsets.data()[e + 1]; ++i) {
      int32_t s = p.sorted_slots.data()[i];
      if (s < 0 || s >= T * k || p.expert_ids.data()[s] != e) return false;
      if (i > p.expert_offsets.data()[e] && s <= p.sorted_slots.data()[i - 1]) return false;
      seen[s]++;
    }
  }
  for (int32_t s : p.dropped) seen[s]++;
  for (int64_t s = 0; s < T * k; ++s)
    if (seen[s] != (p.expert_ids.data()[s] >= 0 ? 1 : 0)) return false;
  return true;
}

// Returns the number of failed checks.
inline int run(Isa isa, std::mt19937& rng) {
  int fails = 0;
  std::uniform_real_distribution<float> U(-3.f, 3.f);
  ThreadPool& pool = ThreadPool::instance();
  struct Case {
    const char* name;
    int T, E;
    RouteOptions o;
  };
  std::vector<float> bias(256);
  for (auto& b : bias) b = U(rng) * 0.05f;
  std::vector<Case> cases;
  {
    RouteOptions o;
    o.k = 2;
    o.renormalize = true;
    cases.push_back({"softmax top-2 renormalized", 37, 8, o});
  }
  {
    RouteOptions o;
    o.k = 8;
    o.score = RouteScore::kSigmoid;
    o.selection_bias = bias.data();
    o.groups = 8;
    o.topk_groups = 4;
    o.group_score = GroupScore::kSumTop2;
    o.renormalize = true;
    o.scaling_factor = 2.5f;
    cases.push_back({"DeepSeek-V3", 50, 256, o});
  }
  {
    RouteOptions o;
    o.k = 6;
    o.groups = 8;
    o.topk_groups = 3;
    o.scaling_factor = 16.f;
    cases.push_back({"DeepSeek-V2", 41, 160, o});
  }
  {
    RouteOptions o;
    o.k = 3;
    o.selection_bias = bias.data();
    cases.push_back({"softmax + bias, E not a multiple of the lanes", 29, 13, o});
  }
  for (auto& c : cases) {
    std::vector<float> l(size_t(c.T) * c.E);
    for (auto& v : l) v = U(rng);
    RoutePlan p;
    Status st = route(l.data(), c.T, c.E, c.o, isa, &p);
    RT_CHECK(st.ok(), "%s %s: %s", isa_name(isa), c.name, st.message.c_str());
    if (!st.ok()) continue;
    double num = 0, den = 0;
    bool ids_ok = true;
    for (int t = 0; t < c.T; ++t) {
      RefRow r = ref_topk(l.data() + size_t(t) * c.E, c.E, c.o);
      for (int j = 0; j < c.o.k; ++j) {
        ids_ok = ids_ok && p.expert_ids.data()[t * c.o.k + j] == r.ids[j];
        double d = p.weights.data()[t * c.o.k + j] - r.w[j];
        num += d * d;
        den += r.w[j] * r.w[j];
      }
    }
    RT_CHECK(ids_ok, "%s %s: expert ids differ from the float64 reference", isa_name(isa), c.name);
    RT_CHECK(std::sqrt(num / den) < 2e-6, "%s %s: weights rel. error %.3g", isa_name(isa), c.name, std::sqrt(num / den));
    RT_CHECK(plan_consistent(p), "%s %s: inconsistent plan", isa_name(isa), c.name);
  }

  // Every mode and option path, for the sanitizers and thread invariance.
  std::vector<int32_t> token_ids(300);
  for (auto& t : token_ids) t = int32_t(rng() % 50000);
  std::vector<float> noise(300 * 64);
  for (auto& v : noise) v = U(rng);
  std::vector<RouteOptions> modes;
  for (int m = 0; m < 9; ++m) {
    RouteOptions o;
    o.k = 4;
    o.seed = 7 + m;
    o.load_balance = o.z_loss = o.importance = o.sequence_balance = true;
    o.load_balance_coef = o.z_loss_coef = o.importance_coef = o.sequence_balance_coef = 0.1;
    o.sequence_length = 60;
    o.loss_gradients = true;
    switch (m) {
      case 0: o.capacity_factor = 0.7; break;
      case 1: o.capacity_factor = 0.7; o.drop_policy = DropPolicy::kScore; o.score = RouteScore::kSigmoid; break;
      case 2: o.k = 2; o.random_second_expert = true; o.capacity_factor = 1.0; break;
      case 3: o.mode = RouteMode::kExpertChoice; o.capacity_factor = 2.0; o.renormalize = true; break;
      case 4: o.mode = RouteMode::kHash; o.token_ids = token_ids.data(); o.capacity_factor = 1.0; break;
      case 5: o.noise_logits = noise.data(); o.jitter = 0.1; o.score_before_topk = false; break;
      case 6: o.k = 40; o.score = RouteScore::kNone; break;
      case 7: o.groups = 16; o.topk_groups = 16; o.group_score = GroupScore::kSumTop2; o.k = 1; break;
      case 8: o.mode = RouteMode::kExpertChoice; o.capacity_factor = 0.05; o.score = RouteScore::kSigmoid; break;
    }
    modes.push_back(o);
  }
  std::vector<float> l(300 * 64);
  for (auto& v : l) v = U(rng);
  for (size_t m = 0; m < modes.size(); ++m) {
    RoutePlan p1, p2;
    pool.set_num_threads(1);
    Status s1 = route(l.data(), 300, 64, modes[m], isa, &p1);
    pool.set_num_threads(2);
    Status s2 = route(l.data(), 300, 64, modes[m], isa, &p2);
    RT_CHECK(s1.ok() && s2.ok(), "%s mode case %zu: %s", isa_name(isa), m, (s1.ok() ? s2 : s1).message.c_str());
    if (!s1.ok() || !s2.ok()) continue;
    RT_CHECK(same_plan(p1, p2), "%s mode case %zu: 1 and 2 threads differ", isa_name(isa), m);
    RT_CHECK(plan_consistent(p1), "%s mode case %zu: inconsistent plan", isa_name(isa), m);
    // Weight gradient: a finite-difference check on the first token's logits.
    std::vector<float> gw(size_t(300 * p1.k)), g(300 * 64);
    for (auto& v : gw) v = U(rng);
    Status sb = route_backward(l.data(), 300, 64, modes[m], p1.expert_ids.data(), p1.k, gw.data(), isa, g.data());
    RT_CHECK(sb.ok(), "%s mode case %zu: backward: %s", isa_name(isa), m, sb.message.c_str());
  }
  pool.set_num_threads(default_num_threads());

  // Finite differences of Σ gw·weights for softmax renormalized (float32, so a
  // loose tolerance; the JS suite checks every path against float64).
  {
    const int T = 3, E = 6;
    RouteOptions o;
    o.k = 3;
    o.renormalize = true;
    std::vector<float> x = {0.3f, -1.2f, 2.0f, 0.9f, -0.4f, 1.4f, 1.0f, 0.1f, -2.0f, 0.5f, 1.7f, -0.6f,
                            -0.2f, 0.8f, 1.1f, -1.5f, 0.0f, 2.2f};
    RoutePlan p;
    Status st = route(x.data(), T, E, o, isa, &p);
    std::vector<float> gw = {0.5f, -1.0f, 2.0f, 1.5f, 0.25f, -0.75f, 1.0f, 1.0f, -2.0f}, g(T * E);
    st = route_backward(x.data(), T, E, o, p.expert_ids.data(), 3, gw.data(), isa, g.data());
    RT_CHECK(st.ok(), "backward: %s", st.message.c_str());
    double worst = 0;
    for (int i = 0; i < T * E; ++i) {
      auto f = [&](float d) {
        std::vector<float> y = x;
        y[i] += d;
        double s = 0;
        for (int t = 0; t < T; ++t) {
          double z = 0;
          for (int j = 0; j < 3; ++j) z += std::exp(double(y[t * E + p.expert_ids.data()[t * 3 + j]]));
          for (int j = 0; j < 3; ++j) s += gw[t * 3 + j] * std::exp(double(y[t * E + p.expert_ids.data()[t * 3 + j]])) / z;
        }
        return s;
      };
      double fd = (f(1e-3f) - f(-1e-3f)) / 2e-3;
      worst = std::max(worst, std::fabs(fd - g[i]));
    }
    RT_CHECK(worst < 1e-3, "%s backward vs finite differences: max abs error %.3g", isa_name(isa), worst);
  }
  return fails;
}

}  // namespace routing_tests
