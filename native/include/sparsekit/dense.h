// Dense linear layer: y = act(x · Wᵀ + b), fp32, row-major.
//   x: [m, k] (tokens × in)   W: [n, k] (out × in, nn.Linear layout)   y: [m, n]
#pragma once
#include <cstdint>
#include <memory>

#include "sparsekit/common.h"
#include "sparsekit/memory.h"

namespace sparsekit {

// One instruction set's dense GEMM: its tile shape and entry points. The same
// table drives run-time dispatch, the tests and the benchmarks.
struct DenseKernels {
  Isa isa;
  const char* name;  // e.g. "f32-gemm-6x16-avx2-fma"
  int mr;            // rows of x per micro-tile
  int nr;            // columns of y (rows of W) per micro-tile = packed panel width
  // Packs rows [panel_begin·nr, panel_end·nr) of W [n, k] into panels
  // [panel][k][nr], zero-padding past n.
  void (*pack_w)(const float* w, int64_t n, int64_t k, int64_t panel_begin, int64_t panel_end, float* out);
  // y = act(x · Wᵀ + bias) with W pre-packed by pack_w. `workspace` holds
  // packed_x_floats(m, k) floats, 64-byte aligned.
  void (*gemm)(const float* x, int64_t m, int64_t k, const float* w_packed, int64_t n, const float* bias,
               Activation act, float* y, float* workspace);
  // Grouped over experts: rows offsets[e]..offsets[e+1] of xs times W_eᵀ
  // (+ bias_e), or act(xs·W1_eᵀ) ⊙ (xs·W3_eᵀ) when w3_packed is set. Each
  // expert's packed weight is w_stride floats; `workspace` holds
  // Σ_e ceil(rows_e/mr)·mr·k floats. With src_rows, row r of the grouped
  // input is xs row src_rows[r] (the permute is read straight into the packed
  // panels); without, it is xs row r.
  void (*grouped_gemm)(const float* xs, const int32_t* src_rows, const int32_t* offsets, int64_t n_experts, int64_t k,
                       const float* w_packed, const float* w3_packed, int64_t w_stride, int64_t n, const float* bias,
                       Activation act, float* y, float* workspace);
};

// nullptr when this binary has no variant for `isa`.
const DenseKernels* dense_kernels(Isa isa);
int64_t packed_w_floats(const DenseKernels& kern, int64_t n, int64_t k);
int64_t packed_x_floats(const DenseKernels& kern, int64_t m, int64_t k);

// W packed once for one instruction set's kernel; reused by every later call.
struct PackedLinear {
  const DenseKernels* kernels = nullptr;
  int64_t n = 0, k = 0;
  AlignedBuffer<float> data;
};

Status pack_linear(const float* w, int64_t n, int64_t k, Isa isa, std::shared_ptr<PackedLinear>* out);

struct LinearArgs {
  const float* x = nullptr;
  int64_t m = 0, k = 0;
  const float* bias = nullptr;  // [n] or null
  Activation act = Activation::kNone;
  float* y = nullptr;  // [m, n]
};

// With a packed weight: runs the kernel the weight was packed for.
Status linear_packed(const LinearArgs& args, const PackedLinear& w);
// With a plain W [n, k]: packs into a per-thread workspace, then runs.
Status linear(const LinearArgs& args, const float* w, int64_t n, Isa isa);

}  // namespace sparsekit
