// Block-sparse format: validation, packing, dispatch and the format
// operations (transpose, dense conversion, magnitude pruning). Compiled
// without ISA flags. Packing and the format operations only move data (no
// arithmetic worth vectorising per ISA), so they have one portable
// implementation here; the products live in bsr_<isa>.cc.
#include <vector>
#include <algorithm>
#include <cmath>
#include <new>
#include <string>

#include "sparsekit/bsr.h"
#include "sparsekit/experts.h"
#include "sparsekit/runtime.h"
#include "sparsekit/thread_pool.h"

namespace sparsekit {

const BsrKernels* bsr_kernels_scalar();
#if defined(__x86_64__)
const BsrKernels* bsr_kernels_avx2();
const BsrKernels* bsr_kernels_avx512();
#endif
#if defined(__aarch64__)
const BsrKernels* bsr_kernels_neon();
#endif

const BsrKernels* bsr_kernels(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return bsr_kernels_scalar();
#if defined(__x86_64__)
    case Isa::kAvx2: return bsr_kernels_avx2();
    case Isa::kAvx512: return bsr_kernels_avx512();
#endif
#if defined(__aarch64__)
    case Isa::kNeon: return bsr_kernels_neon();
#endif
    default: return nullptr;
  }
}

namespace {

std::string s(int64_t v) { return std::to_string(v); }

// Row groups of a block row of height br (see BsrPackedView).
struct BsrGroups {
  int count, base, extra;
  static BsrGroups split(int64_t br, int max_rows) {
    BsrGroups g;
    g.count = static_cast<int>((br + max_rows - 1) / max_rows);
    g.base = static_cast<int>(br / g.count);
    g.extra = static_cast<int>(br % g.count);
    return g;
  }
  int rows(int g) const { return base + (g < extra ? 1 : 0); }
  int first_row(int g) const { return g * base + (g < extra ? g : extra); }
};

void set_groups(BsrPackedView* v, int max_rows) {
  BsrGroups g = BsrGroups::split(v->br, max_rows);
  v->max_group_rows = max_rows;
  v->groups = g.count;
  v->group_base = g.base;
  v->group_extra = g.extra;
}

Status from_code(int code) {
  switch (code) {
    case kBsrOk: return Status::Ok();
    case kBsrOutOfMemory: return Status::Oom("out of memory for the kernel's workspace");
    default: return Status::Invalid("W was packed for another kernel's row groups");
  }
}

const BsrKernels* kernels_for(Isa isa, Status* st) {
  const BsrKernels* k = bsr_kernels(isa);
  if (!k || !isa_supported(isa)) *st = Status::Invalid(std::string("no block-sparse kernel for ISA ") + isa_name(isa));
  return k;
}

// Writes W's kept values in the packed group layout (see BsrPackedView).
// With `t_src` set, the target is the transpose of the matrix `src` (target
// block j is src block t_src[j], read transposed).
void pack_groups(const int32_t* row_ptr, int64_t nbr, int64_t br, int64_t bc, int max_rows, const float* src,
                 const int32_t* t_src, float* packed) {
  const BsrGroups gs = BsrGroups::split(br, max_rows);
  const int64_t bsize = br * bc;
  ThreadPool::instance().parallel_for(nbr, [&](int64_t R, int) {
    const int64_t p0 = row_ptr[R], nb = row_ptr[R + 1] - p0;
    for (int g = 0; g < gs.count; ++g) {
      const int64_t rows = gs.rows(g), r0 = gs.first_row(g);
      float* dst = packed + p0 * bsize + r0 * nb * bc;
      for (int64_t j = 0; j < nb; ++j) {
        float* d = dst + j * bc * rows;
        if (!t_src) {
          const float* blk = src + (p0 + j) * bsize;
          for (int64_t kk = 0; kk < bc; ++kk)
            for (int64_t i = 0; i < rows; ++i) d[kk * rows + i] = blk[(r0 + i) * bc + kk];
        } else {
          // Target block is [br, bc]; its source block is [bc, br]: element
          // (r, kk) of the target is (kk, r) of the source.
          const float* blk = src + static_cast<int64_t>(t_src[p0 + j]) * bsize;
          for (int64_t kk = 0; kk < bc; ++kk)
            for (int64_t i = 0; i < rows; ++i) d[kk * rows + i] = blk[kk * br + (r0 + i)];
        }
      }
    }
  });
}

// Pattern of the transpose; t_src[j] = source block of target block j.
// `next` is scratch of block_cols entries.
void transpose_pattern(const BsrView& w, int32_t* t_row_ptr, int32_t* t_col_idx, int32_t* t_src, int32_t* next) {
  const int64_t nbr = w.block_rows(), nbc = w.block_cols();
  for (int64_t c = 0; c <= nbc; ++c) t_row_ptr[c] = 0;
  for (int64_t j = 0; j < w.nnz; ++j) ++t_row_ptr[w.col_idx[j] + 1];
  for (int64_t c = 0; c < nbc; ++c) t_row_ptr[c + 1] += t_row_ptr[c];
  // Fill in block-row order, so each target row's column indices ascend.
  std::copy(t_row_ptr, t_row_ptr + nbc, next);
  for (int64_t R = 0; R < nbr; ++R)
    for (int64_t j = w.row_ptr[R]; j < w.row_ptr[R + 1]; ++j) {
      int32_t pos = next[w.col_idx[j]]++;
      t_col_idx[pos] = static_cast<int32_t>(R);
      t_src[pos] = static_cast<int32_t>(j);
    }
}

}  // namespace

