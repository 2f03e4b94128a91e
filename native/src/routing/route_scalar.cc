// Routing row kernels instantiated for the scalar variant; this file is compiled
// with that instruction set's flags (see native/sources.json).
#include "route_impl.h"
#include "sparsekit/routing.h"

namespace sparsekit {
namespace {
struct RouteCfg_scalar {
  // Partial sums per reduction. Baseline x86-64 (SSE2) vectorises 8 as two
  // 4-wide vectors.
  static constexpr int LANES = 8;
};
using R = RouteImpl<RouteCfg_scalar>;
const RoutingKernels kKernels = {Isa::kScalar, "f32-route-scalar", &R::forward_block, &R::score_block,
                                 &R::loss_grad_block, &R::backward_block};
}  // namespace

const RoutingKernels* routing_kernels_scalar() { return &kKernels; }

}  // namespace sparsekit
