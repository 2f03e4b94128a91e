// Mixture-of-Experts building blocks: permute tokens into expert order, grouped
// (per-expert) linear layers over those rows, and the weighted combine back.
//
// A routed batch is described by its slots: token t's j-th choice is slot
// s = t·k + j. `sorted_slots` lists the kept slots grouped by expert (stable
// in token order); expert e owns rows offsets[e]..offsets[e+1] of the
// permuted matrix. Dropped slots do not appear in sorted_slots.
#pragma once
#include <cstdint>
#include <memory>

#include "sparsekit/common.h"
#include "sparsekit/dense.h"
#include "sparsekit/memory.h"

namespace sparsekit {

// E weight matrices [E, n, k] packed once for one ISA's kernel. Gated stacks
// hold W1 (gate) and W3 (up) packed side by side.
struct PackedExperts {
  const DenseKernels* kernels = nullptr;
  int64_t experts = 0, n = 0, k = 0;
  bool gated = false;
  int64_t stride = 0;  // floats per packed expert
  AlignedBuffer<float> w1, w3;
  AlignedBuffer<float> bias;  // [E, n] or empty
  bool has_bias = false;
};

// w: expert e at w + e·w_expert_stride (a [n, k] row-major matrix); w3 likewise
// (gated) or null. bias: [E, n] or null (not for gated stacks).
Status pack_experts(const float* w, const float* w3, int64_t w_expert_stride, int64_t experts, int64_t n, int64_t k,
                    const float* bias, Isa isa, std::shared_ptr<PackedExperts>* out);

// y[r] for every row r of xs [rows, k] (rows = offsets[E]); offsets validated by the caller.
// With src_rows, row r is xs row src_rows[r] instead (a permute fused into the
// packing; the indices validated by the caller).
Status grouped_linear(const float* xs, const int32_t* offsets, const PackedExperts& w, Activation act, float* y,
                      const int32_t* src_rows = nullptr);

// xs[i] = x[sorted_slots[i] / k] for i < n_rows.
void permute_rows(const float* x, int64_t d, const int32_t* sorted_slots, int64_t n_rows, int64_t k, float* xs);

// y[t] = Σ_j weights[t·k + j] · ys[row_of_slot[t·k + j]], j in order 0..k−1,
// skipping slots whose row is −1 (dropped). row_of_slot has tokens·k entries.
void combine_rows(const float* ys, int64_t d, const int32_t* row_of_slot, const float* weights, int64_t tokens,
                  int64_t k, float* y);

// Gated-linear-unit combine: y[r, j] = act(h[r, j]) · h[r, n + j] for h [rows, 2n]
// (gate columns first, then up columns) → y [rows, n].
void glu_rows(const float* h, int64_t rows, int64_t n, Activation act, float* y);

// row_of_slot[s] = i where sorted_slots[i] = s, −1 for slots not listed.
void invert_slots(const int32_t* sorted_slots, int64_t n_rows, int64_t n_slots, int32_t* row_of_slot);

}  // namespace sparsekit