Status bsr_check_shape(int64_t rows, int64_t cols, int64_t br, int64_t bc) {
  if (rows < 1 || cols < 1) return Status::Range("shape must be two positive integers, got [" + s(rows) + ", " + s(cols) + "]");
  if (br < 1 || bc < 1)
    return Status::Range("blockSize must be two positive integers, got [" + s(br) + ", " + s(bc) + "]");
  if (rows % br != 0 || cols % bc != 0) {
    std::string m = "shape [" + s(rows) + ", " + s(cols) + "] is not divisible by blockSize [" + s(br) + ", " + s(bc) + "]: ";
    if (rows % br != 0) m += s(rows) + " rows is not a multiple of " + s(br);
    if (rows % br != 0 && cols % bc != 0) m += " and ";
    if (cols % bc != 0) m += s(cols) + " columns is not a multiple of " + s(bc);
    return Status::Range(m);
  }
  return Status::Ok();
}

Status bsr_validate(const BsrView& v, int64_t row_ptr_len, int64_t col_idx_len, int64_t values_len) {
  Status st = bsr_check_shape(v.rows, v.cols, v.br, v.bc);
  if (!st.ok()) return st;
  const int64_t nbr = v.block_rows(), nbc = v.block_cols();
  if (row_ptr_len != nbr + 1)
    return Status::Range("rowPtr has " + s(row_ptr_len) + " entries but shape [" + s(v.rows) + ", " + s(v.cols) +
                         "] with blockSize [" + s(v.br) + ", " + s(v.bc) + "] has " + s(nbr) + " block rows (needs " +
                         s(nbr + 1) + ")");
  if (v.row_ptr[0] != 0) return Status::Range("rowPtr[0] must be 0, got " + s(v.row_ptr[0]));
  for (int64_t R = 0; R < nbr; ++R)
    if (v.row_ptr[R + 1] < v.row_ptr[R])
      return Status::Range("rowPtr must be non-decreasing: rowPtr[" + s(R + 1) + "] = " + s(v.row_ptr[R + 1]) +
                           " < rowPtr[" + s(R) + "] = " + s(v.row_ptr[R]));
  if (v.row_ptr[nbr] != col_idx_len)
    return Status::Range("rowPtr[" + s(nbr) + "] (the last entry) must equal the number of blocks colIdx.length = " +
                         s(col_idx_len) + ", got " + s(v.row_ptr[nbr]));
  if (v.nnz != col_idx_len) return Status::Range("colIdx length does not match the block count");
  for (int64_t R = 0; R < nbr; ++R) {
    for (int64_t j = v.row_ptr[R]; j < v.row_ptr[R + 1]; ++j) {
      int32_t c = v.col_idx[j];
      if (c < 0 || c >= nbc)
        return Status::Range("colIdx[" + s(j) + "] = " + s(c) + " is out of range: block row " + s(R) + " needs 0 ≤ colIdx < " +
                             s(nbc) + " (block columns)");
      if (j > v.row_ptr[R] && c <= v.col_idx[j - 1])
        return Status::Range("colIdx must be strictly increasing within each block row (sorted, no duplicates): colIdx[" +
                             s(j) + "] = " + s(c) + " follows colIdx[" + s(j - 1) + "] = " + s(v.col_idx[j - 1]) +
                             " in block row " + s(R));
    }
  }
  if (values_len >= 0 && values_len != v.nnz * v.br * v.bc)
    return Status::Range("values has " + s(values_len) + " elements but " + s(v.nnz) + " blocks of " + s(v.br) + "×" +
                         s(v.bc) + " need " + s(v.nnz * v.br * v.bc));
  return Status::Ok();
}

