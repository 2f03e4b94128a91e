// Dispatch and packing for the N:M kernels. Compiled without ISA flags: it
// only chooses among the variants and lays out the packed weight.
//
// The packed layout keeps the compressed encoding (values and B-bit indices,
// decoded in registers by the kernels: an expanded index array would add
// bytes to the memory-bound decode case and loads to the load-bound prefill
// case) but changes the order, for the way the kernels walk W:
//  - tuned patterns: panels of 4 rows whose chunks of 8 values interleave
//    (sparsekit/nm.h, PackedNm). The tiled kernel works on up to 4 rows of a
//    panel and a block of columns at a time; in the row-major form that is 8
//    short runs (values and index bytes of 4 rows) 8 KB or more apart, too
//    short for the hardware prefetcher, and measured to cost the tile about
//    half its speed against the same tile on cached data; interleaved, it is
//    one contiguous run (prefetched ahead by the tile itself), and every row
//    of the panel sits at a fixed offset from one values pointer and one
//    index pointer, which keeps the tile's integer registers free. The
//    row-streaming kernel (1–4 tokens) reads a panel's rows together.
//  - index bytes of a chunk are padded so the kernels read them with one
//    4-byte load; panels start on 64-byte boundaries and never a multiple of
//    4 KB apart (cache set conflicts);
//  - validation happened once (pack_nm checks every index of a private copy),
//    so calls with a packed weight do no per-call checking of W;
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
  // What a call streams from memory: the values and index bits as stored
  // (tuned: a partial last chunk is read whole), or values and int32 columns.
  if (tuned) {
    const int64_t full = kept / 8, rest = kept % 8;
    return shape.rows * (full * (32 + bits) + (rest ? 4 * rest + (rest * bits + 7) / 8 : 0));
  }
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
  p->chunks = (p->kept + 7) / 8;
  const int64_t PR = kNmPanelRows, panels = (s.rows + PR - 1) / PR;
  if (p->tuned) {
    p->vstride = p->chunks * PR * 8;
    p->mstride = (p->chunks * PR * p->bits + 3 + 3) / 4 * 4;  // the last word read may run 3 bytes on
  } else {
    p->vstride = (p->kept + 15) / 16 * 16;
  }
  // Rows (panels) a multiple of 4 KB apart would all map to the same cache sets.
  if ((p->vstride * 4) % 4096 == 0) p->vstride += 16;
  const int64_t units = p->tuned ? panels : s.rows;
  if (!p->values.resize_zeroed(size_t(units * p->vstride))) return oom;
  if (p->tuned) {
    if (!p->meta.resize_zeroed(size_t(panels * p->mstride))) return oom;
  } else {
    if (!p->cols.resize_zeroed(size_t(s.rows * p->vstride))) return oom;
  }
  PackedNm& w = *p;
  const uint8_t* checked = idx.data();
  const int64_t per = 256;
  ThreadPool::instance().parallel_for((s.rows + per - 1) / per, [&](int64_t t, int) {
    for (int64_t r = t * per; r < s.rows && r < (t + 1) * per; ++r) {
      const float* vr = values + r * w.kept;
      const uint8_t* ir = checked + r * ib;
      if (w.tuned) {
        float* vp = w.values.data() + (r / PR) * w.vstride + (r % PR) * 8;
        uint8_t* mp = w.meta.data() + (r / PR) * w.mstride + (r % PR) * w.bits;
        for (int64_t c = 0; c < w.chunks; ++c) {
          const int64_t n = w.kept - c * 8 < 8 ? w.kept - c * 8 : 8;
          std::memcpy(vp + c * PR * 8, vr + c * 8, size_t(n) * 4);
          // 8 indices of B bits are exactly B bytes of the row's bit string
          const int64_t bytes = ib - c * w.bits < w.bits ? ib - c * w.bits : w.bits;
          std::memcpy(mp + c * PR * w.bits, ir + c * w.bits, size_t(bytes));
        }
      } else {
        std::memcpy(w.values.data() + r * w.vstride, vr, size_t(w.kept) * 4);
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

// Every expert of a stack has expert 0's shape and instruction set.
static Status check_stack(const PackedNm* const* w, int64_t experts) {
  if (experts < 1) return Status::Range("at least one expert is needed");
  const PackedNm& w0 = *w[0];
  for (int64_t e = 1; e < experts; ++e) {
    const NmShape& s = w[e]->shape;
    if (s.rows != w0.shape.rows || s.cols != w0.shape.cols || s.n != w0.shape.n || s.m != w0.shape.m)
      return Status::Range("expert " + std::to_string(e) + " is [" + std::to_string(s.rows) + ", " + std::to_string(s.cols) +
                           "] " + std::to_string(s.n) + ":" + std::to_string(s.m) + " but expert 0 is [" +
                           std::to_string(w0.shape.rows) + ", " + std::to_string(w0.shape.cols) + "] " +
                           std::to_string(w0.shape.n) + ":" + std::to_string(w0.shape.m));
    if (w[e]->kernels != w0.kernels) return Status::Invalid("experts were packed for different instruction sets");
  }
  return Status::Ok();
}

static Status check_offsets(const int32_t* offsets, int64_t experts) {
  if (offsets[0] != 0) return Status::Range("offsets must start at 0");
  for (int64_t e = 0; e < experts; ++e)
    if (offsets[e + 1] < offsets[e]) return Status::Range("offsets must not decrease");
  return Status::Ok();
}

Status nm_grouped_linear(const PackedNm* const* w, int64_t experts, const int32_t* offsets, const float* xs,
                         int64_t gate_rows, Activation act, float* y) {
  Status st = check_stack(w, experts);
  if (!st.ok()) return st;
  const PackedNm& w0 = *w[0];
  if (gate_rows < 0 || (gate_rows > 0 && 2 * gate_rows != w0.shape.rows))
    return Status::Range("a gated call needs each expert to stack gate and up rows: out = 2 * gate_rows");
  st = check_offsets(offsets, experts);
  if (!st.ok()) return st;
  if (!w0.kernels->grouped_linear(w, experts, offsets, xs, gate_rows, act, y))
    return Status::Oom("out of memory for the N:M workspace");
  return Status::Ok();
}

Status nm_grouped_gated_down(const PackedNm* const* gate_up, const PackedNm* const* down, int64_t experts,
                             const int32_t* offsets, const float* xs, Activation act, float* y) {
  Status st = check_stack(gate_up, experts);
  if (st.ok()) st = check_stack(down, experts);
  if (st.ok()) st = check_offsets(offsets, experts);
  if (!st.ok()) return st;
  const NmShape &g = gate_up[0]->shape, &d = down[0]->shape;
  if (g.rows % 2 != 0 || d.cols != g.rows / 2)
    return Status::Range("gate/up experts [" + std::to_string(g.rows) + ", " + std::to_string(g.cols) + "] and down experts [" +
                         std::to_string(d.rows) + ", " + std::to_string(d.cols) + "] do not form [2·ffn, in] / [out, ffn]");
  if (gate_up[0]->kernels != down[0]->kernels)
    return Status::Invalid("gate/up and down experts were packed for different instruction sets");
  if (!gate_up[0]->kernels->grouped_gated_down(gate_up, down, experts, offsets, xs, act, y))
    return Status::Oom("out of memory for the N:M workspace");
  return Status::Ok();
}

}  // namespace sparsekit
