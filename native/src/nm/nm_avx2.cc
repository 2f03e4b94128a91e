// N:M kernels instantiated for the avx2 variant; this file is compiled with
// that instruction set's flags (see native/sources.json).
#include "nm_impl.h"

namespace sparsekit {
namespace {
struct NmCfg_avx2 {
  using V = Avx2Vec;
  // Floats of packed x one column block may hold (its slice stays in L1).
  static constexpr int64_t kL1Floats = 6144;
  // The same for tiles wider than two vectors.
  static constexpr int64_t kL1FloatsWide = 6144;
};
using D = NmDriver<NmCfg_avx2>;
const NmKernels kKernels = {Isa::kAvx2, "f32-nm-avx2", D::W, &D::linear, &D::linear_transposed, &D::grouped_linear,
                            &D::grouped_gated_down};
}  // namespace

const NmKernels* nm_kernels_avx2() { return &kKernels; }

}  // namespace sparsekit