BsrPackedView PackedBsr::view() const {
  BsrPackedView v;
  v.rows = rows;
  v.cols = cols;
  v.br = br;
  v.bc = bc;
  v.nnz = nnz;
  v.row_ptr = row_ptr.data();
  v.col_idx = col_idx.data();
  v.packed = packed.data();
  set_groups(&v, kernels->max_group_rows);
  return v;
}

namespace {

std::shared_ptr<PackedBsr> new_packed(const BsrKernels* kern, int64_t rows, int64_t cols, int64_t br, int64_t bc,
                                      int64_t nnz) {
  auto p = std::shared_ptr<PackedBsr>(new (std::nothrow) PackedBsr());
  if (!p) return nullptr;
  p->kernels = kern;
  p->rows = rows;
  p->cols = cols;
  p->br = br;
  p->bc = bc;
  p->nnz = nnz;
  if (!p->row_ptr.resize(static_cast<size_t>(rows / br + 1)) || !p->col_idx.resize(static_cast<size_t>(nnz)) ||
      !p->packed.resize(static_cast<size_t>(nnz * br * bc)))
    return nullptr;
  return p;
}

}  // namespace

Status bsr_pack(const BsrView& w, Isa isa, std::shared_ptr<PackedBsr>* out) {
  Status st;
  const BsrKernels* kern = kernels_for(isa, &st);
  if (!st.ok()) return st;
  auto p = new_packed(kern, w.rows, w.cols, w.br, w.bc, w.nnz);
  if (!p) return Status::Oom("out of memory packing W");
  std::copy(w.row_ptr, w.row_ptr + w.block_rows() + 1, p->row_ptr.data());
  std::copy(w.col_idx, w.col_idx + w.nnz, p->col_idx.data());
  pack_groups(w.row_ptr, w.block_rows(), w.br, w.bc, kern->max_group_rows, w.values, nullptr, p->packed.data());
  *out = std::move(p);
  return Status::Ok();
}

Status bsr_linear_packed(const BsrLinearArgs& a, const PackedBsr& w) {
  if (a.k != w.cols) return Status::Range("x width does not match W's in");
  return from_code(w.kernels->linear(a.x, a.m, w.view(), a.bias, a.act, a.y));
}

