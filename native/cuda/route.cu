// Top-k routing on the GPU, with the CPU route()'s semantics (see
// lib/routing.ts): softmax / sigmoid / no scores, scores before or after the
// top-k, selection bias (selection only), group-limited selection (group score
// = best member or sum of the best two), renormalisation, scaling, and the
// plan's histogram, offsets and stable sort of slots. Dropless.
//
// Three launches:
//  1. select: one warp per token. Selection keys order by score (higher first,
//     NaN lowest), then by the lower expert index, exactly as the CPU's, so
//     ties break the same way. Each CTA counts its slots per expert in shared
//     memory and writes one histogram row (counts[cta][E]).
//     - route_select_fast_kernel<EPL> (E ≤ 512, groups ≤ 32): each lane holds
//       its experts (lane + 32·i, i < EPL) in registers as 32-bit ranks
//       (ordered score bits + 1; 0 = out of the running). Group scores use all
//       lanes (several lanes per group, merged with shuffles); the chosen
//       groups are those of rank < topk_groups. Top-k is k rounds of two
//       redux.sync (max rank, then the lowest expert holding it); only the
//       winning lane rescans its registers. Weights: per slot in parallel,
//       the sequential sums on lane 0, in shared memory.
//     - route_select_kernel (any other shape): the first version, k rounds of
//       a warp arg-max on 64-bit keys over shared memory.
//  2. route_offsets: per expert, exclusive sums of the CTA rows over the CTAs
//     (where each CTA's slots of that expert start) and tokens per expert;
//     one CTA per 32 experts, 32 warps splitting the CTA rows.
//  3. route_scatter: per CTA row, a warp scans tokens_per_expert (the expert
//     offsets; CTA 0 writes them), then walks its slots in order, 32 at a
//     time: lanes with the same expert find each other with __match_any_sync
//     and take consecutive positions by lane order, so the sort is stable.
#include "common.cuh"
#include "ops.h"

namespace skc {
namespace {

constexpr int kTokensPerBlock = 64;  // route_select_kernel (the generic one)
constexpr int kFastWarps = 8;        // warps per CTA of route_select_fast_kernel
constexpr int kFastMaxExperts = 512;
constexpr int kFastMaxGroups = 32;
constexpr unsigned kFull = 0xffffffffu;

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

// The generic selection (any E, any number of groups): 64 tokens per CTA.
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

// ---- the fast selection: E ≤ 512, groups ≤ 32 -------------------------------------------
//
// Same results as route_select_kernel, bit for bit: the same selection values
// (the same expressions; the products and sums that route_select_kernel
// stored to memory before using are rounded on their own here too, with
// __fmul_rn/__fadd_rn), the same order (rank = ordered score bits + 1, ties
// to the lower expert, as the 64-bit keys), the same chosen groups (the
// topk_groups largest keys, all distinct), and the weights computed by the
// same code on shared instead of global memory.

struct FastArgs {
  const float* logits;
  const float* bias;
  int32_t* ids;
  float* weights;
  int32_t* counts;  // [blocks, E]
  int64_t tokens;
  int experts, k;
  int groups, topk_groups, group_size;  // groups > 1: group-limited selection
  int group_lanes_log2;                 // log2 of the lanes that score one group together
  int group_chunk;                      // experts of a group per lane: ceil(group_size / lanes)
  int score, before, renormalize, group_score, select_on_scores;
  float scaling;
  int tokens_per_warp;
  // Shared memory (bytes): hist[E] ints, then per warp: sel (expert e at e + e/32)
  // floats, gkeys[G] u64 at gkey_off, slot ids[k] at sid_off, slot weights[k] at sw_off.
  int hist_bytes, warp_bytes, gkey_off, sid_off, sw_off;
};

// Lane's best rank (0: none) and which of its registers holds it; ties to the
// lower register, i.e. the lower expert.
template <int EPL>
__device__ __forceinline__ void lane_best_rank(const uint32_t (&rv)[EPL], uint32_t& best, int& bi) {
  best = 0u;
  bi = 0;
#pragma unroll
  for (int i = EPL - 1; i >= 0; --i)
    if (rv[i] >= best) {
      best = rv[i];
      bi = i;
    }
}

template <int EPL>
__global__ void __launch_bounds__(kFastWarps * 32, EPL <= 8 ? 4 : 2) route_select_fast_kernel(FastArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int E = a.experts, k = a.k, G = a.groups;
  const bool grouped = G > 1;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int32_t* hist = reinterpret_cast<int32_t*>(smem);
  unsigned char* mine = smem + a.hist_bytes + warp * a.warp_bytes;
  float* selp = reinterpret_cast<float*>(mine);
  uint64_t* gkeys = reinterpret_cast<uint64_t*>(mine + a.gkey_off);
  int32_t* sid = reinterpret_cast<int32_t*>(mine + a.sid_off);
  float* sw = reinterpret_cast<float*>(mine + a.sw_off);

  for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  __syncthreads();

  const bool scored = a.score != SK_SCORE_NONE;
  const bool need_softmax = a.score == SK_SCORE_SOFTMAX && (a.select_on_scores || a.before);

  // Per lane, for all its tokens: the groups of its experts (a byte each,
  // four to a word).
  uint32_t gpk[(EPL + 3) / 4];
#pragma unroll
  for (int w = 0; w < (EPL + 3) / 4; ++w) gpk[w] = 0u;
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int e = lane + 32 * i;
    const uint32_t g = (grouped && e < E) ? static_cast<uint32_t>(e) / static_cast<uint32_t>(a.group_size) : 0u;
    gpk[i >> 2] |= (g & 31u) << (8 * (i & 3));
  }
  const int glog = a.group_lanes_log2;

