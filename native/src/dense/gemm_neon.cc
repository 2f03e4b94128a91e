// Dense GEMM instantiated for the neon variant; this file is compiled with
// that instruction set's flags (see native/sources.json).
#include "gemm_configs.h"
#include "gemm_impl.h"
#include "sparsekit/dense.h"

namespace sparsekit {
namespace {
using G = Gemm<GemmCfg_neon>;
const DenseKernels kKernels = {Isa::kNeon, "f32-gemm-6x16-neon", G::MR, G::NR, &G::pack_w, &G::gemm, &G::grouped_gemm};
}  // namespace

const DenseKernels* dense_kernels_neon() { return &kKernels; }

}  // namespace sparsekit
