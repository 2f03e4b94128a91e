// Block-sparse (BSR) products on the GPU.
//
// bsr_linear: y = act(x·Wᵀ + b) with W [out, in] in square blocks of 16, 32
// or 64. A CTA owns BM tokens × one block row of W (BN = block size outputs)
// and its K loop walks only that block row's kept blocks: each step stages
// the x columns of one kept block (gathered by its column index) and the
// block itself, so the work is proportional to the kept blocks.
//
// sddmm: the kept blocks of a·bᵀ on a pattern; one CTA per kept block, a full
// K loop over the block's rows of a and b.
//
// Other block shapes (non-square, or other sizes) run a plain kernel with one
// thread per output: correct, not tuned.
#include "gemm.cuh"
#include "ops.h"

namespace skc {
namespace {

// K steps of a bsr_linear CTA: kept blocks p0 … p1−1 of block row R, each split
// into `subs` steps of BK columns.
template <class T>
struct BsrLinearSource {
  const T* a;  // x rows of this tile, column 0
  const T* values;
  const int32_t* col_idx;
  const T* b3 = nullptr;
  int64_t lda, ldb;  // in, bc
  int a_rows, b_rows;
  int p0, subs, br, bc;
  int64_t block_cols;
  int iters;
  const T* safe;
  template <int BK>
  __device__ __forceinline__ void step(int it, const T*& ap, const T*& bp, const T*& b3p, int& kvalid) const {
    const int q = it / subs, sub = it - q * subs;
    const int p = p0 + q;
    int64_t c = col_idx[p];
    c = c < 0 ? 0 : (c >= block_cols ? block_cols - 1 : c);  // validated by the caller; never read outside x
    ap = a + c * bc + sub * BK;
    bp = values + static_cast<int64_t>(p) * br * bc + sub * BK;
    b3p = nullptr;
    kvalid = BK;
  }
};

struct BsrArgs {
  int64_t m, rows, cols, br, bc, nnz;
  const int32_t* row_ptr;
  const int32_t* col_idx;
  const int32_t* block_row;
  const float* bias;
  int act;
  int ydt;
};

// The kept-block range of block row R, clamped into [0, nnz].
__device__ __forceinline__ void block_range(const BsrArgs& g, int64_t R, int* p0, int* p1) {
  int64_t a = g.row_ptr[R], b = g.row_ptr[R + 1];
  a = a < 0 ? 0 : (a > g.nnz ? g.nnz : a);
  b = b < a ? a : (b > g.nnz ? g.nnz : b);
  *p0 = static_cast<int>(a);
  *p1 = static_cast<int>(b);
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS)
    bsr_linear_mma_kernel(const bf16* __restrict__ x, const bf16* __restrict__ values, void* __restrict__ y, BsrArgs g) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * Cfg::BM;
  const int64_t R = blockIdx.y;
  int p0, p1;
  block_range(g, R, &p0, &p1);
  BsrLinearSource<bf16> src;
  src.a = x + m0 * g.cols;
  src.values = values;
  src.col_idx = g.col_idx;
  src.lda = g.cols;
  src.ldb = g.bc;
  src.a_rows = static_cast<int>(min64(Cfg::BM, g.m - m0));
  src.b_rows = Cfg::BN;
  src.p0 = p0;
  src.subs = static_cast<int>(g.bc / Cfg::BK);
  src.br = static_cast<int>(g.br);
  src.bc = static_cast<int>(g.bc);
  src.block_cols = g.cols / g.bc;
  src.iters = (p1 - p0) * src.subs;
  src.safe = x;
  MmaAcc<Cfg> acc;
  mma_mainloop<Cfg, true>(src, reinterpret_cast<bf16*>(smem_raw), acc);
  const int rows = src.a_rows;
  const int64_t n0 = R * g.br;
  mma_epilogue<Cfg>(acc, [&](int r, int c, float v0, float v1, float, float) {
    if (r < rows) store_pair<false>(y, g.ydt, g.rows, m0 + r, n0 + c, g.rows, v0, v1, 0.f, 0.f, g.bias, g.act);
  });
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS)
    bsr_linear_simt_kernel(const float* __restrict__ x, const float* __restrict__ values, void* __restrict__ y,
                           BsrArgs g) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * Cfg::BM;
  const int64_t R = blockIdx.y;
  int p0, p1;
  block_range(g, R, &p0, &p1);
  BsrLinearSource<float> src;
  src.a = x + m0 * g.cols;
  src.values = values;
  src.col_idx = g.col_idx;
  src.lda = g.cols;
  src.ldb = g.bc;
  src.a_rows = static_cast<int>(min64(Cfg::BM, g.m - m0));
  src.b_rows = Cfg::BN;
  src.p0 = p0;
  src.subs = static_cast<int>(g.bc / Cfg::BK);
  src.br = static_cast<int>(g.br);
  src.bc = static_cast<int>(g.bc);
  src.block_cols = g.cols / g.bc;
  src.iters = (p1 - p0) * src.subs;
  src.safe = x;
  SimtAcc<Cfg> acc;
  simt_mainloop<Cfg>(src, reinterpret_cast<float*>(smem_raw), acc);
  const int rows = src.a_rows;
  const int64_t n0 = R * g.br;
  simt_epilogue<Cfg>(acc, [&](int r, int c, float v, float) {
    if (r < rows) store_one(y, g.ydt, (m0 + r) * g.rows + n0 + c, finish<false>(v, 0.f, g.bias, n0 + c, g.act));
  });
}

