// N:M kernels instantiated for the neon variant; this file is compiled with
// that instruction set's flags (see native/sources.json).
#include "nm_impl.h"

namespace sparsekit {
namespace {
struct NmCfg_neon {
  using V = NeonVec;
  // Floats of packed x one column block may hold (its slice stays in L1).
  static constexpr int64_t kL1Floats = 6144;
  // The same for tiles wider than two vectors.
  static constexpr int64_t kL1FloatsWide = 6144;
};
using D = NmDriver<NmCfg_neon>;
const NmKernels kKernels = {Isa::kNeon, "f32-nm-neon", D::W, &D::linear, &D::linear_transposed, &D::grouped_linear,
                            &D::grouped_gated_down};
}  // namespace

const NmKernels* nm_kernels_neon() { return &kKernels; }

}  // namespace sparsekit
