// Top-k routing on the GPU, with the CPU route()'s semantics (see
// lib/routing.ts): softmax / sigmoid / no scores, scores before or after the
// top-k, selection bias (selection only), group-limited selection (group score
// = best member or sum of the best two), renormalisation, scaling, and the
// plan's histogram, offsets and stable sort of slots. Dropless.
//
// Three launches:
//  1. route_select: one warp per token. Selection keys are ordered 64-bit
//     images (higher score first, then the lower expert index; NaN lowest),
//     exactly the CPU's, so ties break the same way. Top-k is k rounds of a warp
//     arg-max; only the lane that owned the winner rescans its experts. Each CTA
//     counts its slots per expert in shared memory and writes one histogram row.
//  2. route_offsets: per expert, exclusive sums of the CTA rows (where each
//     CTA's slots of that expert start) and tokens per expert; then the offsets.
//  3. route_scatter: one warp per CTA's slots, in slot order, 32 at a time:
//     lanes with the same expert find each other with __match_any_sync and take
//     consecutive positions by lane order, so the sort is stable.
#include "common.cuh"
#include "ops.h"

namespace skc {
namespace {

constexpr int kTokensPerBlock = 64;

__device__ __forceinline__ uint32_t ordered_bits(float x) {
  if (x != x) return 0u;  // NaN ranks below everything
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) == 0) u = 0;  // −0 and +0 are the same score
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint64_t sel_key(float score, uint32_t index) {
  return (static_cast<uint64_t>(ordered_bits(score)) << 32) | static_cast<uint64_t>(0xffffffffu - index);
}
__device__ __forceinline__ uint32_t key_index(uint64_t key) { return 0xffffffffu - static_cast<uint32_t>(key); }

__device__ __forceinline__ uint64_t warp_max_u64(uint64_t v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const uint64_t w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}
__device__ __forceinline__ float warp_max_f(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum_f(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float sigmoid1(float x) { return 1.0f / (1.0f + expf(-x)); }

struct RouteArgs {
  const float* logits;
  int64_t tokens, experts;
  int score, before, renormalize, group_score;
  int64_t k, groups, topk_groups;
  float scaling;
  const float* bias;
  int select_on_scores;
  int warps;  // per CTA
  int32_t* ids;
  float* weights;
  int32_t* counts;  // [blocks, E]
};

// Shared memory per warp: sel[E] floats, taken[ceil(E/32)] words, gkeys[G] u64.
__host__ __device__ inline size_t warp_smem_bytes(int64_t E, int64_t G) {
  size_t b = static_cast<size_t>(E) * 4 + static_cast<size_t>((E + 31) / 32) * 4;
  b = (b + 7) / 8 * 8;
  return b + static_cast<size_t>(G > 1 ? G : 1) * 8;
}

__global__ void route_select_kernel(RouteArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t E = a.experts, k = a.k;
  const int64_t G = a.groups > 1 ? a.groups : 1;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int32_t* hist = reinterpret_cast<int32_t*>(smem);
  unsigned char* mine = smem + ((static_cast<size_t>(E) * 4 + 15) / 16 * 16) + warp * warp_smem_bytes(E, G);
  float* sel = reinterpret_cast<float*>(mine);
  uint32_t* taken = reinterpret_cast<uint32_t*>(mine + E * 4);
  uint64_t* gkeys = reinterpret_cast<uint64_t*>(mine + (static_cast<size_t>(E) * 4 + (E + 31) / 32 * 4 + 7) / 8 * 8);

  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  __syncthreads();

  const int64_t t_begin = static_cast<int64_t>(blockIdx.x) * kTokensPerBlock;
  const int64_t t_end = min64(t_begin + kTokensPerBlock, a.tokens);
  const bool scored = a.score != SK_SCORE_NONE;
  const bool need_softmax = a.score == SK_SCORE_SOFTMAX && (a.select_on_scores || a.before);

  for (int64_t t = t_begin + warp; t < t_end; t += a.warps) {
    const float* l = a.logits + t * E;
    float mx = -INFINITY, inv_sum = 0.f;
    if (need_softmax) {
      float m = -INFINITY;
      for (int64_t e = lane; e < E; e += 32) m = fmaxf(m, l[e]);
      mx = warp_max_f(m);
      float s = 0.f;
      for (int64_t e = lane; e < E; e += 32) s += expf(l[e] - mx);
      inv_sum = 1.0f / warp_sum_f(s);
    }
    // Selection values.
    for (int64_t e = lane; e < E; e += 32) {
      float v = l[e];
      if (a.select_on_scores && scored) v = a.score == SK_SCORE_SOFTMAX ? expf(v - mx) * inv_sum : sigmoid1(v);
      if (a.bias) v += a.bias[e];
      sel[e] = v;
    }
    for (int64_t w = lane; w < (E + 31) / 32; w += 32) taken[w] = 0u;
    __syncwarp();

    // Group-limited selection: keep the topk_groups best groups' experts.
    if (G > 1) {
      const int64_t gs = E / G;
      for (int64_t g = lane; g < G; g += 32) {
        const float* gv = sel + g * gs;
        uint64_t key;
        if (a.group_score == SK_GROUP_MAX) {
          key = sel_key(gv[0], static_cast<uint32_t>(g * gs));
          for (int64_t i = 1; i < gs; ++i) {
            const uint64_t c = sel_key(gv[i], static_cast<uint32_t>(g * gs + i));
            key = c > key ? c : key;
          }
        } else {
          float x = gv[0], y = -INFINITY;
          for (int64_t i = 1; i < gs; ++i) {
            const float v = gv[i];
            if (v > x) {
              y = x;
              x = v;
            } else if (v > y) {
              y = v;
            }
          }
          key = sel_key(x + y, static_cast<uint32_t>(g));
        }
        gkeys[g] = key;
      }
      __syncwarp();
      // Chosen groups get key 0 in gkeys after being picked (real keys are > 0).
      for (int64_t r = 0; r < a.topk_groups; ++r) {
        uint64_t best = 0;
        for (int64_t g = lane; g < G; g += 32) best = gkeys[g] > best ? gkeys[g] : best;
        best = warp_max_u64(best);
        // Group keys of the max score carry the best member's index (max mode)
        // or the group index (sum-top2): find the group by matching the key.
        for (int64_t g = lane; g < G; g += 32)
          if (gkeys[g] == best) gkeys[g] = 0;
        __syncwarp();
      }
      // Unchosen groups (key still non-zero) are out of the running.
      for (int64_t e = lane; e < E; e += 32)
        if (gkeys[e / gs] != 0) atomicOr(&taken[e >> 5], 1u << (e & 31));
      __syncwarp();
    }

    // Top-k: k rounds of a warp arg-max; the winner's owner lane rescans.
    auto lane_best = [&]() -> uint64_t {
      uint64_t b = 0;
      for (int64_t e = lane; e < E; e += 32) {
        if (taken[e >> 5] & (1u << (e & 31))) continue;
        const uint64_t c = sel_key(sel[e], static_cast<uint32_t>(e));
        b = c > b ? c : b;
      }
      return b;
    };
    uint64_t mybest = lane_best();
    int32_t* ids = a.ids + t * k;
    for (int64_t j = 0; j < k; ++j) {
      const uint64_t best = warp_max_u64(mybest);
      const uint32_t e = key_index(best);
      if (lane == 0) ids[j] = static_cast<int32_t>(e);
      if (best != 0 && static_cast<int>(e & 31) == lane) {
        taken[e >> 5] |= 1u << (e & 31);
        mybest = lane_best();
      }
      __syncwarp();
    }
    __syncwarp();

    // Weights, in slot order on lane 0 (k is small), as the CPU computes them.
    if (lane == 0) {
      float* wt = a.weights + t * k;
      if (a.before) {
        for (int64_t j = 0; j < k; ++j) {
          const float x = l[ids[j]];
          wt[j] = a.score == SK_SCORE_SOFTMAX ? expf(x - mx) * inv_sum : (a.score == SK_SCORE_SIGMOID ? sigmoid1(x) : x);
        }
      } else if (a.score == SK_SCORE_SOFTMAX) {
        float m = l[ids[0]];
        for (int64_t j = 1; j < k; ++j) m = fmaxf(m, l[ids[j]]);
        float sum = 0.f;
        for (int64_t j = 0; j < k; ++j) {
          wt[j] = expf(l[ids[j]] - m);
          sum += wt[j];
        }
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < k; ++j) wt[j] *= inv;
      } else {
        for (int64_t j = 0; j < k; ++j) {
          const float x = l[ids[j]];
          wt[j] = a.score == SK_SCORE_SIGMOID ? sigmoid1(x) : x;
        }
      }
      if (a.renormalize) {
        float sum = 0.f;
        for (int64_t j = 0; j < k; ++j) sum += wt[j];
        if (sum > 0.f) {
          const float inv = 1.0f / sum;
          for (int64_t j = 0; j < k; ++j) wt[j] *= inv;
        }
      }
      if (a.scaling != 1.0f)
        for (int64_t j = 0; j < k; ++j) wt[j] *= a.scaling;
    }
    for (int64_t j = lane; j < k; j += 32) atomicAdd(&hist[ids[j]], 1);
    __syncwarp();
  }
  __syncthreads();
  int32_t* row = a.counts + static_cast<int64_t>(blockIdx.x) * E;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) row[e] = hist[e];
}

// counts[b][e] → where block b's slots of expert e start among expert e's slots;
// tokens_per_expert and expert_offsets.
__global__ void route_offsets_kernel(int32_t* counts, int64_t blocks, int64_t E, int32_t* tokens_per_expert,
                                     int32_t* expert_offsets) {
  extern __shared__ int32_t s_tpe[];
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    int32_t run = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      int32_t* c = counts + b * E + e;
      const int32_t v = *c;
      *c = run;
      run += v;
    }
    tokens_per_expert[e] = run;
    s_tpe[e] = run;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t acc = 0;
    for (int64_t e = 0; e < E; ++e) {
      expert_offsets[e] = acc;
      acc += s_tpe[e];
    }
    expert_offsets[E] = acc;
  }
}

