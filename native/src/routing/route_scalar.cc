// Routing row kernels instantiated for the scalar variant; this file is compiled
// with that instruction set's flags (see native/sources.json).
#include "route_impl.h"
#include "sparsekit/routing.h"

namespace sparsekit {
namespace {
struct RouteCfg_scalar {
  // 16-byte vectors: SSE2 on baseline x86-64, NEON-sized elsewhere (wider
  // vector-extension values would change the psABI of the baseline build).
  static constexpr int LANES = 4;
};
using R = RouteImpl<RouteCfg_scalar>;
const RoutingKernels kKernels = {Isa::kScalar, "f32-route-scalar", &R::forward_block, &R::score_block,
                                 &R::loss_grad_block, &R::backward_block};
}  // namespace

const RoutingKernels* routing_kernels_scalar() { return &kKernels; }

}  // namespace sparsekit
