// Dispatch and packing for the N:M kernels. Compiled without ISA flags: it
// only chooses among the variants and lays out the packed weight.
//
// The packed layout keeps the compressed form row by row, because both
// forward kernels stream W one row (or a few rows) at a time in column order
// and decode indices in registers: an expanded index array would add bytes to
// the memory-bound decode case and loads to the load-bound prefill case.
// Packing adds what the kernels need and the caller's arrays cannot promise:
//  - rows of values start on 64-byte boundaries (vstride, zero padded), and
//    never a multiple of 4 KB apart (cache set conflicts between rows);
//  - rows of index bits are padded (mstride ≥ bytes + 3) so the kernels read a
//    chunk's B bytes with one 4-byte load and never leave the row;
//  - validation happened once (pack_nm checks every index), so calls with a
//    packed weight do no per-call checking of W;
//  - patterns without a specialised kernel get each value's column as int32
//    instead of bits, so one generic kernel serves every other N:M.
#include <cstring>
#include <new>

#include "nm_patterns.h"
#include "sparsekit/nm.h"
#include "sparsekit/runtime.h"
#include "sparsekit/thread_pool.h"

namespace sparsekit {

const NmKernels* nm_kernels_scalar();
#if defined(__x86_64__)
const NmKernels* nm_kernels_avx2();
const NmKernels* nm_kernels_avx512();
#endif
#if defined(__aarch64__)
const NmKernels* nm_kernels_neon();
#endif

const NmKernels* nm_kernels(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return nm_kernels_scalar();
#if defined(__x86_64__)
    case Isa::kAvx2: return nm_kernels_avx2();
    case Isa::kAvx512: return nm_kernels_avx512();
#endif
#if defined(__aarch64__)
    case Isa::kNeon: return nm_kernels_neon();
#endif
    default: return nullptr;
  }
}

bool nm_is_tuned(int n, int m) {
#define SK_NM_CASE(N_, M_) \
  if (n == N_ && m == M_) return true;
  SPARSEKIT_NM_TUNED_PATTERNS(SK_NM_CASE)
#undef SK_NM_CASE
  return false;
}

int64_t PackedNm::bytes_per_call() const {
  if (tuned) return shape.rows * (kept * 4 + nm_index_bytes_per_row(shape));
  return shape.rows * kept * 8;
}

int64_t PackedNm::bytes_held() const {
  return int64_t(values.size()) * 4 + int64_t(meta.size()) + int64_t(cols.size()) * 4;
}

std::string PackedNm::kernel_name() const {
  std::string isa = isa_name(kernels->isa);
  if (!tuned) return "f32-nm-generic-" + isa;
  return "f32-nm" + std::to_string(shape.n) + ":" + std::to_string(shape.m) + "-" + isa;
}

Status pack_nm(const NmShape& s, const float* values, const uint8_t* indices, Isa isa, std::shared_ptr<PackedNm>* out) {
  Status st = nm_check_shape(s);
  if (!st.ok()) return st;
  const NmKernels* kern = nm_kernels(isa);
  if (!kern || !isa_supported(isa)) return Status::Invalid(std::string("no N:M kernel for ISA ") + isa_name(isa));
  const Status oom = Status::Oom("out of memory packing the N:M weight");
  // Validate a private copy of the indices: the caller's array may change
  // under us (an async call's inputs stay writable from JS), and the kernels
  // trust what was validated.
  const int64_t ib = nm_index_bytes_per_row(s);
  AlignedBuffer<uint8_t> idx;
  if (!idx.resize(size_t(s.rows * ib))) return oom;
  std::memcpy(idx.data(), indices, size_t(s.rows * ib));
  st = nm_validate_indices(s, idx.data());
  if (!st.ok()) return st;
  auto p = std::shared_ptr<PackedNm>(new (std::nothrow) PackedNm());
  if (!p) return oom;
  p->kernels = kern;
  p->shape = s;
  p->tuned = nm_is_tuned(s.n, s.m);
  p->bits = nm_index_bits(s.m);
  p->kept = nm_kept_per_row(s);
  p->vstride = (p->kept + 15) / 16 * 16;
  // Rows a multiple of 4 KB apart would all map to the same cache sets: the
  // tiled kernel reads the same columns of consecutive rows together.
  if ((p->vstride * 4) % 4096 == 0) p->vstride += 16;
  p->mstride = p->tuned ? (ib + 3 + 3) / 4 * 4 : 0;
  if (!p->values.resize_zeroed(size_t(s.rows * p->vstride))) return oom;
  if (p->tuned) {
    if (!p->meta.resize_zeroed(size_t(s.rows * p->mstride))) return oom;
  } else {
    if (!p->cols.resize_zeroed(size_t(s.rows * p->vstride))) return oom;
  }
  PackedNm& w = *p;
  const uint8_t* checked = idx.data();
  const int64_t per = 256;
  ThreadPool::instance().parallel_for((s.rows + per - 1) / per, [&](int64_t t, int) {
    for (int64_t r = t * per; r < s.rows && r < (t + 1) * per; ++r) {
      std::memcpy(w.values.data() + r * w.vstride, values + r * w.kept, size_t(w.kept) * 4);
      const uint8_t* ir = checked + r * ib;
      if (w.tuned) {
        std::memcpy(w.meta.data() + r * w.mstride, ir, size_t(ib));
      } else {
        int32_t* cr = w.cols.data() + r * w.vstride;
        for (int64_t j = 0; j < w.kept; ++j) {
          int64_t bit = j * w.bits;
          unsigned v = ir[bit >> 3];
          if ((bit >> 3) + 1 < ib) v |= unsigned(ir[(bit >> 3) + 1]) << 8;
          cr[j] = int32_t(j / s.n * s.m + ((v >> (bit & 7)) & ((1u << w.bits) - 1)));
        }
      }
    }
  });
  *out = std::move(p);
  return Status::Ok();
}

Status nm_linear_packed(const NmLinearArgs& a, const PackedNm& w) {
  if (a.m < 1) return Status::Range("x must have at least one row");
  if (!w.kernels->linear(w, a.x, a.m, a.bias, a.act, a.y)) return Status::Oom("out of memory for the N:M workspace");
  return Status::Ok();
}

Status nm_linear_transposed_packed(const float* dy, int64_t m, const PackedNm& w, float* dx) {
  if (m < 1) return Status::Range("dy must have at least one row");
  if (!w.kernels->linear_transposed(w, dy, m, dx)) return Status::Oom("out of memory for the N:M workspace");
  return Status::Ok();
}

}  // namespace sparsekit
