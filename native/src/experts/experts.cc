// Permute / combine and the grouped expert GEMM's packing and dispatch.
// Permute and combine move rows; they are bandwidth-bound copies and
// multiply-adds that the compiler vectorises well at the baseline ISA.
#include "sparsekit/experts.h"

#include <cstring>
#include <new>

#include "../common/simd.h"
#include "sparsekit/runtime.h"
#include "sparsekit/thread_pool.h"

namespace sparsekit {

Status pack_experts(const float* w, const float* w3, int64_t w_expert_stride, int64_t experts, int64_t n, int64_t k,
                    const float* bias, Isa isa, std::shared_ptr<PackedExperts>* out) {
  const DenseKernels* kern = dense_kernels(isa);
  if (!kern || !isa_supported(isa)) return Status::Invalid(std::string("no dense kernel for ISA ") + isa_name(isa));
  auto p = std::shared_ptr<PackedExperts>(new (std::nothrow) PackedExperts());
  if (!p) return Status::Oom("out of memory packing experts");
  p->kernels = kern;
  p->experts = experts;
  p->n = n;
  p->k = k;
  p->gated = w3 != nullptr;
  p->stride = packed_w_floats(*kern, n, k);
  size_t total = static_cast<size_t>(p->stride * experts);
  if (!p->w1.resize(total) || (w3 && !p->w3.resize(total))) return Status::Oom("out of memory packing experts");
  int64_t panels = (n + kern->nr - 1) / kern->nr;
  int64_t chunk = 4, per_expert = (panels + chunk - 1) / chunk;
  int mats = w3 ? 2 : 1;
  ThreadPool::instance().parallel_for(experts * per_expert * mats, [&](int64_t t, int) {
    int64_t which = t / (experts * per_expert);
    int64_t rest = t % (experts * per_expert);
    int64_t e = rest / per_expert, c = rest % per_expert;
    int64_t p0 = c * chunk, p1 = p0 + chunk < panels ? p0 + chunk : panels;
    const float* src = (which == 0 ? w : w3) + e * w_expert_stride;
    float* dst = (which == 0 ? p->w1.data() : p->w3.data()) + e * p->stride;
    kern->pack_w(src, n, k, p0, p1, dst);
  });
  if (bias) {
    if (!p->bias.resize(static_cast<size_t>(experts * n))) return Status::Oom("out of memory packing experts");
    std::memcpy(p->bias.data(), bias, sizeof(float) * experts * n);
    p->has_bias = true;
  }
  *out = std::move(p);
  return Status::Ok();
}

Status grouped_linear(const float* xs, const int32_t* offsets, const PackedExperts& w, Activation act, float* y,
                      const int32_t* src_rows) {
  const DenseKernels& kern = *w.kernels;
  int64_t panels = 0;
  for (int64_t e = 0; e < w.experts; ++e) panels += (offsets[e + 1] - offsets[e] + kern.mr - 1) / kern.mr;
  float* ws = thread_workspace(static_cast<size_t>(panels * kern.mr * w.k), 0);
  if (!ws) return Status::Oom("out of memory for the packed-x workspace");
  kern.grouped_gemm(xs, src_rows, offsets, w.experts, w.k, w.w1.data(), w.gated ? w.w3.data() : nullptr, w.stride, w.n,
                    w.has_bias ? w.bias.data() : nullptr, act, y, ws);
  return Status::Ok();
}

void permute_rows(const float* x, int64_t d, const int32_t* sorted_slots, int64_t n_rows, int64_t k, float* xs) {
  int64_t chunk = 16;
  ThreadPool::instance().parallel_for((n_rows + chunk - 1) / chunk, [&](int64_t t, int) {
    int64_t r1 = (t + 1) * chunk < n_rows ? (t + 1) * chunk : n_rows;
    for (int64_t r = t * chunk; r < r1; ++r)
      std::memcpy(xs + r * d, x + static_cast<int64_t>(sorted_slots[r] / k) * d, sizeof(float) * d);
  });
}

void combine_rows(const float* ys, int64_t d, const int32_t* row_of_slot, const float* weights, int64_t tokens,
                  int64_t k, float* y) {
  int64_t chunk = 8;
  ThreadPool::instance().parallel_for((tokens + chunk - 1) / chunk, [&](int64_t t, int) {
    int64_t t1 = (t + 1) * chunk < tokens ? (t + 1) * chunk : tokens;
    for (int64_t tok = t * chunk; tok < t1; ++tok) {
      float* out = y + tok * d;
      for (int64_t i = 0; i < d; ++i) out[i] = 0.f;
      for (int64_t j = 0; j < k; ++j) {
        int32_t r = row_of_slot[tok * k + j];
        if (r < 0) continue;
        const float wgt = weights[tok * k + j];
        const float* src = ys + static_cast<int64_t>(r) * d;
        for (int64_t i = 0; i < d; ++i) out[i] += wgt * src[i];
      }
    }
  });
}

void glu_rows(const float* h, int64_t rows, int64_t n, Activation act, float* y) {
  int64_t chunk = 8;
  ThreadPool::instance().parallel_for((rows + chunk - 1) / chunk, [&](int64_t t, int) {
    int64_t r1 = (t + 1) * chunk < rows ? (t + 1) * chunk : rows;
    for (int64_t r = t * chunk; r < r1; ++r) {
      float* out = y + r * n;
      std::memcpy(out, h + r * 2 * n, sizeof(float) * n);
      sk_gate_row(out, h + r * 2 * n + n, n, act);
    }
  });
}

void invert_slots(const int32_t* sorted_slots, int64_t n_rows, int64_t n_slots, int32_t* row_of_slot) {
  for (int64_t s = 0; s < n_slots; ++s) row_of_slot[s] = -1;
  for (int64_t i = 0; i < n_rows; ++i) row_of_slot[sorted_slots[i]] = static_cast<int32_t>(i);
}

}  // namespace sparsekit