  const int64_t tpc = static_cast<int64_t>(kFastWarps) * a.tokens_per_warp;
  const int64_t t_begin = static_cast<int64_t>(blockIdx.x) * tpc;
  const int64_t t_end = min64(t_begin + tpc, a.tokens);
  for (int64_t t = t_begin + warp; t < t_end; t += kFastWarps) {
    const float* l = a.logits + t * E;
    float x[EPL];
#pragma unroll
    for (int i = 0; i < EPL; ++i) x[i] = lane + 32 * i < E ? l[lane + 32 * i] : 0.f;
    float mx = -INFINITY, inv_sum = 0.f;
    if (need_softmax) {
      // As route_select_kernel: per lane in expert order, then the same butterflies.
      float m = -INFINITY;
#pragma unroll
      for (int i = 0; i < EPL; ++i)
        if (lane + 32 * i < E) m = fmaxf(m, x[i]);
      mx = warp_max_f(m);
      float s = 0.f;
#pragma unroll
      for (int i = 0; i < EPL; ++i)
        if (lane + 32 * i < E) s += expf(x[i] - mx);
      inv_sum = 1.0f / warp_sum_f(s);
    }
    // Selection values; ranks (0 = out of the running).
    uint32_t rv[EPL];
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
      const int e = lane + 32 * i;
      float v = x[i];
      if (a.select_on_scores && scored) v = a.score == SK_SCORE_SOFTMAX ? __fmul_rn(expf(v - mx), inv_sum) : sigmoid1(v);
      if (a.bias) v = __fadd_rn(v, e < E ? a.bias[e] : 0.f);
      if (grouped && e < E) selp[e + (e >> 5)] = v;
      rv[i] = e < E ? ordered_bits(v) + 1u : 0u;  // ≤ 0xff800001: NaN gets 0 bits
    }

