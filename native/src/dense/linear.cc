// Dispatch and workspace management for the dense linear layer. Compiled
// without ISA flags: it only chooses among the variants.
#include <new>

#include "sparsekit/dense.h"
#include "sparsekit/runtime.h"
#include "sparsekit/thread_pool.h"

namespace sparsekit {

const DenseKernels* dense_kernels_scalar();
#if defined(__x86_64__)
const DenseKernels* dense_kernels_avx2();
const DenseKernels* dense_kernels_avx512();
#endif
#if defined(__aarch64__)
const DenseKernels* dense_kernels_neon();
#endif

const DenseKernels* dense_kernels(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return dense_kernels_scalar();
#if defined(__x86_64__)
    case Isa::kAvx2: return dense_kernels_avx2();
    case Isa::kAvx512: return dense_kernels_avx512();
#endif
#if defined(__aarch64__)
    case Isa::kNeon: return dense_kernels_neon();
#endif
    default: return nullptr;
  }
}

int64_t packed_w_floats(const DenseKernels& kern, int64_t n, int64_t k) {
  return (n + kern.nr - 1) / kern.nr * kern.nr * k;
}

int64_t packed_x_floats(const DenseKernels& kern, int64_t m, int64_t k) {
  return (m + kern.mr - 1) / kern.mr * kern.mr * k;
}

float* thread_workspace(size_t floats, int slot) {
  thread_local AlignedBuffer<float> buffers[4];
  if (slot < 0 || slot >= 4) return nullptr;
  if (!buffers[slot].resize(floats == 0 ? 1 : floats)) return nullptr;
  return buffers[slot].data();
}

static void pack_w_parallel(const DenseKernels& kern, const float* w, int64_t n, int64_t k, float* out) {
  int64_t panels = (n + kern.nr - 1) / kern.nr;
  int64_t chunk = 4;
  ThreadPool::instance().parallel_for((panels + chunk - 1) / chunk, [&](int64_t t, int) {
    int64_t p0 = t * chunk, p1 = p0 + chunk < panels ? p0 + chunk : panels;
    kern.pack_w(w, n, k, p0, p1, out);
  });
}

Status pack_linear(const float* w, int64_t n, int64_t k, Isa isa, std::shared_ptr<PackedLinear>* out) {
  const DenseKernels* kern = dense_kernels(isa);
  if (!kern || !isa_supported(isa)) return Status::Invalid(std::string("no dense kernel for ISA ") + isa_name(isa));
  auto p = std::shared_ptr<PackedLinear>(new (std::nothrow) PackedLinear());
  if (!p) return Status::Oom("out of memory packing W");
  p->kernels = kern;
  p->n = n;
  p->k = k;
  if (!p->data.resize(static_cast<size_t>(packed_w_floats(*kern, n, k))))
    return Status::Oom("out of memory packing W");
  pack_w_parallel(*kern, w, n, k, p->data.data());
  *out = std::move(p);
  return Status::Ok();
}

Status linear_packed(const LinearArgs& a, const PackedLinear& w) {
  if (a.k != w.k) return Status::Range("x width does not match the packed weight's in");
  const DenseKernels& kern = *w.kernels;
  float* ws = thread_workspace(static_cast<size_t>(packed_x_floats(kern, a.m, a.k)), 0);
  if (!ws) return Status::Oom("out of memory for the packed-x workspace");
  kern.gemm(a.x, a.m, a.k, w.data.data(), w.n, a.bias, a.act, a.y, ws);
  return Status::Ok();
}

Status linear(const LinearArgs& a, const float* w, int64_t n, Isa isa) {
  const DenseKernels* kern = dense_kernels(isa);
  if (!kern || !isa_supported(isa)) return Status::Invalid(std::string("no dense kernel for ISA ") + isa_name(isa));
  float* wp = thread_workspace(static_cast<size_t>(packed_w_floats(*kern, n, a.k)), 1);
  float* ws = thread_workspace(static_cast<size_t>(packed_x_floats(*kern, a.m, a.k)), 0);
  if (!wp || !ws) return Status::Oom("out of memory for the packing workspace");
  pack_w_parallel(*kern, w, n, a.k, wp);
  kern->gemm(a.x, a.m, a.k, wp, n, a.bias, a.act, a.y, ws);
  return Status::Ok();
}

}  // namespace sparsekit
