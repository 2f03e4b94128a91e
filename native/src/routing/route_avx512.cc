// Routing row kernels instantiated for the avx512 variant; this file is compiled
// with that instruction set's flags (see native/sources.json).
#include "route_impl.h"
#include "sparsekit/routing.h"

namespace sparsekit {
namespace {
struct RouteCfg_avx512 {
  // Partial sums per reduction: one vector's worth of lanes.
  static constexpr int LANES = 16;
};
using R = RouteImpl<RouteCfg_avx512>;
const RoutingKernels kKernels = {Isa::kAvx512, "f32-route-avx512f", &R::forward_block, &R::score_block,
                                 &R::loss_grad_block, &R::backward_block};
}  // namespace

const RoutingKernels* routing_kernels_avx512() { return &kKernels; }

}  // namespace sparsekit