// Any block shape: one thread per output element.
template <class T>
__global__ void bsr_linear_generic_kernel(const T* __restrict__ x, const T* __restrict__ values, void* __restrict__ y,
                                          BsrArgs g) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= g.m * g.rows) return;
  const int64_t t = idx / g.rows, o = idx % g.rows;
  const int64_t R = o / g.br, ro = o % g.br, block_cols = g.cols / g.bc;
  int p0, p1;
  block_range(g, R, &p0, &p1);
  float acc = 0.f;
  for (int p = p0; p < p1; ++p) {
    int64_t c = g.col_idx[p];
    if (c < 0 || c >= block_cols) continue;
    const T* xv = x + t * g.cols + c * g.bc;
    const T* wv = values + (static_cast<int64_t>(p) * g.br + ro) * g.bc;
    for (int64_t cc = 0; cc < g.bc; ++cc) acc = fmaf(to_float(xv[cc]), to_float(wv[cc]), acc);
  }
  store_one(y, g.ydt, idx, finish<false>(acc, 0.f, g.bias, o, g.act));
}

// ---- sddmm --------------------------------------------------------------------------

struct SddmmArgs {
  int64_t k, br, bc, nnz, block_rows, block_cols;
  const int32_t* col_idx;
  const int32_t* block_row;
  int ydt;
};

__device__ __forceinline__ bool block_coords(const SddmmArgs& g, int64_t p, int64_t* R, int64_t* C) {
  *R = g.block_row[p];
  *C = g.col_idx[p];
  return *R >= 0 && *R < g.block_rows && *C >= 0 && *C < g.block_cols;
}