__global__ void route_scatter_kernel(const int32_t* __restrict__ ids, int64_t tokens, int64_t k, int64_t E,
                                     const int32_t* __restrict__ counts, const int32_t* __restrict__ expert_offsets,
                                     int32_t* __restrict__ sorted_slots, int32_t* __restrict__ row_of_slot) {
  extern __shared__ int32_t run[];
  const int lane = threadIdx.x;
  const int64_t b = blockIdx.x;
  for (int64_t e = lane; e < E; e += 32) run[e] = expert_offsets[e] + counts[b * E + e];
  __syncwarp();
  const int64_t s_begin = b * kTokensPerBlock * k;
  const int64_t s_end = min64((b + 1) * kTokensPerBlock, tokens) * k;
  for (int64_t s0 = s_begin; s0 < s_end; s0 += 32) {
    const int64_t s = s0 + lane;
    const bool valid = s < s_end;
    int32_t e = valid ? ids[s] : -1;
    if (e >= E) e = -1;
    const uint32_t peers = __match_any_sync(0xffffffffu, e);
    if (e >= 0) {
      const int rank = __popc(peers & ((1u << lane) - 1u));
      const int32_t pos = run[e] + rank;
      sorted_slots[pos] = static_cast<int32_t>(s);
      row_of_slot[s] = pos;
    }
    __syncwarp();
    if (e >= 0 && lane == 31 - __clz(peers)) run[e] += __popc(peers);
    __syncwarp();
  }
}

}  // namespace

