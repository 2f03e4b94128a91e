// Block-sparse kernels instantiated for the avx512 variant; this file is
// compiled with that instruction set's flags (see native/sources.json).
#include "../dense/gemm_configs.h"
#include "bsr_impl.h"
#include "sparsekit/bsr.h"

namespace sparsekit {
namespace {
struct BsrCfg_avx512 {
  using V = Avx512Vec;
  using Dense = GemmCfg_avx512;
  static constexpr int kRmax = 8;
  static constexpr int kNrv[3] = {1, 2, 4};
  static constexpr int kNrvRows[3] = {8, 8, 6};
  static constexpr int64_t kPanelBytes = 768 * 1024;
};
using B = BsrImpl<BsrCfg_avx512>;
const BsrKernels kKernels = {Isa::kAvx512, "f32-bsr-8x16-avx512f", B::RMAX, &B::linear, &B::sddmm, &B::grouped_linear};
}  // namespace

const BsrKernels* bsr_kernels_avx512() { return &kKernels; }

}  // namespace sparsekit
