// N:M kernels instantiated for the scalar variant; this file is compiled with
// that instruction set's flags (see native/sources.json).
#include "nm_impl.h"

namespace sparsekit {
namespace {
struct NmCfg_scalar {
  using V = ScalarVec;
  // Floats of packed x one column block may hold (its slice stays in L1).
  static constexpr int64_t kL1Floats = 6144;
  // The same for tiles wider than two vectors.
  static constexpr int64_t kL1FloatsWide = 6144;
};
using D = NmDriver<NmCfg_scalar>;
const NmKernels kKernels = {Isa::kScalar, "f32-nm-scalar", D::W, &D::linear, &D::linear_transposed, &D::grouped_linear,
                            &D::grouped_gated_down};
}  // namespace

const NmKernels* nm_kernels_scalar() { return &kKernels; }

}  // namespace sparsekit