const char* route_kernel_names() {
  return "route: warp per token (softmax/sigmoid, bias, group-limited, k-round warp arg-max on 64-bit keys), "
         "per-CTA histograms, offsets, stable scatter with __match_any_sync";
}

}  // namespace skc

using namespace skc;

extern "C" SK_CUDA_API int sk_cuda_route(const float* logits, int64_t T, int64_t E, const sk_cuda_route_options* o,
                                         int32_t* ids, float* weights, int32_t* tokens_per_expert,
                                         int32_t* expert_offsets, int32_t* sorted_slots, int32_t* row_of_slot,
                                         sk_cuda_stream s) {
  if (!o || !logits || !ids || !weights || !tokens_per_expert || !expert_offsets || !sorted_slots || !row_of_slot)
    return fail(SK_CUDA_EINVAL, "sk_cuda_route: null pointer");
  if (T <= 0 || E <= 0 || o->k < 1 || o->k > E) return fail(SK_CUDA_EINVAL, "sk_cuda_route: need 1 <= k <= experts");
  if (o->score < SK_SCORE_SOFTMAX || o->score > SK_SCORE_NONE)
    return fail(SK_CUDA_EINVAL, "sk_cuda_route: unknown score function");
  const int64_t G = o->groups > 1 ? o->groups : 1;
  if (G > 1) {
    if (E % G != 0 || o->topk_groups < 1 || o->topk_groups > G || o->k > o->topk_groups * (E / G))
      return fail(SK_CUDA_EINVAL, "sk_cuda_route: inconsistent group-limited options");
    if (o->group_score != SK_GROUP_MAX && o->group_score != SK_GROUP_SUM_TOP2)
      return fail(SK_CUDA_EINVAL, "sk_cuda_route: unknown group score");
  }
  if (T * o->k > 0x7fffffffLL) return fail(SK_CUDA_EINVAL, "sk_cuda_route: tokens·k must fit in int32");
  cudaStream_t st = stream_of(s);
  const int64_t blocks = ceil_div(T, kTokensPerBlock);

  RouteArgs a{};
  a.logits = logits;
  a.tokens = T;
  a.experts = E;
  a.score = o->score;
  a.before = o->score_before_topk != 0;
  a.renormalize = o->renormalize != 0;
  a.group_score = o->group_score;
  a.k = o->k;
  a.groups = G;
  a.topk_groups = o->topk_groups;
  a.scaling = o->scaling_factor;
  a.bias = o->d_selection_bias;
  const bool scored = o->score != SK_SCORE_NONE;
  // As the CPU: select on scores (not logits) only where a bias or a
  // sum-of-two group score makes the order differ from the logits' order.
  a.select_on_scores = a.before && scored && (a.bias || (G > 1 && o->group_score == SK_GROUP_SUM_TOP2));
  a.ids = ids;
  a.weights = weights;

  const size_t hist_bytes = (static_cast<size_t>(E) * 4 + 15) / 16 * 16;
  const size_t per_warp = warp_smem_bytes(E, G);
  size_t budget = 46 * 1024;
  const size_t optin = device_props().smem_optin;
  if (hist_bytes + per_warp > budget) budget = optin;
  int warps = static_cast<int>((budget - hist_bytes) / per_warp);
  if (hist_bytes + per_warp > budget || warps < 1)
    return fail(SK_CUDA_EINVAL, "sk_cuda_route: too many experts for one CTA's shared memory");
  if (warps > 8) warps = 8;
  a.warps = warps;
  const size_t smem = hist_bytes + warps * per_warp;
  if (smem > 48 * 1024) SKC_TRY(allow_smem(reinterpret_cast<const void*>(route_select_kernel), smem));
  if (static_cast<size_t>(E) * 4 > 48 * 1024) return fail(SK_CUDA_EINVAL, "sk_cuda_route: at most 12288 experts");

  StreamBuffer counts;
  SKC_TRY(counts.alloc(static_cast<size_t>(blocks * E) * sizeof(int32_t), st));
  a.counts = counts.as<int32_t>();

  route_select_kernel<<<static_cast<unsigned>(blocks), warps * 32, smem, st>>>(a);
  SKC_TRY(check_launch("route_select_kernel"));
  const int threads = E >= 1024 ? 1024 : static_cast<int>((E + 31) / 32 * 32);
  route_offsets_kernel<<<1, threads, static_cast<size_t>(E) * 4, st>>>(a.counts, blocks, E, tokens_per_expert,
                                                                       expert_offsets);
  SKC_TRY(check_launch("route_offsets_kernel"));
  route_scatter_kernel<<<static_cast<unsigned>(blocks), 32, static_cast<size_t>(E) * 4, st>>>(
      ids, T, o->k, E, a.counts, expert_offsets, sorted_slots, row_of_slot);
  return check_launch("route_scatter_kernel");
}