Status bsr_grouped_linear(const PackedBsr* const* w, int64_t experts, const int32_t* offsets, const float* xs,
                          int64_t gate_rows, Activation act, float* y) {
  if (experts < 1) return Status::Range("at least one expert is needed");
  const PackedBsr& w0 = *w[0];
  std::vector<BsrPackedView> views(static_cast<size_t>(experts));
  for (int64_t e = 0; e < experts; ++e) {
    const PackedBsr& we = *w[e];
    if (we.rows != w0.rows || we.cols != w0.cols || we.br != w0.br || we.bc != w0.bc)
      return Status::Range("expert " + std::to_string(e) + " is [" + std::to_string(we.rows) + ", " +
                           std::to_string(we.cols) + "] in " + std::to_string(we.br) + "x" + std::to_string(we.bc) +
                           " blocks but expert 0 is [" + std::to_string(w0.rows) + ", " + std::to_string(w0.cols) +
                           "] in " + std::to_string(w0.br) + "x" + std::to_string(w0.bc) + " blocks");
    if (we.kernels != w0.kernels) return Status::Invalid("experts were packed for different instruction sets");
    views[static_cast<size_t>(e)] = we.view();
  }
  if (gate_rows < 0 || (gate_rows > 0 && (2 * gate_rows != w0.rows || gate_rows % w0.br != 0)))
    return Status::Range("a gated call needs each expert to stack gate and up rows (out = 2 * gate_rows) with gate_rows a multiple of the block height");
  if (offsets[0] != 0) return Status::Range("offsets must start at 0");
  int64_t tiles = 0, most = 0;
  for (int64_t e = 0; e < experts; ++e) {
    if (offsets[e + 1] < offsets[e]) return Status::Range("offsets must not decrease");
    tiles += (offsets[e + 1] - offsets[e] + 15) / 16;
    most = std::max<int64_t>(most, offsets[e + 1] - offsets[e]);
  }
  // The grouped kernel parallelises over token tiles. With few of them
  // (decode) each expert runs linear(), which also splits its rows over the
  // pool, and the gate is applied after. The choice depends on the offsets
  // only, never on the thread count, so results do not either.
  if (tiles >= 16)
    return from_code(w0.kernels->grouped_linear(views.data(), experts, offsets, xs, gate_rows, act, y));
  const int64_t n = gate_rows > 0 ? gate_rows : w0.rows;
  std::vector<float> tmp;
  if (gate_rows > 0) tmp.resize(static_cast<size_t>(most * w0.rows));
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t r = offsets[e + 1] - offsets[e];
    if (r == 0) continue;
    const float* xe = xs + int64_t(offsets[e]) * w0.cols;
    float* ye = y + int64_t(offsets[e]) * n;
    int code = w0.kernels->linear(xe, r, views[size_t(e)], nullptr, gate_rows > 0 ? Activation::kNone : act,
                                  gate_rows > 0 ? tmp.data() : ye);
    if (code != kBsrOk) return from_code(code);
    if (gate_rows > 0) glu_rows(tmp.data(), r, n, act, ye);
  }
  return Status::Ok();
}

Status bsr_linear(const BsrLinearArgs& a, const BsrView& w, Isa isa) {
  Status st;
  const BsrKernels* kern = kernels_for(isa, &st);
  if (!st.ok()) return st;
  if (a.k != w.cols) return Status::Range("x width does not match W's in");
  float* packed = thread_workspace(static_cast<size_t>(w.nnz * w.br * w.bc), 1);
  if (!packed) return Status::Oom("out of memory for the packed-W workspace");
  pack_groups(w.row_ptr, w.block_rows(), w.br, w.bc, kern->max_group_rows, w.values, nullptr, packed);
  BsrPackedView v;
  v.rows = w.rows;
  v.cols = w.cols;
  v.br = w.br;
  v.bc = w.bc;
  v.nnz = w.nnz;
  v.row_ptr = w.row_ptr;
  v.col_idx = w.col_idx;
  v.packed = packed;
  set_groups(&v, kern->max_group_rows);
  return from_code(kern->linear(a.x, a.m, v, a.bias, a.act, a.y));
}

