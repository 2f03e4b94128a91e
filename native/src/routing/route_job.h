// The description of one routing call that the orchestrator (route.cc) hands to
// the per-ISA row kernels (route_impl.h). Plain data plus internal-linkage
// helpers only: this header is included by files compiled with different -m
// flags (see the note at the top of native/src/common/simd.h).
#pragma once
#include <cstdint>
#include <cstring>

#include "sparsekit/routing.h"

namespace sparsekit {

struct RouteJob {
  const float* logits = nullptr;
  int64_t tokens = 0, experts = 0;
  const RouteOptions* opts = nullptr;
  int64_t k = 0;  // slots per token in the arrays below

  // Token blocks never straddle a sequence (for the sequence-wise loss), and
  // their size depends only on the shape, never on the thread count.
  int64_t block_tokens = 0, seq_len = 0, blocks_per_seq = 0, num_blocks = 0;

  // Per-call keys of the counter-based generator, one per random stream.
  uint32_t key_noise = 0, key_jitter = 0, key_gshard = 0, key_hash = 0;
  // Selection compares score + bias (sigmoid/softmax computed for all E)
  // rather than logit + bias. Only needed when a bias or a sum-of-top-2 group
  // score makes the order differ from the logits' order.
  bool select_on_scores = false;
  bool need_probs = false;     // p[t, :] partial sums (load-balance losses)
  bool need_lse = false;       // Σ logsumexp² (z-loss)

  // Forward outputs (top-k / hash modes).
  int32_t* expert_ids = nullptr;  // [T, k]
  float* weights = nullptr;       // [T, k]
  float* slot_score = nullptr;    // [T, k] score before renormalisation (drop policy 'score'), or null
  uint8_t* flags = nullptr;       // [T, k] 1 = dropped by GShard random routing, or null
  int32_t* counts = nullptr;      // [blocks, E] dispatched slots per block
  int32_t* sel_counts = nullptr;  // [blocks, E] all selected slots (loss f_i), or null
  double* psum = nullptr;         // [blocks, E] Σ_t p[t, e], or null
  double* zsum = nullptr;         // [blocks] Σ_t logsumexp², or null
  double* wsum = nullptr;         // [blocks, E] Σ weights per expert (importance), or null

  // Expert choice: scores [T, E].
  float* scores = nullptr;

  // Loss gradients (each [T, E] or null) and their upstream terms.
  float* grad_load_balance = nullptr;
  float* grad_z = nullptr;
  float* grad_importance = nullptr;
  float* grad_sequence = nullptr;
  const float* lb_up = nullptr;   // [E]: d loss / d p[t, e]
  const float* seq_up = nullptr;  // [sequences, E]
  double z_scale = 0;             // coef · 2 / T
  const float* imp_up = nullptr;  // [E]: d loss / d weight of a slot routed to e
  const int32_t* plan_ids = nullptr;  // the plan's expert ids [T, plan_k] (importance gradient)
  int64_t plan_k = 0;

  // route_backward.
  const int32_t* bw_ids = nullptr;
  int64_t bw_k = 0;
  const float* bw_grad_w = nullptr;
  float* bw_out = nullptr;

  // Set (with __atomic builtins) by a block that could not get scratch memory.
  mutable int failed = 0;
};

// No member functions above and only internal-linkage helpers below: an
// inline function with external linkage would be merged across ISA files.
namespace {  // internal linkage: see simd.h

inline void rk_block_range(const RouteJob& j, int64_t b, int64_t* t0, int64_t* t1) {
  int64_t q = b / j.blocks_per_seq, i = b % j.blocks_per_seq;
  *t0 = q * j.seq_len + i * j.block_tokens;
  int64_t end = q * j.seq_len + j.seq_len;
  *t1 = *t0 + j.block_tokens < end ? *t0 + j.block_tokens : end;
}

// Counter-based generator: every draw is a pure function of (seed, stream,
// token, counter), so results do not depend on threads, blocking or order.
// mix32 is the "lowbias32" integer hash from Chris Wellons' hash prospector.
inline uint32_t rk_mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}
inline uint32_t rk_stream_key(uint64_t seed, uint32_t stream) {
  uint32_t h = rk_mix32(static_cast<uint32_t>(seed) + 0x9e3779b9u * stream);
  return rk_mix32(h ^ static_cast<uint32_t>(seed >> 32));
}
// Uniform in (0, 1) from 24 bits, never 0 or 1 (Box–Muller takes a log).
inline double rk_uniform(uint32_t bits) { return ((bits >> 8) + 0.5) * (1.0 / 16777216.0); }

// Ordered 32-bit image of a float: a < b ⇔ img(a) < img(b); −0 and +0 map to
// the same image (they are equal scores); NaN maps below everything.
inline uint32_t rk_ordered(float x) {
  float y = x + 0.0f;  // −0 → +0 (not folded away without -ffast-math)
  uint32_t u;
  std::memcpy(&u, &y, 4);
  uint32_t r = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return y != y ? 0u : r;
}

// Selection key: higher score first, then lower index. Unique per index, so
// "top-k of the keys" is a total order with ties already broken.
inline uint64_t rk_key(float score, uint32_t index) {
  return (static_cast<uint64_t>(rk_ordered(score)) << 32) | static_cast<uint64_t>(0xffffffffu - index);
}
inline uint32_t rk_key_index(uint64_t key) { return 0xffffffffu - static_cast<uint32_t>(key); }

enum : uint32_t { kStreamNoise = 1, kStreamJitter = 2, kStreamGshard = 3, kStreamHash = 4 };

}  // namespace
}  // namespace sparsekit
