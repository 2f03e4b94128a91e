// Dense GEMM instantiated for the neon variant; this file is compiled with
// that instruction set's flags (see native/sources.json).
#include "gemm_impl.h"
#include "sparsekit/dense.h"

namespace sparsekit {
namespace {
struct GemmCfg_neon {
  using V = NeonVec;
  static constexpr int MR = 6;
  static constexpr int NRV = 4;
  static constexpr int KC = 256;
  static constexpr int MC_MAX = 240;
  static constexpr int NC_PANELS_MAX = 32;
};
using G = Gemm<GemmCfg_neon>;
const DenseKernels kKernels = {Isa::kNeon, "f32-gemm-6x16-neon", G::MR, G::NR, &G::pack_w, &G::gemm, &G::grouped_gemm};
}  // namespace

const DenseKernels* dense_kernels_neon() { return &kKernels; }

}  // namespace sparsekit