Status bsr_linear_transposed_packed(const BsrLinearArgs& a, PackedBsr& w) {
  if (a.k != w.rows) return Status::Range("dy width does not match W's out");
  std::shared_ptr<PackedBsr> t;
  {
    std::lock_guard<std::mutex> lk(w.mu);
    if (!w.transposed) {
      auto p = new_packed(w.kernels, w.cols, w.rows, w.bc, w.br, w.nnz);
      AlignedBuffer<int32_t> src, next;
      if (!p || !src.resize(static_cast<size_t>(w.nnz)) || !next.resize(static_cast<size_t>(w.cols / w.bc)))
        return Status::Oom("out of memory packing Wᵀ");
      BsrView v;
      v.rows = w.rows;
      v.cols = w.cols;
      v.br = w.br;
      v.bc = w.bc;
      v.nnz = w.nnz;
      v.row_ptr = w.row_ptr.data();
      v.col_idx = w.col_idx.data();
      transpose_pattern(v, p->row_ptr.data(), p->col_idx.data(), src.data(), next.data());
      // Only the packed (group-layout) values are kept, so unpack them to
      // plain row-major blocks first, then pack the transpose from those.
      AlignedBuffer<float> blocks;
      if (!blocks.resize(static_cast<size_t>(w.nnz * w.br * w.bc))) return Status::Oom("out of memory packing Wᵀ");
      const BsrGroups gs = BsrGroups::split(w.br, w.kernels->max_group_rows);
      const int64_t bsize = w.br * w.bc, bc = w.bc;
      const int32_t* rp = w.row_ptr.data();
      const float* packed = w.packed.data();
      float* out = blocks.data();
      ThreadPool::instance().parallel_for(w.rows / w.br, [&](int64_t R, int) {
        const int64_t p0 = rp[R], nb = rp[R + 1] - p0;
        for (int g = 0; g < gs.count; ++g) {
          const int64_t rows = gs.rows(g), r0 = gs.first_row(g);
          const float* srcg = packed + p0 * bsize + r0 * nb * bc;
          for (int64_t j = 0; j < nb; ++j)
            for (int64_t kk = 0; kk < bc; ++kk)
              for (int64_t i = 0; i < rows; ++i) out[(p0 + j) * bsize + (r0 + i) * bc + kk] = srcg[(j * bc + kk) * rows + i];
        }
      });
      pack_groups(p->row_ptr.data(), p->rows / p->br, p->br, p->bc, w.kernels->max_group_rows, blocks.data(), src.data(),
                  p->packed.data());
      w.transposed = std::move(p);
    }
    t = w.transposed;
  }
  return from_code(t->kernels->linear(a.x, a.m, t->view(), nullptr, Activation::kNone, a.y));
}

Status bsr_linear_transposed(const BsrLinearArgs& a, const BsrView& w, Isa isa) {
  Status st;
  const BsrKernels* kern = kernels_for(isa, &st);
  if (!st.ok()) return st;
  if (a.k != w.rows) return Status::Range("dy width does not match W's out");
  AlignedBuffer<int32_t> t_row_ptr, t_col_idx, t_src, next;
  if (!t_row_ptr.resize(static_cast<size_t>(w.block_cols() + 1)) || !t_col_idx.resize(static_cast<size_t>(w.nnz)) ||
      !t_src.resize(static_cast<size_t>(w.nnz)) || !next.resize(static_cast<size_t>(w.block_cols())))
    return Status::Oom("out of memory transposing W");
  transpose_pattern(w, t_row_ptr.data(), t_col_idx.data(), t_src.data(), next.data());
  float* packed = thread_workspace(static_cast<size_t>(w.nnz * w.br * w.bc), 1);
  if (!packed) return Status::Oom("out of memory for the packed-Wᵀ workspace");
  pack_groups(t_row_ptr.data(), w.block_cols(), w.bc, w.br, kern->max_group_rows, w.values, t_src.data(), packed);
  BsrPackedView v;
  v.rows = w.cols;
  v.cols = w.rows;
  v.br = w.bc;
  v.bc = w.br;
  v.nnz = w.nnz;
  v.row_ptr = t_row_ptr.data();
  v.col_idx = t_col_idx.data();
  v.packed = packed;
  set_groups(&v, kern->max_group_rows);
  return from_code(kern->linear(a.x, a.m, v, nullptr, Activation::kNone, a.y));
}

Status bsr_sddmm(const float* a, int64_t m, int64_t k, const float* b, int64_t n, const BsrView& mask, float* out,
                 Isa isa) {
  Status st;
  const BsrKernels* kern = kernels_for(isa, &st);
  if (!st.ok()) return st;
  if (mask.rows != m || mask.cols != n) return Status::Range("mask shape does not match [a rows, b rows]");
  return from_code(kern->sddmm(a, m, k, b, n, mask, out));
}

Status bsr_transpose(const BsrView& w, int32_t* t_row_ptr, int32_t* t_col_idx, float* t_values) {
  AlignedBuffer<int32_t> srcb, next;
  if (!srcb.resize(static_cast<size_t>(w.nnz)) || !next.resize(static_cast<size_t>(w.block_cols())))
    return Status::Oom("out of memory transposing");
  const int32_t* src = srcb.data();
  transpose_pattern(w, t_row_ptr, t_col_idx, srcb.data(), next.data());
  const int64_t br = w.br, bc = w.bc, bsize = br * bc;
  ThreadPool::instance().parallel_for(w.nnz, [&](int64_t j, int) {
    const float* s = w.values + static_cast<int64_t>(src[j]) * bsize;
    float* d = t_values + j * bsize;
    for (int64_t r = 0; r < bc; ++r)
      for (int64_t c = 0; c < br; ++c) d[r * br + c] = s[c * bc + r];
  });
  return Status::Ok();
}

