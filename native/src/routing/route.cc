// The routing orchestrator: dispatch, the deterministic histogram / prefix sum
// / stable scatter of slots by expert, capacity and dropping, expert choice's
// per-expert selection, and the loss reductions. Compiled without ISA flags:
// the arithmetic-heavy per-token work runs in the per-ISA row kernels
// (route_impl.h); what is here is counting, sorting and bookkeeping, one
// portable implementation for every ISA.
//
// Thread-count independence: token blocks are fixed by the shape; per-block
// histograms are turned into per-block write cursors by a prefix sum over
// blocks in block order, so every slot lands at the same position whichever
// thread scatters it; loss partial sums are added over blocks in order.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "route_job.h"
#include "sparsekit/routing.h"
#include "sparsekit/runtime.h"
#include "sparsekit/thread_pool.h"

namespace sparsekit {

const RoutingKernels* routing_kernels_scalar();
#if defined(__x86_64__)
const RoutingKernels* routing_kernels_avx2();
const RoutingKernels* routing_kernels_avx512();
#endif
#if defined(__aarch64__)
const RoutingKernels* routing_kernels_neon();
#endif

const RoutingKernels* routing_kernels(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return routing_kernels_scalar();
#if defined(__x86_64__)
    case Isa::kAvx2: return routing_kernels_avx2();
    case Isa::kAvx512: return routing_kernels_avx512();
#endif
#if defined(__aarch64__)
    case Isa::kNeon: return routing_kernels_neon();
#endif
    default: return nullptr;
  }
}

int64_t route_capacity(RouteMode mode, int64_t tokens, int64_t experts, int64_t k, double capacity_factor) {
  if (!(capacity_factor > 0)) return 0;
  double t = static_cast<double>(tokens), e = static_cast<double>(experts);
  double c = mode == RouteMode::kExpertChoice ? std::ceil(t * capacity_factor / e)
                                              : std::ceil(static_cast<double>(k) * t * capacity_factor / e);
  if (!(c >= 1)) c = 1;
  if (c > t) c = t;  // an expert can take each token at most once
  return static_cast<int64_t>(c);
}

int64_t find_non_finite(const float* p, int64_t n) {
  const int64_t chunk = 1 << 16;
  std::atomic<int64_t> first{std::numeric_limits<int64_t>::max()};
  ThreadPool::instance().parallel_for((n + chunk - 1) / chunk, [&](int64_t c, int) {
    const int64_t i0 = c * chunk, i1 = std::min(n, i0 + chunk);
    // Branch-free scan (vectorises); locate the culprit only on failure.
    uint32_t bad = 0;
    for (int64_t i = i0; i < i1; ++i) {
      uint32_t u;
      std::memcpy(&u, p + i, 4);
      bad |= static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
    }
    if (!bad) return;
    for (int64_t i = i0; i < i1; ++i) {
      if (std::isfinite(p[i])) continue;
      int64_t cur = first.load();
      while (i < cur && !first.compare_exchange_weak(cur, i)) {
      }
      return;
    }
  });
  int64_t f = first.load();
  return f == std::numeric_limits<int64_t>::max() ? -1 : f;
}

void update_selection_bias(const float* bias, const int32_t* tpe, int64_t experts, float gamma, float* out) {
  double total = 0;
  for (int64_t e = 0; e < experts; ++e) total += tpe[e];
  double mean = total / static_cast<double>(experts);
  for (int64_t e = 0; e < experts; ++e) {
    double err = mean - static_cast<double>(tpe[e]);
    float sign = err > 0 ? 1.f : (err < 0 ? -1.f : 0.f);
    out[e] = bias[e] + gamma * sign;
  }
}

