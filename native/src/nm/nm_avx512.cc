// N:M kernels instantiated for the avx512 variant; this file is compiled with
// that instruction set's flags (see native/sources.json).
#include "nm_impl.h"

namespace sparsekit {
namespace {
struct NmCfg_avx512 {
  using V = Avx512Vec;
  // Floats of packed x one column block may hold (its slice stays in L1).
  static constexpr int64_t kL1Floats = 6144;
};
using D = NmDriver<NmCfg_avx512>;
const NmKernels kKernels = {Isa::kAvx512, "f32-nm-avx512", D::W, &D::linear, &D::linear_transposed, &D::grouped_linear};
}  // namespace

const NmKernels* nm_kernels_avx512() { return &kKernels; }

}  // namespace sparsekit