template <class Cfg, bool VEC>
__global__ void __launch_bounds__(Cfg::THREADS)
    sddmm_mma_kernel(const bf16* __restrict__ a, const bf16* __restrict__ b, void* __restrict__ out, SddmmArgs g) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int64_t p = blockIdx.x;
  int64_t R, C;
  const bool ok = block_coords(g, p, &R, &C);
  ContiguousSource<bf16> src;
  src.a = a + R * g.br * g.k;
  src.b = b + C * g.bc * g.k;
  src.b3 = nullptr;
  src.lda = src.ldb = g.k;
  src.a_rows = Cfg::BM;
  src.b_rows = Cfg::BN;
  src.k = g.k;
  src.iters = ok ? static_cast<int>((g.k + Cfg::BK - 1) / Cfg::BK) : 0;  // a bad block stays zero
  src.safe = a;
  MmaAcc<Cfg> acc;
  mma_mainloop<Cfg, VEC>(src, reinterpret_cast<bf16*>(smem_raw), acc);
  const int64_t base = p * g.br * g.bc;
  mma_epilogue<Cfg>(acc, [&](int r, int c, float v0, float v1, float, float) {
    store_pair<false>(out, g.ydt, g.bc, 0, base + r * g.bc + c, base + g.br * g.bc, v0, v1, 0.f, 0.f, nullptr,
                      SK_ACT_NONE);
  });
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS)
    sddmm_simt_kernel(const float* __restrict__ a, const float* __restrict__ b, void* __restrict__ out, SddmmArgs g) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int64_t p = blockIdx.x;
  int64_t R, C;
  const bool ok = block_coords(g, p, &R, &C);
  ContiguousSource<float> src;
  src.a = a + R * g.br * g.k;
  src.b = b + C * g.bc * g.k;
  src.b3 = nullptr;
  src.lda = src.ldb = g.k;
  src.a_rows = Cfg::BM;
  src.b_rows = Cfg::BN;
  src.k = g.k;
  src.iters = ok ? static_cast<int>((g.k + Cfg::BK - 1) / Cfg::BK) : 0;
  src.safe = a;
  SimtAcc<Cfg> acc;
  simt_mainloop<Cfg>(src, reinterpret_cast<float*>(smem_raw), acc);
  const int64_t base = p * g.br * g.bc;
  simt_epilogue<Cfg>(acc, [&](int r, int c, float v, float) { store_one(out, g.ydt, base + r * g.bc + c, v); });
}

template <class T>
__global__ void sddmm_generic_kernel(const T* __restrict__ a, const T* __restrict__ b, void* __restrict__ out,
                                     SddmmArgs g) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t per = g.br * g.bc;
  if (idx >= g.nnz * per) return;
  const int64_t p = idx / per, r = (idx % per) / g.bc, c = idx % g.bc;
  int64_t R, C;
  float acc = 0.f;
  if (block_coords(g, p, &R, &C)) {
    const T* av = a + (R * g.br + r) * g.k;
    const T* bv = b + (C * g.bc + c) * g.k;
    for (int64_t kk = 0; kk < g.k; ++kk) acc = fmaf(to_float(av[kk]), to_float(bv[kk]), acc);
  }
  store_one(out, g.ydt, idx, acc);
}



template <class Cfg>
int linear_mma(const bf16* x, const bf16* values, void* y, const BsrArgs& g, cudaStream_t s) {
  auto kern = bsr_linear_mma_kernel<Cfg>;
  SKC_TRY(prepare(kern, Cfg::SMEM));
  dim3 grid(static_cast<unsigned>(ceil_div(g.m, Cfg::BM)), static_cast<unsigned>(g.rows / g.br));
  kern<<<grid, Cfg::THREADS, Cfg::SMEM, s>>>(x, values, y, g);
  return check_launch("bsr_linear_mma_kernel");
}

template <class Cfg>
int linear_simt(const float* x, const float* values, void* y, const BsrArgs& g, cudaStream_t s) {
  auto kern = bsr_linear_simt_kernel<Cfg>;
  SKC_TRY(prepare(kern, Cfg::SMEM));
  dim3 grid(static_cast<unsigned>(ceil_div(g.m, Cfg::BM)), static_cast<unsigned>(g.rows / g.br));
  kern<<<grid, Cfg::THREADS, Cfg::SMEM, s>>>(x, values, y, g);
  return check_launch("bsr_linear_simt_kernel");
}

template <class Cfg, bool VEC>
int sddmm_mma(const bf16* a, const bf16* b, void* out, const SddmmArgs& g, cudaStream_t s) {
  auto kern = sddmm_mma_kernel<Cfg, VEC>;
  SKC_TRY(prepare(kern, Cfg::SMEM));
  kern<<<static_cast<unsigned>(g.nnz), Cfg::THREADS, Cfg::SMEM, s>>>(a, b, out, g);
  return check_launch("sddmm_mma_kernel");
}

