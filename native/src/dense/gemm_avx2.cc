// Dense GEMM instantiated for the avx2 variant; this file is compiled with
// that instruction set's flags (see native/sources.json).
#include "gemm_configs.h"
#include "gemm_impl.h"
#include "sparsekit/dense.h"

namespace sparsekit {
namespace {
using G = Gemm<GemmCfg_avx2>;
const DenseKernels kKernels = {Isa::kAvx2, "f32-gemm-6x16-avx2-fma", G::MR, G::NR, &G::pack_w, &G::gemm, &G::grouped_gemm};
}  // namespace

const DenseKernels* dense_kernels_avx2() { return &kKernels; }

}  // namespace sparsekit
