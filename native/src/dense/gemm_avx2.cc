// Dense GEMM instantiated for the avx2 variant; this file is compiled with
// that instruction set's flags (see native/sources.json).
#include "gemm_impl.h"
#include "sparsekit/dense.h"

namespace sparsekit {
namespace {
struct GemmCfg_avx2 {
  using V = Avx2Vec;
  static constexpr int MR = 6;
  static constexpr int NRV = 2;
  static constexpr int KC = 256;
  static constexpr int MC_MAX = 240;
  static constexpr int NC_PANELS_MAX = 32;
};
using G = Gemm<GemmCfg_avx2>;
const DenseKernels kKernels = {Isa::kAvx2, "f32-gemm-6x16-avx2-fma", G::MR, G::NR, &G::pack_w, &G::gemm, &G::grouped_gemm};
}  // namespace

const DenseKernels* dense_kernels_avx2() { return &kKernels; }

}  // namespace sparsekit
