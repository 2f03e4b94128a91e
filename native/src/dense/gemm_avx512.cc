// Dense GEMM instantiated for the avx512 variant; this file is compiled with
// that instruction set's flags (see native/sources.json).
#include "gemm_configs.h"
#include "gemm_impl.h"
#include "sparsekit/dense.h"

namespace sparsekit {
namespace {
using G = Gemm<GemmCfg_avx512>;
const DenseKernels kKernels = {Isa::kAvx512, "f32-gemm-8x32-avx512f", G::MR, G::NR, &G::pack_w, &G::gemm, &G::grouped_gemm};
}  // namespace

const DenseKernels* dense_kernels_avx512() { return &kKernels; }

}  // namespace sparsekit