template <class Cfg>
int sddmm_simt(const float* a, const float* b, void* out, const SddmmArgs& g, cudaStream_t s) {
  auto kern = sddmm_simt_kernel<Cfg>;
  SKC_TRY(prepare(kern, Cfg::SMEM));
  kern<<<static_cast<unsigned>(g.nnz), Cfg::THREADS, Cfg::SMEM, s>>>(a, b, out, g);
  return check_launch("sddmm_simt_kernel");
}

// Tiles per block size. bsr_linear: BM tokens × one block row; sddmm: one block.
using BsrMma16 = MmaCfg<128, 16, 16, 4, 1, 4>;
using BsrMma32 = MmaCfg<128, 32, 32, 4, 1, 4>;
using BsrMma64 = MmaCfg<128, 64, 32, 2, 2, 4>;
using BsrSimt16 = SimtCfg<128, 16, 16, 8, 2>;
using BsrSimt32 = SimtCfg<128, 32, 16, 8, 4>;
using BsrSimt64 = SimtCfg<128, 64, 16, 8, 8>;
using SddMma16 = MmaCfg<16, 16, 64, 1, 1, 4>;
using SddMma32 = MmaCfg<32, 32, 64, 2, 2, 4>;
using SddMma64 = MmaCfg<64, 64, 32, 2, 2, 4>;
using SddSimt16 = SimtCfg<16, 16, 16, 2, 2>;
using SddSimt32 = SimtCfg<32, 32, 16, 4, 4>;
using SddSimt64 = SimtCfg<64, 64, 16, 4, 4>;

bool tuned_block(int64_t br, int64_t bc) { return br == bc && (br == 16 || br == 32 || br == 64); }

}  // namespace

const char* bsr_kernel_names() {
  return "bsr_linear: BM=128 tokens x one block row, K loop over kept blocks (bf16 mma.sync 4-stage cp.async, f32 FFMA "
         "2-stage); sddmm: one CTA per kept block; blocks 16/32/64 square tuned, other shapes one thread per output";
}

}  // namespace skc

using namespace skc;