    // Group-limited selection: 2^glog lanes score each group, each over a
    // chunk of its experts; the topk_groups best group keys stay in.
    if (grouped) {
      __syncwarp();
      const int gsz = a.group_size;
      const int g = lane >> glog, p = lane & ((1 << glog) - 1);
      int lo = 0, hi = 0;
      if (g < G) {
        lo = g * gsz + p * a.group_chunk;
        hi = min(lo + a.group_chunk, (g + 1) * gsz);
      }
      uint64_t key = 0;
      if (a.group_score == SK_GROUP_MAX) {
        // The best member's key (its score, then the lower expert).
#pragma unroll 1
        for (int e = lo; e < hi; ++e) {
          const uint64_t c = sel_key(selp[e + (e >> 5)], static_cast<uint32_t>(e));
          key = c > key ? c : key;
        }
        for (int o = (1 << glog) >> 1; o > 0; o >>= 1) {
          const uint64_t w = __shfl_xor_sync(kFull, key, o);
          key = w > key ? w : key;
        }
      } else {
        // Sum of the best two: route_select_kernel's scan from the group's
        // first member gives the two largest non-NaN members (−∞ when
        // missing), or NaN when the first member is NaN.
        float x1 = -INFINITY, y1 = -INFINITY;
#pragma unroll 1
        for (int e = lo; e < hi; ++e) {
          const float v = selp[e + (e >> 5)];
          if (v > x1) {
            y1 = x1;
            x1 = v;
          } else if (v > y1) {
            y1 = v;
          }
        }
        for (int o = (1 << glog) >> 1; o > 0; o >>= 1) {
          const float ox = __shfl_xor_sync(kFull, x1, o), oy = __shfl_xor_sync(kFull, y1, o);
          if (x1 >= ox) {
            y1 = fmaxf(y1, ox);
          } else {
            y1 = fmaxf(x1, oy);
            x1 = ox;
          }
        }
        if (g < G && p == 0) {
          const int e0 = g * gsz;
          const float v0 = selp[e0 + (e0 >> 5)];
          key = sel_key(v0 != v0 ? v0 : x1 + y1, static_cast<uint32_t>(g));
        }
      }
      if (g < G && p == 0) gkeys[g] = key;
      __syncwarp();
      // Keys are distinct (they carry an expert or group index): a group is
      // chosen iff fewer than topk_groups keys beat it.
      bool chosen = false;
      if (lane < G) {
        const uint64_t my = gkeys[lane];
        int above = 0;
#pragma unroll 1
        for (int h = 0; h < G; ++h) above += gkeys[h] > my ? 1 : 0;
        chosen = above < a.topk_groups;
      }
      const uint32_t gm = __ballot_sync(kFull, chosen);
#pragma unroll
      for (int i = 0; i < EPL; ++i)
        if (!((gm >> ((gpk[i >> 2] >> (8 * (i & 3))) & 0xffu)) & 1u)) rv[i] = 0u;
    }

    // Top-k: k rounds of (max rank, then the lowest expert with it); the
    // winner's lane drops it and rescans its registers.
    uint32_t best;
    int bi;
    lane_best_rank<EPL>(rv, best, bi);
    for (int j = 0; j < k; ++j) {
      const uint32_t top = __reduce_max_sync(kFull, best);
      const uint32_t cand = (top != 0u && best == top) ? static_cast<uint32_t>(lane + 32 * bi) : 0xffffffffu;
      const uint32_t e = __reduce_min_sync(kFull, cand);
      if (lane == 0) sid[j] = static_cast<int32_t>(e);
      if (cand == e && e != 0xffffffffu) {
#pragma unroll
        for (int i = 0; i < EPL; ++i)
          if (i == bi) rv[i] = 0u;
        lane_best_rank<EPL>(rv, best, bi);
      }
    }
    __syncwarp();

