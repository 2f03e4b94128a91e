// Dense GEMM instantiated for the scalar variant; this file is compiled with
// that instruction set's flags (see native/sources.json).
#include "gemm_configs.h"
#include "gemm_impl.h"
#include "sparsekit/dense.h"

namespace sparsekit {
namespace {
using G = Gemm<GemmCfg_scalar>;
const DenseKernels kKernels = {Isa::kScalar, "f32-gemm-4x4-scalar", G::MR, G::NR, &G::pack_w, &G::gemm, &G::grouped_gemm};
}  // namespace

const DenseKernels* dense_kernels_scalar() { return &kKernels; }

}  // namespace sparsekit
