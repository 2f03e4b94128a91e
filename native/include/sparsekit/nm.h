// N:M structured sparsity: the compressed format, its conversions, and the
// N:M linear kernels.
//
// A matrix W [rows, cols] is N:M sparse when every group of M consecutive
// columns of a row (cols % M == 0) holds at most N nonzeros. It is stored as
//   values  [rows, kept]  fp32, kept = cols / M · N, the group's slots in
//                          increasing column order (a slot may hold 0);
//   indices [rows, ib]    uint8, the in-group column (0..M−1) of every value,
//                          packed LSB-first in B = ceil(log2 M) bits (1 bit for
//                          M = 2, 2 for M ≤ 4, 3 for M ≤ 8, 4 for M ≤ 16); each
//                          row starts on a byte, ib = ceil(kept·B / 8), unused
//                          bits of a row's last byte are 0.
// Within a group the indices are strictly increasing: that makes the format
// canonical (one encoding per matrix) and rules out two values on one column.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "sparsekit/common.h"
#include "sparsekit/memory.h"

namespace sparsekit {

struct NmShape {
  int64_t rows = 0, cols = 0;
  int n = 0, m = 0;
};

// Bits per stored index for groups of m.
int nm_index_bits(int m);
inline int64_t nm_kept_per_row(const NmShape& s) { return s.cols / s.m * s.n; }
inline int64_t nm_index_bytes_per_row(const NmShape& s) {
  return (nm_kept_per_row(s) * nm_index_bits(s.m) + 7) / 8;
}
// 1 ≤ n < m ≤ 16, rows ≥ 1, cols ≥ 1, cols % m == 0 (kRange otherwise).
Status nm_check_shape(const NmShape& s);

// ---- format operations (portable: they move and compare, no arithmetic to speak of)

// Every index < m, strictly increasing per group, padding bits 0. The message
// of a failure names the row, group and what is wrong.
Status nm_validate_indices(const NmShape& s, const uint8_t* indices);
// Keeps the n largest |w| of every group (ties: the lower column wins).
void nm_prune(const float* w, const NmShape& s, float* values, uint8_t* indices);
// mask [rows, cols] of 0/1 with at most n ones per group; groups with fewer
// ones are filled with the lowest unmasked columns holding 0.
Status nm_from_mask(const float* w, const float* mask, const NmShape& s, float* values, uint8_t* indices);
void nm_to_dense(const NmShape& s, const float* values, const uint8_t* indices, float* dense);
// 1 where a slot is stored (exactly n per group), else 0.
void nm_mask(const NmShape& s, const uint8_t* indices, float* mask);
// The mask nm_prune keeps, without compressing.
void nm_prune_mask(const float* w, const NmShape& s, float* mask);
// True when every group of m columns of a [rows, cols] matrix has at most n nonzeros.
bool nm_is_nm(const float* a, int64_t rows, int64_t cols, int n, int m);
// out = grad + lambda · (1 − mask) ⊙ w (SR-STE, Zhou et al. 2021).
void nm_srste_grad(const float* grad, const float* w, const float* mask, int64_t count, float lambda, float* out);
// Random N:M matrix: uniform random slots per group, values uniform in [-scale, scale).
void nm_random(const NmShape& s, uint64_t seed, float scale, float* values, uint8_t* indices);

// ---- CUTLASS / PyTorch semi-structured 2:4 interchange (fp16 or bf16 values)
//
// values [rows, cols/2] (half bits), meta [rows, cols/16] int16: each int16
// holds 4 groups of 4 bits (idx0 | idx1 << 2, the group's two columns in
// increasing order), reordered into CUTLASS's ColumnMajorInterleaved<2> layout
// as PyTorch's torch/sparse/_semi_structured_conversions.py describes. rows % 32
// == 0 and cols % 32 == 0 (what the reordering needs; PyTorch's own
// to_sparse_semi_structured further asks cols % 64 == 0 for fp16/bf16).
enum class HalfType : int { kFloat16 = 0, kBFloat16 = 1 };
uint16_t float_to_half_bits(float f, HalfType t);
float half_bits_to_float(uint16_t h, HalfType t);
// Flat position of meta element (r, c) of a [rows, cols/16] metadata matrix in
// the reordered array.
int64_t cutlass24_meta_offset(int64_t r, int64_t c, int64_t rows);
Status nm_to_cutlass24(const NmShape& s, const float* values, const uint8_t* indices, HalfType t, uint16_t* values_out,
                       int16_t* meta_out);
Status nm_from_cutlass24(int64_t rows, int64_t cols, const uint16_t* values_in, HalfType t, const int16_t* meta_in,
                         float* values, uint8_t* indices);

// ---- kernels

struct PackedNm;

// One instruction set's N:M kernels; the same table drives dispatch, tests
// and benchmarks. The (n, m) with compile-time specialised kernels are listed
// by nm_is_tuned(); every other pattern runs a generic kernel.
struct NmKernels {
  Isa isa;
  const char* name;  // e.g. "f32-nm-avx2"
  int lanes;         // floats per vector
  // y [m, rows] = act(x [m, cols] · Wᵀ + bias); false when scratch memory ran out.
  bool (*linear)(const PackedNm& w, const float* x, int64_t m, const float* bias, Activation act, float* y);
  // dx [m, cols] = dy [m, rows] · W; false when scratch memory ran out.
  bool (*linear_transposed)(const PackedNm& w, const float* dy, int64_t m, float* dx);
  // Grouped over experts (see nm_grouped_linear); false when scratch memory ran out.
  bool (*grouped_linear)(const PackedNm* const* w, int64_t experts, const int32_t* offsets, const float* xs,
                         int64_t gate_rows, Activation act, float* y);
  // Both projections of an expert block (see nm_grouped_gated_down).
  bool (*grouped_gated_down)(const PackedNm* const* gate_up, const PackedNm* const* down, int64_t experts,
                             const int32_t* offsets, const float* xs, Activation act, float* y);
};

const NmKernels* nm_kernels(Isa isa);
bool nm_is_tuned(int n, int m);

// Rows per panel of the packed layout (see PackedNm).
constexpr int kNmPanelRows = 4;

// The packed weight. Tuned patterns: panels of kNmPanelRows rows whose chunks
// (8 kept values and their B index bytes) interleave — panel p holds, for
// chunk c = 0, 1, …, the 4 rows' 8 values (128 bytes) in `values`
// [p·vstride + c·32 + row·8] and their index bytes in `meta`
// [p·mstride + c·4·B + row·B], exactly the bits of the compressed form. The
// tiled kernel reads a panel's column block as one contiguous run and finds
// each of the panel's rows at a fixed offset from the panel's two pointers;
// the row-streaming kernel reads a panel's rows together.
// A row's last chunk may be partial (zero padded); rows past the end of the
// matrix are zero. Other patterns: rows of values (stride vstride) and each
// value's absolute column as int32 in `cols` (same stride). See nm.cc.
struct PackedNm {
  const NmKernels* kernels = nullptr;
  NmShape shape;
  bool tuned = false;
  int bits = 0;
  int64_t kept = 0;
  int64_t chunks = 0;            // ceil(kept / 8), the last one possibly partial
  int64_t vstride = 0;           // floats per panel (tuned) or per row (generic)
  int64_t mstride = 0;           // index bytes per panel (tuned)
  AlignedBuffer<float> values;
  AlignedBuffer<uint8_t> meta;
  AlignedBuffer<int32_t> cols;
  // Bytes a call reads from the weight: values and index data, once.
  int64_t bytes_per_call() const;
  // Bytes held (with padding).
  int64_t bytes_held() const;
  // Kernel name for (n, m) on this ISA, e.g. "f32-nm2:4-avx2" / "f32-nm-generic-avx2".
  std::string kernel_name() const;
};

// Copies the indices, validates the copy, then packs for `isa`.
Status pack_nm(const NmShape& s, const float* values, const uint8_t* indices, Isa isa, std::shared_ptr<PackedNm>* out);

struct NmLinearArgs {
  const float* x = nullptr;  // [m, cols]
  int64_t m = 0;
  const float* bias = nullptr;  // [rows] or null
  Activation act = Activation::kNone;
  float* y = nullptr;  // [m, rows]
};

Status nm_linear_packed(const NmLinearArgs& a, const PackedNm& w);
// dy [m, rows] → dx [m, cols]
Status nm_linear_transposed_packed(const float* dy, int64_t m, const PackedNm& w, float* dx);

// Grouped N:M experts: for each expert e, rows offsets[e] .. offsets[e+1] of
// xs [rows, cols] times w[e]ᵀ, in one call that schedules every expert's
// tiles across the pool. gate_rows = 0: y [rows, out] = act(xs·Wᵀ).
// gate_rows > 0: each w[e] stacks gate rows [0, gate_rows) over up rows
// [gate_rows, 2·gate_rows) and y [rows, gate_rows] = act(xs·Wgᵀ) ⊙ (xs·Wuᵀ)
// (SwiGLU / GeGLU), never materialising both products. Every w[e] must have
// the same shape and pattern and the same kernels; offsets start at 0, do not
// decrease, and end at the row count.
Status nm_grouped_linear(const PackedNm* const* w, int64_t experts, const int32_t* offsets, const float* xs,
                         int64_t gate_rows, Activation act, float* y);

// The expert block's gate/up and down projections in one call: y [rows, out]
// = down_e(act(gate_e·xs) ⊙ (up_e·xs)) on each expert's rows, gate_up[e]
// [2·ffn, in] (gate rows over up rows), down[e] [out, ffn]. The gated
// product reaches the down projection in its packed layout (no [rows, ffn]
// intermediate in rows); the result is bit for bit that of the two
// nm_grouped_linear calls.
Status nm_grouped_gated_down(const PackedNm* const* gate_up, const PackedNm* const* down, int64_t experts,
                             const int32_t* offsets, const float* xs, Activation act, float* y);

}  // namespace sparsekit