    // Weights: route_select_kernel's code, slot by slot in parallel where it
    // is elementwise, on lane 0 where it sums in slot order.
    int32_t* ids = a.ids + t * k;
    float* wt = a.weights + t * k;
    for (int j = lane; j < k; j += 32) ids[j] = sid[j];
    if (a.before) {
      for (int j = lane; j < k; j += 32) {
        const float xj = l[sid[j]];
        sw[j] = a.score == SK_SCORE_SOFTMAX ? expf(xj - mx) * inv_sum : (a.score == SK_SCORE_SIGMOID ? sigmoid1(xj) : xj);
      }
      __syncwarp();
    } else if (a.score != SK_SCORE_SOFTMAX) {
      for (int j = lane; j < k; j += 32) {
        const float xj = l[sid[j]];
        sw[j] = a.score == SK_SCORE_SIGMOID ? sigmoid1(xj) : xj;
      }
      __syncwarp();
    }
    if (lane == 0) {
      if (!a.before && a.score == SK_SCORE_SOFTMAX) {
        float m = l[sid[0]];
#pragma unroll 1
        for (int j = 1; j < k; ++j) m = fmaxf(m, l[sid[j]]);
        float sum = 0.f;
#pragma unroll 1
        for (int j = 0; j < k; ++j) {
          sw[j] = expf(l[sid[j]] - m);
          sum += sw[j];
        }
        const float inv = 1.0f / sum;
#pragma unroll 1
        for (int j = 0; j < k; ++j) sw[j] *= inv;
      }
      if (a.renormalize) {
        float sum = 0.f;
#pragma unroll 1
        for (int j = 0; j < k; ++j) sum += sw[j];
        if (sum > 0.f) {
          const float inv = 1.0f / sum;
#pragma unroll 1
          for (int j = 0; j < k; ++j) sw[j] *= inv;
        }
      }
      if (a.scaling != 1.0f) {
#pragma unroll 1
        for (int j = 0; j < k; ++j) sw[j] *= a.scaling;
      }
    }
    __syncwarp();
    for (int j = lane; j < k; j += 32) {
      wt[j] = sw[j];
      const int e = sid[j];
      if (e >= 0 && e < E) atomicAdd(&hist[e], 1);
    }
    __syncwarp();  // sid, sw, selp and gkeys are the next token's
  }
  __syncthreads();
  int32_t* row = a.counts + static_cast<int64_t>(blockIdx.x) * E;
  for (int e = threadIdx.x; e < E; e += blockDim.x) row[e] = hist[e];
}

// ---- offsets --------------------------------------------------------------------------

// counts[b][e] → where CTA row b's slots of expert e start among expert e's
// slots (exclusive sums over b); tokens_per_expert[e]. One CTA per 32
// experts (a lane each, so the rows are read 128 bytes at a time); its 32
// warps take a contiguous run of rows each.
constexpr int kOffsetsThreads = 1024;
__global__ void __launch_bounds__(kOffsetsThreads) route_offsets_kernel(int32_t* __restrict__ counts, int blocks, int E,
                                                                       int32_t* __restrict__ tokens_per_expert) {
  __shared__ int32_t part[32][33];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int e = blockIdx.x * 32 + lane;
  const bool valid = e < E;
  const int chunk = (blocks + 31) / 32;
  const int b0 = min(w * chunk, blocks), b1 = min(b0 + chunk, blocks);
  int sum = 0;
  if (valid) {
    for (int b = b0; b < b1; b += 8) {
      int v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) v[u] = b + u < b1 ? counts[static_cast<int64_t>(b + u) * E + e] : 0;
#pragma unroll
      for (int u = 0; u < 8; ++u) sum += v[u];
    }
  }
  part[w][lane] = sum;
  __syncthreads();
  if (w == 0) {
    int run = 0;
    for (int ww = 0; ww < 32; ++ww) {
      const int v = part[ww][lane];
      part[ww][lane] = run;
      run += v;
    }
    if (valid) tokens_per_expert[e] = run;
  }
  __syncthreads();
  if (valid) {
    int run = part[w][lane];
    for (int b = b0; b < b1; b += 8) {
      int v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) v[u] = b + u < b1 ? counts[static_cast<int64_t>(b + u) * E + e] : 0;
#pragma unroll
      for (int u = 0; u < 8; ++u)
        if (b + u < b1) {
          counts[static_cast<int64_t>(b + u) * E + e] = run;
          run += v[u];
        }
    }
  }
}

// ---- scatter --------------------------------------------------------------------------

