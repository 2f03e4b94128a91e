// Mixture-of-Experts routing: one fused, multi-threaded kernel that turns router
// logits [tokens, experts] into a routing plan (which expert each token-slot goes
// to, with what weight, grouped by expert), plus balance losses and gradients.
//
// Every router variant (softmax/sigmoid scores, renormalisation, scaling,
// selection bias, group-limited selection, noisy top-k, jitter, capacity and
// dropping, GShard random routing, expert choice, hash routing) is an option of
// the same kernel. The semantics are documented for users in lib/routing.ts;
// comments here say how the kernel gets there.
//
// Results are bitwise identical for any thread count: tokens are cut into
// blocks whose size depends only on the shape, each block's outputs depend only
// on its tokens, and every reduction (histograms, prefix sums, loss sums) runs
// over blocks in a fixed order.
#pragma once
#include <cstdint>
#include <vector>

#include "sparsekit/common.h"
#include "sparsekit/memory.h"

namespace sparsekit {

enum class RouteMode : int { kTopK = 0, kExpertChoice = 1, kHash = 2 };
enum class RouteScore : int { kSoftmax = 0, kSigmoid = 1, kNone = 2 };
enum class GroupScore : int { kMax = 0, kSumTop2 = 1 };
enum class DropPolicy : int { kPosition = 0, kScore = 1 };

// Everything but the logits. The binding has validated every field against
// the shape before the core sees it; the core re-checks only what would make it
// read or write out of bounds.
struct RouteOptions {
  RouteMode mode = RouteMode::kTopK;
  RouteScore score = RouteScore::kSoftmax;
  bool score_before_topk = true;
  int64_t k = 1;  // experts per token (top-k and hash modes)
  bool renormalize = false;
  float scaling_factor = 1.f;
  const float* selection_bias = nullptr;  // [E], selection only
  int64_t groups = 0;                     // 0: no group-limited selection
  int64_t topk_groups = 0;
  GroupScore group_score = GroupScore::kMax;
  const float* noise_logits = nullptr;  // [T, E]: noisy top-k (Shazeer et al. 2017)
  float jitter = 0.f;                   // multiplicative jitter ε: logits · U(1−ε, 1+ε)
  uint64_t seed = 0;                    // for noise, jitter, GShard random routing, hash
  double capacity_factor = 0.0;         // 0: dropless (top-k/hash); expert choice needs > 0
  DropPolicy drop_policy = DropPolicy::kPosition;
  bool random_second_expert = false;  // GShard: keep the 2nd expert only if 2·g2 > u (k = 2)
  const int32_t* token_ids = nullptr;  // [T] for hash mode

  // Balance losses: a loss is computed when its flag is set; its value is
  // multiplied by its coefficient. Gradients w.r.t. the logits when asked.
  bool load_balance = false, z_loss = false, importance = false, sequence_balance = false;
  double load_balance_coef = 0, z_loss_coef = 0, importance_coef = 0, sequence_balance_coef = 0;
  int64_t sequence_length = 0;  // sequence-wise balance: T must be a multiple (0 = T)
  bool loss_gradients = false;
};

struct RouteLoss {
  bool computed = false;
  double value = 0;
  AlignedBuffer<float> grad;  // [T, E] when gradients were asked for
};

struct RoutePlan {
  int64_t tokens = 0, experts = 0;
  int64_t k = 0;         // slots per token (expert choice: the most experts any token got)
  int64_t capacity = 0;  // per expert; 0 = unlimited
  AlignedBuffer<int32_t> expert_ids;  // [T, k]; −1 pads expert-choice rows
  AlignedBuffer<float> weights;       // [T, k]; 0 on padding
  AlignedBuffer<int32_t> tokens_per_expert;  // [E], kept slots only
  AlignedBuffer<int32_t> expert_offsets;     // [E + 1]
  AlignedBuffer<int32_t> sorted_slots;       // [num_kept]: slot t·k + j, by expert, then slot
  int64_t num_kept = 0;
  std::vector<int32_t> dropped;  // slots not dispatched, ascending
  RouteLoss load_balance, z_loss, importance, sequence_balance;
};

// Capacity per expert: top-k/hash ceil(k·T·factor / E), expert choice
// ceil(T·factor / E), both evaluated in float64 in that order and clamped to
// [1, T]; 0 when factor is 0 (dropless) in top-k/hash modes.
int64_t route_capacity(RouteMode mode, int64_t tokens, int64_t experts, int64_t k, double capacity_factor);

// The plan for logits [T, E] with the given options, on the kernels of `isa`.
Status route(const float* logits, int64_t tokens, int64_t experts, const RouteOptions& opts, Isa isa,
             RoutePlan* plan);

// d loss / d logits [T, E] given d loss / d weights [T, k] for the experts in
// expert_ids [T, k] (−1 entries are skipped), for the same options route() used
// (score, renormalize, scaling, jitter and noise must match). The selection is
// held fixed; only the weights' dependence on the logits is differentiated.
Status route_backward(const float* logits, int64_t tokens, int64_t experts, const RouteOptions& opts,
                      const int32_t* expert_ids, int64_t k, const float* grad_weights, Isa isa, float* grad_logits);

// Index of the first NaN or ±Infinity in p[0..n), or −1. Multi-threaded and
// vectorised: the binding checks every logit before routing.
int64_t find_non_finite(const float* p, int64_t n);

// DeepSeek-V3 auxiliary-loss-free balancing: out_i = bias_i + γ·sign(mean − load_i).
void update_selection_bias(const float* bias, const int32_t* tokens_per_expert, int64_t experts, float gamma,
                           float* out);

// One instruction set's row kernels (scoring, softmax/sigmoid, top-k,
// gradients). The job description lives in native/src/routing/route_job.h.
struct RouteJob;
struct RoutingKernels {
  Isa isa;
  const char* name;  // e.g. "f32-route-avx2"
  // Top-k and hash modes: scores, selects and weighs the tokens of one block,
  // and fills that block's histogram and loss partial sums.
  void (*forward_block)(const RouteJob& job, int64_t block);
  // Expert choice: the scores [T, E] of one block of tokens (and loss partials).
  void (*score_block)(const RouteJob& job, int64_t block);
  // The loss gradients of one block of tokens.
  void (*loss_grad_block)(const RouteJob& job, int64_t block);
  // route_backward for one block of tokens.
  void (*backward_block)(const RouteJob& job, int64_t block);
};

// nullptr when this binary has no variant for `isa`.
const RoutingKernels* routing_kernels(Isa isa);

}  // namespace sparsekit