void bsr_to_dense(const BsrView& w, float* dense) {
  const int64_t br = w.br, bc = w.bc, cols = w.cols;
  ThreadPool::instance().parallel_for(w.block_rows(), [&](int64_t R, int) {
    float* rows = dense + R * br * cols;
    std::fill(rows, rows + br * cols, 0.f);
    for (int64_t j = w.row_ptr[R]; j < w.row_ptr[R + 1]; ++j) {
      const float* blk = w.values + j * br * bc;
      const int64_t c0 = static_cast<int64_t>(w.col_idx[j]) * bc;
      for (int64_t i = 0; i < br; ++i) std::copy(blk + i * bc, blk + (i + 1) * bc, rows + i * cols + c0);
    }
  });
}

void bsr_block_norms(const float* dense, int64_t rows, int64_t cols, int64_t br, int64_t bc, double* norms) {
  const int64_t nbc = cols / bc;
  ThreadPool::instance().parallel_for(rows / br, [&](int64_t R, int) {
    double* nr = norms + R * nbc;
    for (int64_t c = 0; c < nbc; ++c) nr[c] = 0;
    for (int64_t i = 0; i < br; ++i) {
      const float* row = dense + (R * br + i) * cols;
      for (int64_t c = 0; c < nbc; ++c) {
        double acc = 0;
        for (int64_t kk = 0; kk < bc; ++kk) acc += static_cast<double>(row[c * bc + kk]) * row[c * bc + kk];
        nr[c] += acc;
      }
    }
    for (int64_t c = 0; c < nbc; ++c) nr[c] = std::sqrt(nr[c]);
  });
}

Status bsr_select_top(const double* norms, int64_t n, double density, uint8_t* keep) {
  int64_t want = static_cast<int64_t>(std::floor(density * static_cast<double>(n) + 0.5));
  if (want < 0) want = 0;
  if (want > n) want = n;
  std::fill(keep, keep + n, uint8_t{0});
  if (want == 0) return Status::Ok();
  AlignedBuffer<int64_t> idxb;
  if (!idxb.resize(static_cast<size_t>(n))) return Status::Oom("out of memory selecting blocks");
  int64_t* idx = idxb.data();
  for (int64_t i = 0; i < n; ++i) idx[i] = i;
  // A strict total order (norm descending, then index), so the choice is the
  // same on every platform and run.
  auto before = [norms](int64_t x, int64_t y) { return norms[x] > norms[y] || (norms[x] == norms[y] && x < y); };
  if (want < n) std::nth_element(idx, idx + (want - 1), idx + n, before);
  for (int64_t i = 0; i < want; ++i) keep[idx[i]] = 1;
  return Status::Ok();
}

int64_t bsr_count_kept(const uint8_t* keep, int64_t n) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += keep[i] != 0;
  return c;
}

void bsr_from_dense(const float* dense, int64_t rows, int64_t cols, int64_t br, int64_t bc, const uint8_t* keep,
                    int32_t* row_ptr, int32_t* col_idx, float* values) {
  const int64_t nbr = rows / br, nbc = cols / bc;
  row_ptr[0] = 0;
  for (int64_t R = 0; R < nbr; ++R) {
    int32_t c = 0;
    for (int64_t j = 0; j < nbc; ++j) c += keep[R * nbc + j] != 0;
    row_ptr[R + 1] = row_ptr[R] + c;
  }
  ThreadPool::instance().parallel_for(nbr, [&](int64_t R, int) {
    int64_t pos = row_ptr[R];
    for (int64_t c = 0; c < nbc; ++c) {
      if (!keep[R * nbc + c]) continue;
      col_idx[pos] = static_cast<int32_t>(c);
      float* blk = values + pos * br * bc;
      for (int64_t i = 0; i < br; ++i) {
        const float* src = dense + (R * br + i) * cols + c * bc;
        std::copy(src, src + bc, blk + i * bc);
      }
      ++pos;
    }
  });
}

}  // namespace sparsekit
