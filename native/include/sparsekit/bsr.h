// Block-sparse matrices (BSR, block-compressed sparse rows) and their products.
//
// A [rows, cols] matrix with block shape [br, bc] (rows % br == 0,
// cols % bc == 0) is stored as
//   row_ptr [rows/br + 1]   kept blocks of block row R are row_ptr[R] .. row_ptr[R+1]-1
//   col_idx [nnz]           block column of each kept block, strictly increasing per block row
//   values  [nnz, br, bc]   each block row-major
//
// Products (fp32, row-major, nn.Linear layout W: [out, in]):
//   bsr_linear             y  = act(x · Wᵀ + b)    x: [m, in],  y: [m, out]
//   bsr_linear_transposed  dx = dy · W             dy: [m, out], dx: [m, in]
//   bsr_sddmm              C  = a · bᵀ on the kept blocks of a mask pattern
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>

#include "sparsekit/common.h"
#include "sparsekit/memory.h"

namespace sparsekit {

struct BsrView {
  int64_t rows = 0, cols = 0;  // dense shape
  int64_t br = 0, bc = 0;      // block shape
  const int32_t* row_ptr = nullptr;
  const int32_t* col_idx = nullptr;
  const float* values = nullptr;  // may be null where only the pattern matters
  int64_t nnz = 0;
  int64_t block_rows() const { return rows / br; }
  int64_t block_cols() const { return cols / bc; }
};

// Shape checks: positive dims, divisibility by the block shape. Messages name
// the fields as the JS API does (shape, blockSize).
Status bsr_check_shape(int64_t rows, int64_t cols, int64_t br, int64_t bc);
// Full structure check of a view whose arrays have the given lengths:
// row_ptr length, row_ptr[0] == 0, non-decreasing, row_ptr[last] == nnz ==
// col_idx length; every col_idx in range and strictly increasing within its
// block row; values length == nnz·br·bc (skipped when values_len < 0).
// Messages name the field (rowPtr, colIdx, values) and the offending index.
Status bsr_validate(const BsrView& v, int64_t row_ptr_len, int64_t col_idx_len, int64_t values_len);

// W packed for bsr_linear. Each block row is split into `groups` row groups
// of nearly equal height: ceil(br / max_group_rows) groups, the first
// `group_extra` of them group_base + 1 rows high, the rest group_base (so no
// group is so short that its micro-kernel is FMA-latency bound). The kept
// blocks of a group are laid out as [block][kk < bc][group rows] (the dense
// kernel's packed-A layout restricted to kept blocks); group g of block row R
// starts at row_ptr[R]·br·bc + first_row(g)·(row_ptr[R+1] − row_ptr[R])·bc,
// so the packed array has exactly nnz·br·bc floats and needs no index.
struct BsrPackedView {
  int64_t rows = 0, cols = 0, br = 0, bc = 0, nnz = 0;
  const int32_t* row_ptr = nullptr;
  const int32_t* col_idx = nullptr;
  const float* packed = nullptr;
  int max_group_rows = 1;
  int groups = 1, group_base = 1, group_extra = 0;
};

// Result codes of the per-ISA entry points (the core turns them into Status).
enum : int { kBsrOk = 0, kBsrOutOfMemory = 1, kBsrWrongPacking = 2 };

// One instruction set's block-sparse kernels. The same table drives dispatch,
// tests (info().kernels.bsr) and benchmarks.
struct BsrKernels {
  Isa isa;
  const char* name;    // e.g. "f32-bsr-6xN-avx2-fma"
  int max_group_rows;  // rows of W per micro-tile
  // y[m, w.rows] = act(x[m, w.cols] · Wᵀ + bias). Returns a kBsr* code.
  int (*linear)(const float* x, int64_t m, const BsrPackedView& w, const float* bias, Activation act, float* y);
  // out[nnz, br, bc] = (a[m, k] · b[n, k]ᵀ) on the blocks of `mask` ([m, n]). Returns a kBsr* code.
  int (*sddmm)(const float* a, int64_t m, int64_t k, const float* b, int64_t n, const BsrView& mask, float* out);
  // Grouped over experts (see bsr_grouped_linear). Returns a kBsr* code.
  int (*grouped_linear)(const BsrPackedView* w, int64_t experts, const int32_t* offsets, const float* xs,
                        int64_t gate_rows, Activation act, float* y);
};

// nullptr when this binary has no variant for `isa`.
const BsrKernels* bsr_kernels(Isa isa);

// W packed once for one instruction set; its transpose (for dx = dy·W) is
// packed at first use and kept.
struct PackedBsr {
  const BsrKernels* kernels = nullptr;
  int64_t rows = 0, cols = 0, br = 0, bc = 0, nnz = 0;
  AlignedBuffer<int32_t> row_ptr, col_idx;
  AlignedBuffer<float> packed;
  BsrPackedView view() const;
  // Built on first use by bsr_linear_transposed_packed; guarded by mu.
  std::mutex mu;
  std::shared_ptr<PackedBsr> transposed;
};

// Packs a validated W for `isa`.
Status bsr_pack(const BsrView& w, Isa isa, std::shared_ptr<PackedBsr>* out);

struct BsrLinearArgs {
  const float* x = nullptr;  // [m, k]
  int64_t m = 0, k = 0;
  const float* bias = nullptr;  // [n] or null
  Activation act = Activation::kNone;
  float* y = nullptr;  // [m, n]
};

// With a packed weight: runs the kernel the weight was packed for.
Status bsr_linear_packed(const BsrLinearArgs& a, const PackedBsr& w);

// Grouped block-sparse experts: for each expert e, rows offsets[e] ..
// offsets[e+1] of xs [rows, cols] times w[e]ᵀ, in one call over the pool.
// gate_rows = 0: y [rows, out] = act(xs·Wᵀ). gate_rows > 0: each w[e] stacks
// gate rows [0, gate_rows) over up rows [gate_rows, 2·gate_rows) (gate_rows a
// multiple of the block height) and y [rows, gate_rows] = act(gate) ⊙ up.
// Every w[e] has the same shape, block shape and kernels; offsets start at 0,
// do not decrease, and end at the row count.
Status bsr_grouped_linear(const PackedBsr* const* w, int64_t experts, const int32_t* offsets, const float* xs,
                          int64_t gate_rows, Activation act, float* y);
// With a plain validated W: packs into a per-thread workspace, then runs.
Status bsr_linear(const BsrLinearArgs& a, const BsrView& w, Isa isa);
// dx[m, w.cols] = dy[m, w.rows] · W (a.k must be w.rows; bias/act unused).
Status bsr_linear_transposed_packed(const BsrLinearArgs& a, PackedBsr& w);
Status bsr_linear_transposed(const BsrLinearArgs& a, const BsrView& w, Isa isa);
// out[nnz·br·bc] = blocks of a[m, k] · b[n, k]ᵀ on mask's pattern (mask: [m, n]).
Status bsr_sddmm(const float* a, int64_t m, int64_t k, const float* b, int64_t n, const BsrView& mask, float* out,
                 Isa isa);

// ---- Format operations (not arithmetic-heavy: one portable implementation).

// Transpose: t has shape [cols, rows], block shape [bc, br]; arrays sized
// block_cols + 1, nnz, nnz·br·bc. Column indices come out sorted.
Status bsr_transpose(const BsrView& w, int32_t* t_row_ptr, int32_t* t_col_idx, float* t_values);
// dense[rows, cols] (fully written).
void bsr_to_dense(const BsrView& w, float* dense);
// L2 norm of every block of a dense [rows, cols] matrix, in block order
// (block row major), accumulated in double.
void bsr_block_norms(const float* dense, int64_t rows, int64_t cols, int64_t br, int64_t bc, double* norms);
// keep[i] = 1 for the round(density·n) blocks of largest norm (ties: lower
// block index first), 0 otherwise. Norms must not be NaN.
Status bsr_select_top(const double* norms, int64_t n, double density, uint8_t* keep);
// Counts kept blocks.
int64_t bsr_count_kept(const uint8_t* keep, int64_t n);
// Gathers the kept blocks of a dense matrix; arrays sized block_rows + 1,
// nnz, nnz·br·bc (nnz = bsr_count_kept).
void bsr_from_dense(const float* dense, int64_t rows, int64_t cols, int64_t br, int64_t bc, const uint8_t* keep,
                    int32_t* row_ptr, int32_t* col_idx, float* values);

}  // namespace sparsekit
