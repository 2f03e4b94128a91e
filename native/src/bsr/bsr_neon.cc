// Block-sparse kernels instantiated for the neon variant; this file is
// compiled with that instruction set's flags (see native/sources.json).
#include "../dense/gemm_configs.h"
#include "bsr_impl.h"
#include "sparsekit/bsr.h"

namespace sparsekit {
namespace {
struct BsrCfg_neon {
  using V = NeonVec;
  using Dense = GemmCfg_neon;
  static constexpr int kRmax = 6;
  static constexpr int kNrv[3] = {4, 2, 8};
  static constexpr int kNrvRows[3] = {6, 6, 2};
  static constexpr int64_t kPanelBytes = 384 * 1024;
};
using B = BsrImpl<BsrCfg_neon>;
const BsrKernels kKernels = {Isa::kNeon, "f32-bsr-6x16-neon", B::RMAX, &B::linear, &B::sddmm, &B::grouped_linear};
}  // namespace

const BsrKernels* bsr_kernels_neon() { return &kKernels; }

}  // namespace sparsekit