// One warp per CTA row b (tokens [b·tpc, (b+1)·tpc)): the experts' offsets
// (an exclusive scan of tokens_per_expert; CTA 0 writes expert_offsets), then
// the row's slots in slot order, 32 at a time (ids read 256 ahead).
__global__ void __launch_bounds__(32) route_scatter_kernel(const int32_t* __restrict__ ids, int64_t tokens, int k, int E,
                                                           int tokens_per_cta, const int32_t* __restrict__ counts,
                                                           const int32_t* __restrict__ tokens_per_expert,
                                                           int32_t* __restrict__ expert_offsets,
                                                           int32_t* __restrict__ sorted_slots,
                                                           int32_t* __restrict__ row_of_slot) {
  extern __shared__ int32_t run[];
  const int lane = threadIdx.x;
  const int64_t b = blockIdx.x;
  // Lane: a contiguous chunk of experts; a warp scan of the chunks' sums.
  const int per = (E + 31) / 32;
  const int e0 = min(lane * per, E), e1 = min(e0 + per, E);
  int local = 0;
  for (int e = e0; e < e1; ++e) local += tokens_per_expert[e];
  int incl = local;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int v = __shfl_up_sync(kFull, incl, o);
    if (lane >= o) incl += v;
  }
  int acc = incl - local;
  const int32_t* crow = counts + b * E;
  for (int e = e0; e < e1; ++e) {
    if (b == 0) expert_offsets[e] = acc;
    run[e] = acc + crow[e];
    acc += tokens_per_expert[e];
  }
  if (b == 0 && lane == 31) expert_offsets[E] = incl;
  __syncwarp();

  const int64_t s_begin = b * tokens_per_cta * k;
  const int64_t s_end = min64((b + 1) * tokens_per_cta, tokens) * k;
  for (int64_t s0 = s_begin; s0 < s_end; s0 += 32 * 8) {
    int32_t ev[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int64_t s = s0 + u * 32 + lane;
      ev[u] = s < s_end ? ids[s] : -1;
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int64_t s = s0 + u * 32 + lane;
      int32_t e = ev[u];
      if (e >= E) e = -1;
      const uint32_t peers = __match_any_sync(kFull, e);
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
}

template <int EPL>
int launch_select_fast(const FastArgs& a, int64_t blocks, size_t smem, cudaStream_t st) {
  if (smem > 48 * 1024) SKC_TRY(allow_smem(reinterpret_cast<const void*>(route_select_fast_kernel<EPL>), smem));
  route_select_fast_kernel<EPL><<<static_cast<unsigned>(blocks), kFastWarps * 32, smem, st>>>(a);
  return check_launch("route_select_fast_kernel");
}

}  // namespace

