// The grouped sparse-experts entry points (nmGroupedLinear, bsrGroupedLinear):
//   f(xs [rows, in], expertOffsets, experts: Packed*[], options?: { gated, activation, out, down })
//   plain: y [rows, out] = act(xs_e · W_eᵀ) on each expert's rows
//   gated: each W_e stacks gate over up rows ([2·ffn, in]); y [rows, ffn] = act(gate) ⊙ up
//   gated with down (formats that pass a chain kernel): down: Packed*[] of
//     [d, ffn] each, y [rows, d] = down_e(act(gate) ⊙ up), both in one call
// One argument parser for both formats; the format supplies its handle type,
// a shape description (experts must all describe the same) and the kernel.
#pragma once
#include <napi.h>

#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "args.h"
#include "async.h"
#include "handle.h"
#include "plan_args.h"

namespace sparsekit {
namespace binding {

template <class P>
struct SparseExpertShape {
  int64_t rows = 0, cols = 0;
  std::string text;  // e.g. "[64, 32] 2:4"; experts must match it exactly
};

// An array of E packed experts of one shape and instruction set (what: the
// argument's name, e.g. "experts"); throws a named error otherwise.
template <class P, class ShapeOf>
std::vector<std::shared_ptr<P>> get_expert_stack(Napi::Env env, const std::string& fn, const std::string& what,
                                                 const std::string& packed_what, Napi::Value value, ShapeOf shape_of,
                                                 SparseExpertShape<P>* s0) {
  using H = Handle<P>;
  if (!value.IsArray()) throw_type(env, fn, what + " must be an array of " + packed_what + ", got " + describe(value));
  Napi::Array arr = value.As<Napi::Array>();
  const int64_t E = arr.Length();
  if (E < 1) throw_range(env, fn, what + " must hold at least one " + packed_what);
  std::vector<std::shared_ptr<P>> ws(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    const std::string name = what + "[" + std::to_string(e) + "]";
    Napi::Value v = arr.Get(static_cast<uint32_t>(e));
    if (!H::Is(v)) throw_type(env, fn, name + " must be a " + packed_what + ", got " + describe(v));
    ws[e] = H::Get(env, fn, name, v);
    SparseExpertShape<P> s = shape_of(*ws[e]);
    if (e == 0) {
      *s0 = s;
      continue;
    }
    if (s.text != s0->text)
      throw_range(env, fn, name + " is " + s.text + " but " + what + "[0] is " + s0->text + ": every expert must have the same shape");
    if (ws[e]->kernels != ws[0]->kernels)
      throw_type(env, fn, name + " was packed for another instruction set than " + what + "[0]");
  }
  return ws;
}

// shape_of(const P&) → SparseExpertShape; gate_error(const P&) → "" or why the
// matrix cannot be split into gate and up halves; kernel(const P* const*, E,
// offsets, xs, gate_rows, act, y) → Status; chain(gate_up, down, E, offsets,
// xs, act, y) → Status, or nullptr where the format has no options.down.
template <class P, class ShapeOf, class GateError, class Kernel, class Chain = std::nullptr_t>
Napi::Value grouped_sparse_linear(const Napi::CallbackInfo& info, const std::string& fn, const std::string& packed_what,
                                  ShapeOf shape_of, GateError gate_error, Kernel kernel, bool async, Chain chain = nullptr) {
  Napi::Env env = info.Env();
  auto xs = get_tensor<float>(env, fn, "xs", info[0], 2, "[rows, in]");
  SparseExpertShape<P> s0;
  std::vector<std::shared_ptr<P>> ws = get_expert_stack<P>(env, fn, "experts", packed_what, info[2], shape_of, &s0);
  const int64_t E = static_cast<int64_t>(ws.size());
  if (xs.dim(1) != s0.cols)
    throw_range(env, fn, "xs.shape[1] = " + std::to_string(xs.dim(1)) + " must equal the experts' in = " + std::to_string(s0.cols));
  auto off = get_offsets(env, fn, info[1], E, xs.dim(0), "xs.shape[0]");
  Napi::Value opts = info.Length() > 3 ? info[3] : env.Undefined();
  Napi::Value gated_v = get_option(env, fn, opts, "gated");
  bool gated = false;
  if (!is_absent(gated_v)) {
    if (!gated_v.IsBoolean()) throw_type(env, fn, "options.gated must be a boolean, got " + describe(gated_v));
    gated = gated_v.As<Napi::Boolean>().Value();
  }
  if (gated) {
    if (s0.rows % 2 != 0)
      throw_range(env, fn, "gated experts stack gate and up rows, so out must be even, got " + std::to_string(s0.rows));
    std::string why = gate_error(*ws[0]);
    if (!why.empty()) throw_range(env, fn, why);
  }
  Activation act = get_activation(env, fn, get_option(env, fn, opts, "activation"));
  if (gated && is_absent(get_option(env, fn, opts, "activation"))) act = Activation::kSilu;
  int64_t n = gated ? s0.rows / 2 : s0.rows;
  const int64_t rows = xs.dim(0), gate_rows = gated ? n : 0;
  // options.down: the down projection chained after the gated product.
  std::vector<std::shared_ptr<P>> dn;
  Napi::Value down_v = get_option(env, fn, opts, "down");
  if (!is_absent(down_v)) {
    if constexpr (std::is_null_pointer_v<Chain>) {
      throw_type(env, fn, "options.down is not supported for these experts");
    } else {
      if (!gated) throw_type(env, fn, "options.down needs options.gated: true");
      SparseExpertShape<P> d0;
      dn = get_expert_stack<P>(env, fn, "options.down", packed_what, down_v, shape_of, &d0);
      if (static_cast<int64_t>(dn.size()) != E)
        throw_range(env, fn, "options.down has " + std::to_string(dn.size()) + " experts but experts has " + std::to_string(E));
      if (d0.cols != n)
        throw_range(env, fn, "options.down experts are " + d0.text + " but their in must be the gated width " + std::to_string(n));
      if (dn[0]->kernels != ws[0]->kernels)
        throw_type(env, fn, "options.down was packed for another instruction set than experts");
      n = d0.rows;
    }
  }
  const bool chained = !dn.empty();
  auto out = get_out(env, fn, get_option(env, fn, opts, "out"), rows * n,
                     chained ? "y [rows, down out]" : gated ? "y [rows, out / 2]" : "y [rows, out]");
  // The kernel reads its own copy of the offsets (validated above): the
  // caller's array may change while an async call runs.
  std::vector<int32_t> offsets(off.data, off.data + E + 1);
  const float* xd = xs.data();
  float* yd = out.data;
  auto run = [ws, dn, offsets, E, xd, gate_rows, act, yd, kernel, chain]() {
    std::vector<const P*> wp(ws.size()), dp(dn.size());
    for (size_t e = 0; e < ws.size(); ++e) wp[e] = ws[e].get();
    for (size_t e = 0; e < dn.size(); ++e) dp[e] = dn[e].get();
    if constexpr (!std::is_null_pointer_v<Chain>)
      if (!dp.empty()) return chain(wp.data(), dp.data(), E, offsets.data(), xd, act, yd);
    return kernel(wp.data(), E, offsets.data(), xd, gate_rows, act, yd);
  };
  auto result = [rows, n](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    return make_tensor(e, kept[0], {rows, n});
  };
  return run_op(env, async, fn, run, result, {out.value, xs.array.value});
}

}  // namespace binding
}  // namespace sparsekit
