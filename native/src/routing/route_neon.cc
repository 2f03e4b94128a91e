// Routing row kernels instantiated for the neon variant; this file is compiled
// with that instruction set's flags (see native/sources.json).
#include "route_impl.h"
#include "sparsekit/routing.h"

namespace sparsekit {
namespace {
struct RouteCfg_neon {
  // Partial sums per reduction: one vector's worth of lanes.
  static constexpr int LANES = 4;
};
using R = RouteImpl<RouteCfg_neon>;
const RoutingKernels kKernels = {Isa::kNeon, "f32-route-neon", &R::forward_block, &R::score_block,
                                 &R::loss_grad_block, &R::backward_block};
}  // namespace

const RoutingKernels* routing_kernels_neon() { return &kKernels; }

}  // namespace sparsekit