extern "C" {

SK_CUDA_API int sk_cuda_bsr_linear(sk_dtype dt, const void* x, int64_t m, const sk_cuda_bsr* w, const float* bias,
                                   void* y, sk_dtype ydt, int act, sk_cuda_stream s) {
  if (!w || !x || !y || !w->d_values || !w->d_row_ptr || (w->nnz > 0 && !w->d_col_idx))
    return fail(SK_CUDA_EINVAL, "sk_cuda_bsr_linear: null pointer");
  if (m <= 0 || w->rows <= 0 || w->cols <= 0 || w->br <= 0 || w->bc <= 0 || w->nnz < 0 || w->rows % w->br ||
      w->cols % w->bc)
    return fail(SK_CUDA_EINVAL, "sk_cuda_bsr_linear: bad shape");
  if (ydt != SK_F32 && ydt != SK_BF16) return fail(SK_CUDA_EINVAL, "sk_cuda_bsr_linear: y dtype must be f32 or bf16");
  if (w->rows / w->br > 65535 || w->nnz > 0x7fffffff) return fail(SK_CUDA_EINVAL, "sk_cuda_bsr_linear: too many blocks");
  BsrArgs g{m, w->rows, w->cols, w->br, w->bc, w->nnz, w->d_row_ptr, w->d_col_idx, w->d_block_row, bias, act, ydt};
  cudaStream_t st = stream_of(s);
  const bool aligned = (reinterpret_cast<uintptr_t>(x) & 15) == 0 && (reinterpret_cast<uintptr_t>(w->d_values) & 15) == 0;
  if (dt == SK_BF16) {
    auto xb = static_cast<const bf16*>(x);
    auto vb = static_cast<const bf16*>(w->d_values);
    if (tuned_block(w->br, w->bc) && aligned) {
      if (w->br == 16) return linear_mma<BsrMma16>(xb, vb, y, g, st);
      if (w->br == 32) return linear_mma<BsrMma32>(xb, vb, y, g, st);
      return linear_mma<BsrMma64>(xb, vb, y, g, st);
    }
    bsr_linear_generic_kernel<bf16><<<static_cast<unsigned>(ceil_div(m * w->rows, 256)), 256, 0, st>>>(xb, vb, y, g);
    return check_launch("bsr_linear_generic_kernel");
  }
  if (dt == SK_F32) {
    auto xf = static_cast<const float*>(x);
    auto vf = static_cast<const float*>(w->d_values);
    if (tuned_block(w->br, w->bc)) {
      if (w->br == 16) return linear_simt<BsrSimt16>(xf, vf, y, g, st);
      if (w->br == 32) return linear_simt<BsrSimt32>(xf, vf, y, g, st);
      return linear_simt<BsrSimt64>(xf, vf, y, g, st);
    }
    bsr_linear_generic_kernel<float><<<static_cast<unsigned>(ceil_div(m * w->rows, 256)), 256, 0, st>>>(xf, vf, y, g);
    return check_launch("bsr_linear_generic_kernel");
  }
  return fail(SK_CUDA_EINVAL, "sk_cuda_bsr_linear: dtype must be f32 or bf16");
}

SK_CUDA_API int sk_cuda_sddmm(sk_dtype dt, const void* a, const void* b, int64_t k, const sk_cuda_bsr* mask, void* out,
                              sk_dtype odt, sk_cuda_stream s) {
  if (!mask || !a || !b || (mask->nnz > 0 && (!out || !mask->d_col_idx || !mask->d_block_row)))
    return fail(SK_CUDA_EINVAL, "sk_cuda_sddmm: null pointer");
  if (k <= 0 || mask->rows <= 0 || mask->cols <= 0 || mask->br <= 0 || mask->bc <= 0 || mask->nnz < 0 ||
      mask->rows % mask->br || mask->cols % mask->bc)
    return fail(SK_CUDA_EINVAL, "sk_cuda_sddmm: bad shape");
  if (odt != SK_F32 && odt != SK_BF16) return fail(SK_CUDA_EINVAL, "sk_cuda_sddmm: out dtype must be f32 or bf16");
  if (mask->nnz == 0) return SK_CUDA_OK;
  if (mask->nnz > 0x7fffffff) return fail(SK_CUDA_EINVAL, "sk_cuda_sddmm: too many blocks");
  SddmmArgs g{k, mask->br, mask->bc, mask->nnz, mask->rows / mask->br, mask->cols / mask->bc, mask->d_col_idx,
              mask->d_block_row, odt};
  cudaStream_t st = stream_of(s);
  const int64_t total = mask->nnz * mask->br * mask->bc;
  if (dt == SK_BF16) {
    auto ab = static_cast<const bf16*>(a);
    auto bb = static_cast<const bf16*>(b);
    const bool vec = k % 8 == 0 && (reinterpret_cast<uintptr_t>(a) & 15) == 0 && (reinterpret_cast<uintptr_t>(b) & 15) == 0;
    if (tuned_block(mask->br, mask->bc) && vec) {
      if (mask->br == 16) return sddmm_mma<SddMma16, true>(ab, bb, out, g, st);
      if (mask->br == 32) return sddmm_mma<SddMma32, true>(ab, bb, out, g, st);
      return sddmm_mma<SddMma64, true>(ab, bb, out, g, st);
    }
    sddmm_generic_kernel<bf16><<<static_cast<unsigned>(ceil_div(total, 256)), 256, 0, st>>>(ab, bb, out, g);
    return check_launch("sddmm_generic_kernel");
  }
  if (dt == SK_F32) {
    auto af = static_cast<const float*>(a);
    auto bf = static_cast<const float*>(b);
    if (tuned_block(mask->br, mask->bc)) {
      if (mask->br == 16) return sddmm_simt<SddSimt16>(af, bf, out, g, st);
      if (mask->br == 32) return sddmm_simt<SddSimt32>(af, bf, out, g, st);
      return sddmm_simt<SddSimt64>(af, bf, out, g, st);
    }
    sddmm_generic_kernel<float><<<static_cast<unsigned>(ceil_div(total, 256)), 256, 0, st>>>(af, bf, out, g);
    return check_launch("sddmm_generic_kernel");
  }
  return fail(SK_CUDA_EINVAL, "sk_cuda_sddmm: dtype must be f32 or bf16");
}

}  // extern "C"