const char* route_kernel_names() {
  return "route: warp per token (E <= 512, groups <= 32: experts in registers, lanes per group, top-k by "
         "redux.sync max/min on 32-bit ranks; else k-round warp arg-max on 64-bit keys), per-CTA histograms, "
         "parallel column offsets, stable scatter with __match_any_sync";
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
  if (static_cast<size_t>(E) * 4 > 48 * 1024) return fail(SK_CUDA_EINVAL, "sk_cuda_route: at most 12288 experts");
  cudaStream_t st = stream_of(s);
  const bool scored = o->score != SK_SCORE_NONE;
  const bool before = o->score_before_topk != 0;
  // As the CPU: select on scores (not logits) only where a bias or a
  // sum-of-two group score makes the order differ from the logits' order.
  const int select_on_scores = before && scored && (o->d_selection_bias || (G > 1 && o->group_score == SK_GROUP_SUM_TOP2));

  int64_t tokens_per_cta = 0, blocks = 0;
  StreamBuffer counts;
  if (E <= kFastMaxExperts && G <= kFastMaxGroups) {
    FastArgs f{};
    f.logits = logits;
    f.bias = o->d_selection_bias;
    f.ids = ids;
    f.weights = weights;
    f.tokens = T;
    f.experts = static_cast<int>(E);
    f.k = static_cast<int>(o->k);
    f.groups = static_cast<int>(G);
    f.topk_groups = static_cast<int>(G > 1 ? o->topk_groups : 1);
    f.group_size = static_cast<int>(E / G);
    int glog = 0;
    while ((2 << glog) * G <= 32) ++glog;  // 2^glog lanes per group, 2^glog·G ≤ 32
    f.group_lanes_log2 = glog;
    f.group_chunk = static_cast<int>(ceil_div(E / G, int64_t{1} << glog));
    f.score = o->score;
    f.before = before;
    f.renormalize = o->renormalize != 0;
    f.group_score = o->group_score;
    f.select_on_scores = select_on_scores;
    f.scaling = o->scaling_factor;
    // Enough tokens per warp for about 32 warps per multiprocessor, at most 8.
    int sms = device_props().multiprocessors;
    if (sms <= 0) sms = 132;
    f.tokens_per_warp = static_cast<int>(min64(8, max64(1, ceil_div(T, static_cast<int64_t>(sms) * 32))));
    tokens_per_cta = static_cast<int64_t>(kFastWarps) * f.tokens_per_warp;
    blocks = ceil_div(T, tokens_per_cta);
    // Shared memory layout.
    const size_t sel_bytes = G > 1 ? static_cast<size_t>(E + (E - 1) / 32) * 4 : 0;
    const size_t gkey_off = (sel_bytes + 7) / 8 * 8;
    const size_t sid_off = gkey_off + (G > 1 ? static_cast<size_t>(G) * 8 : 0);
    const size_t sw_off = sid_off + static_cast<size_t>(o->k) * 4;
    const size_t warp_bytes = (sw_off + static_cast<size_t>(o->k) * 4 + 15) / 16 * 16;
    const size_t hist_bytes = (static_cast<size_t>(E) * 4 + 15) / 16 * 16;
    const size_t smem = hist_bytes + kFastWarps * warp_bytes;
    if (smem > 48 * 1024 && smem > device_props().smem_optin)
      return fail(SK_CUDA_EINVAL, "sk_cuda_route: shared memory of the selection exceeds the device's");
    f.hist_bytes = static_cast<int>(hist_bytes);
    f.warp_bytes = static_cast<int>(warp_bytes);
    f.gkey_off = static_cast<int>(gkey_off);
    f.sid_off = static_cast<int>(sid_off);
    f.sw_off = static_cast<int>(sw_off);
    SKC_TRY(counts.alloc(static_cast<size_t>(blocks * E) * sizeof(int32_t), st));
    f.counts = counts.as<int32_t>();
    int rc;
    if (E <= 32) rc = launch_select_fast<1>(f, blocks, smem, st);
    else if (E <= 64) rc = launch_select_fast<2>(f, blocks, smem, st);
    else if (E <= 128) rc = launch_select_fast<4>(f, blocks, smem, st);
    else if (E <= 256) rc = launch_select_fast<8>(f, blocks, smem, st);
    else rc = launch_select_fast<16>(f, blocks, smem, st);
    SKC_TRY(rc);
  } else {
    RouteArgs a{};
    a.logits = logits;
    a.tokens = T;
    a.experts = E;
    a.score = o->score;
    a.before = before;
    a.renormalize = o->renormalize != 0;
    a.group_score = o->group_score;
    a.k = o->k;
    a.groups = G;
    a.topk_groups = o->topk_groups;
    a.scaling = o->scaling_factor;
    a.bias = o->d_selection_bias;
    a.select_on_scores = select_on_scores;
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

    tokens_per_cta = kTokensPerBlock;
    blocks = ceil_div(T, kTokensPerBlock);
    SKC_TRY(counts.alloc(static_cast<size_t>(blocks * E) * sizeof(int32_t), st));
    a.counts = counts.as<int32_t>();
    route_select_kernel<<<static_cast<unsigned>(blocks), warps * 32, smem, st>>>(a);
    SKC_TRY(check_launch("route_select_kernel"));
  }
  route_offsets_kernel<<<static_cast<unsigned>(ceil_div(E, 32)), kOffsetsThreads, 0, st>>>(
      counts.as<int32_t>(), static_cast<int>(blocks), static_cast<int>(E), tokens_per_expert);
  SKC_TRY(check_launch("route_offsets_kernel"));
  route_scatter_kernel<<<static_cast<unsigned>(blocks), 32, static_cast<size_t>(E) * 4, st>>>(
      ids, T, static_cast<int>(o->k), static_cast<int>(E), static_cast<int>(tokens_per_cta), counts.as<int32_t>(),
      tokens_per_expert, expert_offsets, sorted_slots, row_of_slot);
  return check_launch("route_scatter_kernel");
}