namespace {

struct KeyGreater {
  bool operator()(uint64_t a, uint64_t b) const { return a > b; }
};

bool fits_i32(int64_t v) { return v >= 0 && v <= std::numeric_limits<int32_t>::max(); }

// Checks what would make the kernels index out of bounds. The binding has
// already turned every user mistake into a named error; this is the core's
// own guard for direct C++ callers.
Status check_common(int64_t T, int64_t E, const RouteOptions& o) {
  if (T < 1 || E < 1) return Status::Range("route: tokens and experts must be ≥ 1");
  if (!fits_i32(T * E)) return Status::Range("route: tokens·experts must fit in int32");
  if (o.mode != RouteMode::kExpertChoice) {
    if (o.k < 1 || o.k > E) return Status::Range("route: k must be in [1, experts]");
    if (!fits_i32(T * o.k)) return Status::Range("route: tokens·k must fit in int32");
  }
  if (o.groups > 1) {
    if (E % o.groups != 0) return Status::Range("route: experts must be divisible by groups");
    if (o.topk_groups < 1 || o.topk_groups > o.groups) return Status::Range("route: topkGroups must be in [1, groups]");
    if (o.k > o.topk_groups * (E / o.groups)) return Status::Range("route: k exceeds the experts in topkGroups groups");
    if (o.group_score == GroupScore::kSumTop2 && E / o.groups < 2)
      return Status::Range("route: groupScore sum-top2 needs ≥ 2 experts per group");
  }
  if (o.mode == RouteMode::kHash && !o.token_ids) return Status::Invalid("route: hash mode needs tokenIds");
  if (o.random_second_expert && o.k != 2) return Status::Range("route: randomSecondExpert needs k = 2");
  if (o.mode == RouteMode::kExpertChoice && !(o.capacity_factor > 0))
    return Status::Range("route: expert choice needs capacityFactor > 0");
  if (o.sequence_length < 0 || (o.sequence_length > 0 && T % o.sequence_length != 0))
    return Status::Range("route: tokens must be a multiple of sequenceLength");
  return Status::Ok();
}

// Blocks of tokens: about 16K logits each (enough work per task to hide the
// scheduling, small enough for both threads to stay busy), never crossing a
// sequence boundary. Depends on the shape only.
void set_blocks(RouteJob* J, int64_t T, int64_t E, int64_t seq_len) {
  int64_t B = 16384 / E;
  B = B < 32 ? 32 : (B > 256 ? 256 : B);
  J->block_tokens = B;
  J->seq_len = seq_len;
  J->blocks_per_seq = (seq_len + B - 1) / B;
  J->num_blocks = (T / seq_len) * J->blocks_per_seq;
}

void set_keys(RouteJob* J, uint64_t seed) {
  J->key_noise = rk_stream_key(seed, kStreamNoise);
  J->key_jitter = rk_stream_key(seed, kStreamJitter);
  J->key_gshard = rk_stream_key(seed, kStreamGshard);
  J->key_hash = rk_stream_key(seed, kStreamHash);
}

template <class T>
bool alloc(AlignedBuffer<T>* b, int64_t n, bool zero) {
  size_t m = static_cast<size_t>(n > 0 ? n : 1);
  return zero ? b->resize_zeroed(m) : b->resize(m);
}

// The counts every loss needs, reduced over blocks in order.
struct LossInputs {
  std::vector<double> counts;      // [E] selected slots (before any drop)
  std::vector<double> seq_counts;  // [sequences, E]
  std::vector<double> wsum;        // [E] Σ final weights (importance)
  AlignedBuffer<double> psum;      // [blocks, E]
  AlignedBuffer<double> zsum;      // [blocks]
};

Status finish_losses(RouteJob& J, const RoutingKernels& K, const RouteOptions& o, LossInputs& in, RoutePlan* plan) {
  const int64_t T = J.tokens, E = J.experts;
  const double dE = static_cast<double>(E);
  AlignedBuffer<float> lb_up, seq_up, imp_up;
  const int64_t nseq = T / J.seq_len;

  if (o.load_balance) {
    // Switch Transformer: α·E·Σ f_i·P_i with f_i the fraction of tokens sent
    // to expert i (c_i / T, summing to k for top-k) and P_i the mean router
    // probability: Hugging Face's load_balancing_loss_func for Mixtral/Qwen.
    std::vector<double> P(static_cast<size_t>(E), 0.0);
    for (int64_t b = 0; b < J.num_blocks; ++b)
      for (int64_t e = 0; e < E; ++e) P[e] += in.psum.data()[b * E + e];
    const double dT = static_cast<double>(T);
    double v = 0;
    if (!alloc(&lb_up, E, true)) return Status::Oom("route: out of memory");
    for (int64_t e = 0; e < E; ++e) {
      double f = in.counts[e] / dT;
      v += f * (P[e] / dT);
      lb_up.data()[e] = static_cast<float>(o.load_balance_coef * dE * f / dT);
    }
    plan->load_balance.computed = true;
    plan->load_balance.value = o.load_balance_coef * dE * v;
  }
  if (o.sequence_balance) {
    // DeepSeek-V2/V3 sequence-wise balance, per sequence of L tokens:
    // α·Σ f_i·P_i with f_i = E·c_i/(k·L) (k·L = the sequence's selected
    // slots), averaged over sequences.
    const double Ls = static_cast<double>(J.seq_len);
    if (!alloc(&seq_up, nseq * E, true)) return Status::Oom("route: out of memory");
    double total = 0;
    std::vector<double> P(static_cast<size_t>(E));
    for (int64_t q = 0; q < nseq; ++q) {
      std::fill(P.begin(), P.end(), 0.0);
      for (int64_t b = q * J.blocks_per_seq; b < (q + 1) * J.blocks_per_seq; ++b)
        for (int64_t e = 0; e < E; ++e) P[e] += in.psum.data()[b * E + e];
      const double* c = in.seq_counts.data() + q * E;
      double S = 0;
      for (int64_t e = 0; e < E; ++e) S += c[e];
      double v = 0;
      for (int64_t e = 0; e < E; ++e) {
        double f = S > 0 ? c[e] / S : 0;
        v += f * (P[e] / Ls);
        seq_up.data()[q * E + e] =
            static_cast<float>(o.sequence_balance_coef * dE * f / (Ls * static_cast<double>(nseq)));
      }
      total += dE * v;
    }
    plan->sequence_balance.computed = true;
    plan->sequence_balance.value = o.sequence_balance_coef * total / static_cast<double>(nseq);
  }
  if (o.z_loss) {
    // ST-MoE router z-loss: mean over tokens of logsumexp(logits)².
    double z = 0;
    for (int64_t b = 0; b < J.num_blocks; ++b) z += in.zsum.data()[b];
    plan->z_loss.computed = true;
    plan->z_loss.value = o.z_loss_coef * z / static_cast<double>(T);
    J.z_scale = o.z_loss_coef * 2.0 / static_cast<double>(T);
  }
  if (o.importance) {
    // Shazeer et al. 2017: CV(Σ_t gates)², with their ε = 1e-10 in the
    // denominator so an all-zero importance is 0, not NaN.
    double mean = 0;
    for (int64_t e = 0; e < E; ++e) mean += in.wsum[e];
    mean /= dE;
    double var = 0;
    for (int64_t e = 0; e < E; ++e) var += (in.wsum[e] - mean) * (in.wsum[e] - mean);
    var /= dE;
    double d = mean * mean + 1e-10;
    plan->importance.computed = true;
    plan->importance.value = o.importance_coef * var / d;
    if (!alloc(&imp_up, E, true)) return Status::Oom("route: out of memory");
    for (int64_t e = 0; e < E; ++e) {
      double dv = 2.0 / dE * (in.wsum[e] - mean);
      double dm = 1.0 / dE;
      double g = (dv * d - var * 2.0 * mean * dm) / (d * d);
      imp_up.data()[e] = static_cast<float>(o.importance_coef * g);
    }
  }

  if (!o.loss_gradients) return Status::Ok();
  auto grad = [&](RouteLoss& l, float** dst) -> bool {
    if (!l.computed) return true;
    if (!alloc(&l.grad, T * E, false)) return false;
    *dst = l.grad.data();
    return true;
  };
  if (!grad(plan->load_balance, &J.grad_load_balance) || !grad(plan->z_loss, &J.grad_z) ||
      !grad(plan->importance, &J.grad_importance) || !grad(plan->sequence_balance, &J.grad_sequence))
    return Status::Oom("route: out of memory for the loss gradients");
  J.lb_up = lb_up.data();
  J.seq_up = seq_up.data();
  J.imp_up = imp_up.data();
  J.plan_ids = plan->expert_ids.data();
  J.plan_k = plan->k;
  ThreadPool::instance().parallel_for(J.num_blocks, [&](int64_t b, int) { K.loss_grad_block(J, b); });
  if (J.failed) return Status::Oom("route: out of memory for scratch");
  return Status::Ok();
}

// Top-k and hash modes.
Status route_topk(RouteJob& J, const RoutingKernels& K, const RouteOptions& o, RoutePlan* plan, LossInputs& li) {
  const int64_t T = J.tokens, E = J.experts, k = o.k, nb = J.num_blocks;
  const int64_t C = route_capacity(o.mode, T, E, k, o.capacity_factor);
  ThreadPool& pool = ThreadPool::instance();
  plan->k = k;
  plan->capacity = C;
  J.k = k;

  AlignedBuffer<int32_t> counts, sel_counts;
  AlignedBuffer<uint8_t> flags;
  AlignedBuffer<float> slot_score;
  AlignedBuffer<double> wsum;
  const bool need_f = o.load_balance || o.sequence_balance;
  bool ok = alloc(&plan->expert_ids, T * k, false) && alloc(&plan->weights, T * k, false) &&
            alloc(&counts, nb * E, true) && alloc(&plan->tokens_per_expert, E, false) &&
            alloc(&plan->expert_offsets, E + 1, false);
  if (ok && need_f) ok = alloc(&sel_counts, nb * E, true);
  if (ok && (o.random_second_expert || C > 0)) ok = alloc(&flags, T * k, false);
  if (ok && C > 0 && o.drop_policy == DropPolicy::kScore) ok = alloc(&slot_score, T * k, false);
  if (ok && J.need_probs) ok = alloc(&li.psum, nb * E, true);
  if (ok && J.need_lse) ok = alloc(&li.zsum, nb, true);
  if (ok && o.importance) ok = alloc(&wsum, nb * E, true);
  if (!ok) return Status::Oom("route: out of memory for the plan");
  J.expert_ids = plan->expert_ids.data();
  J.weights = plan->weights.data();
  J.counts = counts.data();
  J.sel_counts = need_f ? sel_counts.data() : nullptr;
  J.flags = o.random_second_expert || C > 0 ? flags.data() : nullptr;
  J.slot_score = C > 0 && o.drop_policy == DropPolicy::kScore ? slot_score.data() : nullptr;
  J.psum = J.need_probs ? li.psum.data() : nullptr;
  J.zsum = J.need_lse ? li.zsum.data() : nullptr;
  J.wsum = o.importance ? wsum.data() : nullptr;

  pool.parallel_for(nb, [&](int64_t b, int) { K.forward_block(J, b); });
  if (J.failed) return Status::Oom("route: out of memory for scratch");

  // Per-block cursors: counts[b][e] becomes the number of expert-e slots in
  // blocks before b (a column-wise exclusive prefix sum, in block order).
  std::vector<int64_t> total(static_cast<size_t>(E));
  const int64_t ECHUNK = 32;
  pool.parallel_for((E + ECHUNK - 1) / ECHUNK, [&](int64_t c, int) {
    int64_t e0 = c * ECHUNK, e1 = std::min(E, e0 + ECHUNK);
    int64_t run[ECHUNK] = {0};
    for (int64_t b = 0; b < nb; ++b) {
      int32_t* row = counts.data() + b * E;
      for (int64_t e = e0; e < e1; ++e) {
        int32_t v = row[e];
        row[e] = static_cast<int32_t>(run[e - e0]);
        run[e - e0] += v;
      }
    }
    for (int64_t e = e0; e < e1; ++e) total[e] = run[e - e0];
  });
  std::vector<int64_t> offs(static_cast<size_t>(E + 1));
  offs[0] = 0;
  for (int64_t e = 0; e < E; ++e) offs[e + 1] = offs[e] + total[e];
  const int64_t dispatched = offs[E];

  // Stable scatter of the dispatched slots by expert (slot order within one
  // expert, because blocks and the tokens in them are walked in order).
  AlignedBuffer<int32_t> all;
  int32_t* dest;
  if (C == 0) {
    if (!alloc(&plan->sorted_slots, dispatched, false)) return Status::Oom("route: out of memory");
    dest = plan->sorted_slots.data();
  } else {
    if (!alloc(&all, dispatched, false)) return Status::Oom("route: out of memory");
    dest = all.data();
  }
  const int32_t* ids = plan->expert_ids.data();
  const uint8_t* fl = J.flags;
  pool.parallel_for(nb, [&](int64_t b, int) {
    int64_t t0, t1;
    rk_block_range(J, b, &t0, &t1);
    int32_t* cur = counts.data() + b * E;
    for (int64_t s = t0 * k; s < t1 * k; ++s) {
      if (fl && fl[s]) continue;
      int32_t e = ids[s];
      dest[offs[e] + cur[e]++] = static_cast<int32_t>(s);
    }
  });

  int32_t* tpe = plan->tokens_per_expert.data();
  int32_t* eo = plan->expert_offsets.data();
  if (C == 0) {
    for (int64_t e = 0; e < E; ++e) tpe[e] = static_cast<int32_t>(total[e]);
    for (int64_t e = 0; e <= E; ++e) eo[e] = static_cast<int32_t>(offs[e]);
    plan->num_kept = dispatched;
  } else {
    // Capacity: an expert keeps min(n, C) of its n slots, so the final
    // offsets are known before choosing which.
    eo[0] = 0;
    for (int64_t e = 0; e < E; ++e) {
      tpe[e] = static_cast<int32_t>(std::min<int64_t>(total[e], C));
      eo[e + 1] = eo[e] + tpe[e];
    }
    plan->num_kept = eo[E];
    if (!alloc(&plan->sorted_slots, plan->num_kept, false)) return Status::Oom("route: out of memory");
    int32_t* out = plan->sorted_slots.data();
    uint8_t* flw = flags.data();
    const float* sc = J.slot_score;
    int failed = 0;
    pool.parallel_for(E, [&](int64_t e, int) {
      const int32_t* list = dest + offs[e];
      const int64_t n = total[e];
      int32_t* o_e = out + eo[e];
      if (n <= C) {
        std::memcpy(o_e, list, static_cast<size_t>(n) * 4);
        return;
      }
      int64_t w = 0;
      if (o.drop_policy == DropPolicy::kPosition) {
        // GShard/Switch order: every token's 1st choice before any 2nd
        // choice, earlier tokens first within a rank.
        float* ws = thread_workspace(static_cast<size_t>(2 * k), 3);
        if (!ws) {
          __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
          return;
        }
        int32_t* base = reinterpret_cast<int32_t*>(ws);
        int32_t* seen = base + k;
        for (int64_t j = 0; j < k; ++j) base[j] = seen[j] = 0;
        for (int64_t i = 0; i < n; ++i) base[list[i] % k]++;
        int32_t run = 0;
        for (int64_t j = 0; j < k; ++j) {
          int32_t c = base[j];
          base[j] = run;
          run += c;
        }
        for (int64_t i = 0; i < n; ++i) {
          int32_t s = list[i];
          int64_t j = s % k;
          if (base[j] + seen[j]++ < C)
            o_e[w++] = s;
          else
            flw[s] = 2;
        }
      } else {
        // Batch-prioritised: the C slots with the highest score, ties to
        // the earlier slot.
        float* ws = thread_workspace(static_cast<size_t>(2 * n), 3);
        if (!ws) {
          __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
          return;
        }
        uint64_t* keys = reinterpret_cast<uint64_t*>(ws);
        for (int64_t i = 0; i < n; ++i) keys[i] = rk_key(sc[list[i]], static_cast<uint32_t>(list[i]));
        std::nth_element(keys, keys + (C - 1), keys + n, KeyGreater());
        uint64_t thr = keys[C - 1];
        for (int64_t i = 0; i < n; ++i) {
          int32_t s = list[i];
          if (rk_key(sc[s], static_cast<uint32_t>(s)) >= thr)
            o_e[w++] = s;
          else
            flw[s] = 2;
        }
      }
    });
    if (failed) return Status::Oom("route: out of memory for scratch");
  }
  plan->dropped.clear();
  if (J.flags)
    for (int64_t s = 0; s < T * k; ++s)
      if (J.flags[s]) plan->dropped.push_back(static_cast<int32_t>(s));

  if (o.load_balance || o.sequence_balance || o.importance) {
    li.counts.assign(static_cast<size_t>(E), 0.0);
    li.wsum.assign(static_cast<size_t>(E), 0.0);
    const int64_t nseq = T / J.seq_len;
    if (o.sequence_balance) li.seq_counts.assign(static_cast<size_t>(nseq * E), 0.0);
    for (int64_t b = 0; b < nb; ++b) {
      int64_t q = b / J.blocks_per_seq;
      for (int64_t e = 0; e < E; ++e) {
        if (need_f) {
          li.counts[e] += sel_counts.data()[b * E + e];
          if (o.sequence_balance) li.seq_counts[q * E + e] += sel_counts.data()[b * E + e];
        }
        if (o.importance) li.wsum[e] += wsum.data()[b * E + e];
      }
    }
  }
  return Status::Ok();
}

// Expert choice (Zhou et al. 2022): each expert takes its C best tokens.
Status route_expert_choice(RouteJob& J, const RoutingKernels& K, const RouteOptions& o, RoutePlan* plan,
                           LossInputs& li) {
  const int64_t T = J.tokens, E = J.experts, nb = J.num_blocks;
  const int64_t C = route_capacity(RouteMode::kExpertChoice, T, E, 1, o.capacity_factor);
  ThreadPool& pool = ThreadPool::instance();
  plan->capacity = C;
  J.k = 1;

  AlignedBuffer<float> scores;
  AlignedBuffer<int32_t> chosen;
  bool ok = alloc(&scores, T * E, false) && alloc(&chosen, E * C, false) &&
            alloc(&plan->tokens_per_expert, E, false) && alloc(&plan->expert_offsets, E + 1, false);
  if (ok && J.need_probs) ok = alloc(&li.psum, nb * E, true);
  if (ok && J.need_lse) ok = alloc(&li.zsum, nb, true);
  if (!ok) return Status::Oom("route: out of memory for the plan");
  J.scores = scores.data();
  J.psum = J.need_probs ? li.psum.data() : nullptr;
  J.zsum = J.need_lse ? li.zsum.data() : nullptr;
  pool.parallel_for(nb, [&](int64_t b, int) { K.score_block(J, b); });
  if (J.failed) return Status::Oom("route: out of memory for scratch");

  // Per expert: its C best tokens by score, ties to the lower token, listed
  // in token order.
  int failed = 0;
  const float* S = scores.data();
  pool.parallel_for(E, [&](int64_t e, int) {
    int32_t* out = chosen.data() + e * C;
    if (C == T) {
      for (int64_t t = 0; t < T; ++t) out[t] = static_cast<int32_t>(t);
      return;
    }
    float* ws = thread_workspace(static_cast<size_t>(2 * T), 3);
    if (!ws) {
      __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
      return;
    }
    uint64_t* keys = reinterpret_cast<uint64_t*>(ws);
    for (int64_t t = 0; t < T; ++t) keys[t] = rk_key(S[t * E + e], static_cast<uint32_t>(t));
    std::nth_element(keys, keys + (C - 1), keys + T, KeyGreater());
    uint64_t thr = keys[C - 1];
    int64_t w = 0;
    for (int64_t t = 0; t < T && w < C; ++t)
      if (rk_key(S[t * E + e], static_cast<uint32_t>(t)) >= thr) out[w++] = static_cast<int32_t>(t);
  });
  if (failed) return Status::Oom("route: out of memory for scratch");

  // Rows: each token's experts in expert order, padded with −1 to the most
  // experts any token got.
  std::vector<int32_t> fill(static_cast<size_t>(T), 0);
  for (int64_t i = 0; i < E * C; ++i) fill[chosen.data()[i]]++;
  int64_t kp = 1;
  for (int64_t t = 0; t < T; ++t) kp = std::max<int64_t>(kp, fill[t]);
  if (!fits_i32(T * kp)) return Status::Range("route: tokens·(experts per token) must fit in int32");
  plan->k = kp;
  if (!alloc(&plan->expert_ids, T * kp, false) || !alloc(&plan->weights, T * kp, false) ||
      !alloc(&plan->sorted_slots, E * C, false))
    return Status::Oom("route: out of memory for the plan");
  int32_t* ids = plan->expert_ids.data();
  float* wt = plan->weights.data();
  for (int64_t i = 0; i < T * kp; ++i) {
    ids[i] = -1;
    wt[i] = 0.f;
  }
  std::fill(fill.begin(), fill.end(), 0);
  int32_t* slots = plan->sorted_slots.data();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t i = 0; i < C; ++i) {
      int64_t t = chosen.data()[e * C + i];
      int64_t s = t * kp + fill[t]++;
      ids[s] = static_cast<int32_t>(e);
      wt[s] = S[t * E + e];
      slots[e * C + i] = static_cast<int32_t>(s);
    }
  for (int64_t t = 0; t < T; ++t) {
    float* row = wt + t * kp;
    if (o.renormalize) {
      float sum = 0.f;
      for (int64_t j = 0; j < kp; ++j) sum += row[j];
      if (sum > 0.f) {
        float inv = 1.0f / sum;
        for (int64_t j = 0; j < kp; ++j) row[j] *= inv;
      }
    }
    if (o.scaling_factor != 1.0f)
      for (int64_t j = 0; j < kp; ++j) row[j] *= o.scaling_factor;
  }
  for (int64_t e = 0; e < E; ++e) {
    plan->tokens_per_expert.data()[e] = static_cast<int32_t>(C);
    plan->expert_offsets.data()[e] = static_cast<int32_t>(e * C);
  }
  plan->expert_offsets.data()[E] = static_cast<int32_t>(E * C);
  plan->num_kept = E * C;
  plan->dropped.clear();

