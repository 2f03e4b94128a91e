// Block-sparse kernels instantiated for the scalar variant; this file is
// compiled with that instruction set's flags (see native/sources.json).
#include "../dense/gemm_configs.h"
#include "bsr_impl.h"
#include "sparsekit/bsr.h"

namespace sparsekit {
namespace {
struct BsrCfg_scalar {
  using V = ScalarVec;
  using Dense = GemmCfg_scalar;
  static constexpr int kRmax = 4;
  static constexpr int kNrv[3] = {4, 1, 8};
  static constexpr int kNrvRows[3] = {4, 4, 2};
  static constexpr int64_t kPanelBytes = 256 * 1024;
};
using B = BsrImpl<BsrCfg_scalar>;
const BsrKernels kKernels = {Isa::kScalar, "f32-bsr-4x4-scalar", B::RMAX, &B::linear, &B::sddmm, &B::grouped_linear};
}  // namespace

const BsrKernels* bsr_kernels_scalar() { return &kKernels; }

}  // namespace sparsekit
