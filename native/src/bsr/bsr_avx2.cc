// Block-sparse kernels instantiated for the avx2 variant; this file is
// compiled with that instruction set's flags (see native/sources.json).
#include "../dense/gemm_configs.h"
#include "bsr_impl.h"
#include "sparsekit/bsr.h"

namespace sparsekit {
namespace {
struct BsrCfg_avx2 {
  using V = Avx2Vec;
  using Dense = GemmCfg_avx2;
  static constexpr int kRmax = 6;
  static constexpr int kNrv[3] = {2, 1, 6};
  static constexpr int kNrvRows[3] = {6, 6, 1};
  static constexpr int64_t kPanelBytes = 384 * 1024;
};
using B = BsrImpl<BsrCfg_avx2>;
const BsrKernels kKernels = {Isa::kAvx2, "f32-bsr-6x16-avx2-fma", B::RMAX, &B::linear, &B::sddmm, &B::grouped_linear};
}  // namespace

const BsrKernels* bsr_kernels_avx2() { return &kKernels; }

}  // namespace sparsekit