  if (o.load_balance || o.sequence_balance || o.importance) {
    const int64_t nseq = T / J.seq_len;
    li.counts.assign(static_cast<size_t>(E), static_cast<double>(C));
    li.wsum.assign(static_cast<size_t>(E), 0.0);
    if (o.sequence_balance) li.seq_counts.assign(static_cast<size_t>(nseq * E), 0.0);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t i = 0; i < C; ++i) {
        int64_t s = slots[e * C + i];
        li.wsum[e] += wt[s];
        if (o.sequence_balance) li.seq_counts[(s / kp / J.seq_len) * E + e] += 1;
      }
  }
  return Status::Ok();
}

}  // namespace

Status route(const float* logits, int64_t T, int64_t E, const RouteOptions& o, Isa isa, RoutePlan* plan) {
  const RoutingKernels* K = routing_kernels(isa);
  if (!K || !isa_supported(isa)) return Status::Invalid(std::string("no routing kernel for ISA ") + isa_name(isa));
  Status st = check_common(T, E, o);
  if (!st.ok()) return st;
  RouteJob J;
  J.logits = logits;
  J.tokens = T;
  J.experts = E;
  J.opts = &o;
  set_blocks(&J, T, E, o.sequence_balance && o.sequence_length > 0 ? o.sequence_length : T);
  set_keys(&J, o.seed);
  const bool scored = o.score == RouteScore::kSoftmax || o.score == RouteScore::kSigmoid;
  J.select_on_scores = o.mode == RouteMode::kTopK && o.score_before_topk && scored &&
                       (o.selection_bias || (o.groups > 1 && o.group_score == GroupScore::kSumTop2));
  J.need_probs = o.load_balance || o.sequence_balance;
  J.need_lse = o.z_loss;
  plan->tokens = T;
  plan->experts = E;
  plan->load_balance = RouteLoss();
  plan->z_loss = RouteLoss();
  plan->importance = RouteLoss();
  plan->sequence_balance = RouteLoss();

  LossInputs li;
  st = o.mode == RouteMode::kExpertChoice ? route_expert_choice(J, *K, o, plan, li) : route_topk(J, *K, o, plan, li);
  if (!st.ok()) return st;
  return finish_losses(J, *K, o, li, plan);
}

Status route_backward(const float* logits, int64_t T, int64_t E, const RouteOptions& o, const int32_t* expert_ids,
                      int64_t k, const float* grad_weights, Isa isa, float* grad_logits) {
  const RoutingKernels* K = routing_kernels(isa);
  if (!K || !isa_supported(isa)) return Status::Invalid(std::string("no routing kernel for ISA ") + isa_name(isa));
  if (T < 1 || E < 1 || k < 1 || !fits_i32(T * E) || !fits_i32(T * k))
    return Status::Range("routeBackward: bad shape");
  RouteJob J;
  J.logits = logits;
  J.tokens = T;
  J.experts = E;
  J.opts = &o;
  J.k = k;
  set_blocks(&J, T, E, T);
  set_keys(&J, o.seed);
  J.bw_ids = expert_ids;
  J.bw_k = k;
  J.bw_grad_w = grad_weights;
  J.bw_out = grad_logits;
  ThreadPool::instance().parallel_for(J.num_blocks, [&](int64_t b, int) { K->backward_block(J, b); });
  if (J.failed) return Status::Oom("routeBackward: out of memory for scratch");
  return Status::Ok();
}

}  // namespace sparsekit
