// N:M kernels instantiated for the avx512 variant; this file is compiled with
// that instruction set's flags (see native/sources.json).
#include "nm_impl.h"

namespace sparsekit {
namespace {
struct NmCfg_avx512 {
  using V = Avx512Vec;
  // Floats of packed x one column block may hold (its slice stays in L1).
  static constexpr int64_t kL1Floats = 6144;
  // Tiles wider than two vectors (R = 1 or 2 rows, so little W per x load):
  // 40 KB of Zen 5's 48 KB L1 (measured against 6144 there, 2 threads:
  // 1:8 at 128 and 512 tokens 1.2x faster, 2:4 1.04x, grouped 2:4 experts
  // at 128-138 tokens each 1.06-1.10x; at TV <= 2 it was 10-20 % slower).
  static constexpr int64_t kL1FloatsWide = 10240;
};
using D = NmDriver<NmCfg_avx512>;
const NmKernels kKernels = {Isa::kAvx512, "f32-nm-avx512", D::W, &D::linear, &D::linear_transposed, &D::grouped_linear,
                            &D::grouped_gated_down};
}  // namespace

const NmKernels* nm_kernels_avx512() { return &kKernels; }

}  // namespace sparsekit
