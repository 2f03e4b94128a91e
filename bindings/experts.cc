// Grouped expert GEMMs and the permute / combine around them.
#include <cstring>
#include <memory>
#include <vector>

#include "args.h"
#include "async.h"
#include "families.h"
#include "handle.h"
#include "plan_args.h"
#include "sparsekit/experts.h"
#include "sparsekit/runtime.h"

namespace sparsekit {
namespace binding {

namespace {

using PackedExpertsHandle = Handle<PackedExperts>;

void DescribePackedExperts(Napi::Env env, Napi::Object& o, const PackedExperts& p) {
  PackedExpertsHandle::Prop(o, "numExperts", Napi::Number::New(env, double(p.experts)));
  PackedExpertsHandle::Prop(o, "outFeatures", Napi::Number::New(env, double(p.n)));
  PackedExpertsHandle::Prop(o, "inFeatures", Napi::Number::New(env, double(p.k)));
  PackedExpertsHandle::Prop(o, "gated", Napi::Boolean::New(env, p.gated));
  PackedExpertsHandle::Prop(o, "isa", Napi::String::New(env, isa_name(p.kernels->isa)));
  PackedExpertsHandle::Prop(o, "bytes", Napi::Number::New(env, double(p.stride * p.experts * (p.gated ? 2 : 1)) * 4));
}

Napi::Value WrapExperts(Napi::Env env, std::shared_ptr<PackedExperts> p) {
  return PackedExpertsHandle::Wrap(env, std::move(p), DescribePackedExperts);
}

const char* kStack = "[experts, out, in]";

// prepackExperts(W [E, out, in], options?: { bias: [E, out] })
Napi::Value PrepackExperts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "prepackExperts";
  auto w = get_tensor<float>(env, fn, "W", info[0], 3, kStack);
  int64_t e = w.dim(0), n = w.dim(1), k = w.dim(2);
  Napi::Value bv = get_option(env, fn, info.Length() > 1 ? info[1] : env.Undefined(), "bias");
  const float* bias = nullptr;
  if (!is_absent(bv)) {
    auto b = get_tensor<float>(env, fn, "bias", bv, 2, "[experts, out]");
    if (b.dim(0) != e || b.dim(1) != n)
      throw_range(env, fn, "bias.shape " + shape_str(b.shape) + " must be [experts, out] = " + shape_str({e, n}));
    bias = b.data();
  }
  std::shared_ptr<PackedExperts> p;
  throw_if_error(env, fn, pack_experts(w.data(), nullptr, n * k, e, n, k, bias, active_isa(), &p));
  return WrapExperts(env, std::move(p));
}

// prepackGatedExperts(W1 [E, ffn, d], W3 [E, ffn, d]) or
// prepackGatedExperts(W13 [E, 2·ffn, d]) (rows 0..ffn−1 gate, ffn..2ffn−1 up).
Napi::Value PrepackGatedExperts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "prepackGatedExperts";
  std::shared_ptr<PackedExperts> p;
  if (info.Length() < 2 || is_absent(info[1])) {
    auto w = get_tensor<float>(env, fn, "gateUp", info[0], 3, "[experts, 2·ffn, d]");
    int64_t e = w.dim(0), n2 = w.dim(1), k = w.dim(2);
    if (n2 % 2 != 0)
      throw_range(env, fn, "gateUp.shape[1] must be even (gate rows then up rows), got " + std::to_string(n2));
    int64_t n = n2 / 2;
    throw_if_error(env, fn, pack_experts(w.data(), w.data() + n * k, n2 * k, e, n, k, nullptr, active_isa(), &p));
  } else {
    auto w1 = get_tensor<float>(env, fn, "gate", info[0], 3, "[experts, ffn, d]");
    auto w3 = get_tensor<float>(env, fn, "up", info[1], 3, "[experts, ffn, d]");
    if (w1.shape != w3.shape)
      throw_range(env, fn, "up.shape " + shape_str(w3.shape) + " must equal gate.shape " + shape_str(w1.shape));
    int64_t e = w1.dim(0), n = w1.dim(1), k = w1.dim(2);
    throw_if_error(env, fn, pack_experts(w1.data(), w3.data(), n * k, e, n, k, nullptr, active_isa(), &p));
  }
  return WrapExperts(env, std::move(p));
}

// groupedLinear(xs [rows, in], expertOffsets, experts, options?: { activation, out })
Napi::Value GroupedLinearImpl(const Napi::CallbackInfo& info, bool async, bool gated) {
  Napi::Env env = info.Env();
  std::string fn = gated ? "groupedGatedLinear" : "groupedLinear";
  if (async) fn += "Async";
  auto xs = get_tensor<float>(env, fn, "xs", info[0], 2, "[rows, in]");
  auto w = PackedExpertsHandle::Get(env, fn, gated ? "gateUp" : "experts", info[2]);
  if (w->gated != gated)
    throw_type(env, fn, gated ? "gateUp must be gated experts from prepackGatedExperts()"
                              : "experts are gated: use groupedGatedLinear() (or prepackExperts() for a plain stack)");
  if (xs.dim(1) != w->k)
    throw_range(env, fn, "xs.shape[1] = " + std::to_string(xs.dim(1)) + " must equal the experts' in = " + std::to_string(w->k));
  auto off = get_offsets(env, fn, info[1], w->experts, xs.dim(0), "xs.shape[0]");
  Napi::Value opts = info.Length() > 3 ? info[3] : env.Undefined();
  Activation act = get_activation(env, fn, get_option(env, fn, opts, "activation"));
  if (gated && is_absent(get_option(env, fn, opts, "activation"))) act = Activation::kSilu;
  int64_t rows = xs.dim(0), n = w->n;
  auto out = get_out(env, fn, get_option(env, fn, opts, "out"), rows * n, "y [rows, out]");
  const float* xd = xs.data();
  const int32_t* od = off.data;
  float* yd = out.data;
  auto kernel = [xd, od, w, act, yd]() { return grouped_linear(xd, od, *w, act, yd); };
  auto result = [rows, n](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    return make_tensor(e, kept[0], {rows, n});
  };
  return run_op(env, async, fn, kernel, result, {out.value, xs.array.value, off.value, info[2]});
}

Napi::Value GroupedLinear(const Napi::CallbackInfo& i) { return GroupedLinearImpl(i, false, false); }
Napi::Value GroupedLinearAsync(const Napi::CallbackInfo& i) { return GroupedLinearImpl(i, true, false); }
Napi::Value GroupedGatedLinear(const Napi::CallbackInfo& i) { return GroupedLinearImpl(i, false, true); }
Napi::Value GroupedGatedLinearAsync(const Napi::CallbackInfo& i) { return GroupedLinearImpl(i, true, true); }

// permute(x [tokens, d], sortedSlots, k, options?: { out })
Napi::Value PermuteImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = async ? "permuteAsync" : "permute";
  auto x = get_tensor<float>(env, fn, "x", info[0], 2, "[tokens, d]");
  int64_t k = get_k(env, fn, info[2]);
  auto slots = get_slots(env, fn, info[1], x.dim(0) * k);
  int64_t rows = slots.length, d = x.dim(1);
  auto out = get_out(env, fn, get_option(env, fn, info.Length() > 3 ? info[3] : env.Undefined(), "out"), rows * d,
                     "xs [sortedSlots.length, d]");
  const float* xd = x.data();
  const int32_t* sd = slots.data;
  float* od = out.data;
  auto kernel = [=]() {
    permute_rows(xd, d, sd, rows, k, od);
    return Status::Ok();
  };
  auto result = [rows, d](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    return make_tensor(e, kept[0], {rows, d});
  };
  return run_op(env, async, fn, kernel, result, {out.value, x.array.value, slots.value});
}
Napi::Value Permute(const Napi::CallbackInfo& i) { return PermuteImpl(i, false); }
Napi::Value PermuteAsync(const Napi::CallbackInfo& i) { return PermuteImpl(i, true); }

// combine(ys [rows, d], sortedSlots, weights [tokens·k], k, options?: { out })
Napi::Value CombineImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = async ? "combineAsync" : "combine";
  auto ys = get_tensor<float>(env, fn, "ys", info[0], 2, "[rows, d]");
  auto weights = get_array<float>(env, fn, "weights", info[2]);
  int64_t k = get_k(env, fn, info[3]);
  if (weights.length == 0 || weights.length % k != 0)
    throw_range(env, fn, "weights must have tokens·k entries (a positive multiple of k = " + std::to_string(k) + "), got " +
                             std::to_string(weights.length));
  int64_t tokens = weights.length / k;
  auto slots = get_slots(env, fn, info[1], tokens * k);
  if (slots.length != ys.dim(0))
    throw_range(env, fn, "ys.shape[0] = " + std::to_string(ys.dim(0)) + " must equal sortedSlots.length = " +
                             std::to_string(slots.length));
  int64_t d = ys.dim(1);
  auto out = get_out(env, fn, get_option(env, fn, info.Length() > 4 ? info[4] : env.Undefined(), "out"), tokens * d,
                     "y [tokens, d]");
  auto row_of_slot = std::make_shared<std::vector<int32_t>>(static_cast<size_t>(tokens * k));
  invert_slots(slots.data, slots.length, tokens * k, row_of_slot->data());
  const float* yd = ys.data();
  const float* wd = weights.data;
  float* od = out.data;
  auto kernel = [=]() {
    combine_rows(yd, d, row_of_slot->data(), wd, tokens, k, od);
    return Status::Ok();
  };
  auto result = [tokens, d](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    return make_tensor(e, kept[0], {tokens, d});
  };
  return run_op(env, async, fn, kernel, result, {out.value, ys.array.value, slots.value, weights.value});
}
Napi::Value Combine(const Napi::CallbackInfo& i) { return CombineImpl(i, false); }
Napi::Value CombineAsync(const Napi::CallbackInfo& i) { return CombineImpl(i, true); }

// glu(h [rows, 2·n], options?: { activation, out }) → act(h[:, :n]) ⊙ h[:, n:]
Napi::Value GluImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = async ? "gluAsync" : "glu";
  auto h = get_tensor<float>(env, fn, "h", info[0], 2, "[rows, 2·n]");
  if (h.dim(1) % 2 != 0) throw_range(env, fn, "h.shape[1] must be even (gate columns then up columns), got " + std::to_string(h.dim(1)));
  Napi::Value opts = info.Length() > 1 ? info[1] : env.Undefined();
  Napi::Value av = get_option(env, fn, opts, "activation");
  Activation act = is_absent(av) ? Activation::kSilu : get_activation(env, fn, av);
  int64_t rows = h.dim(0), n = h.dim(1) / 2;
  auto out = get_out(env, fn, get_option(env, fn, opts, "out"), rows * n, "y [rows, n]");
  const float* hd = h.data();
  float* od = out.data;
  auto kernel = [=]() {
    glu_rows(hd, rows, n, act, od);
    return Status::Ok();
  };
  auto result = [rows, n](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    return make_tensor(e, kept[0], {rows, n});
  };
  return run_op(env, async, fn, kernel, result, {out.value, h.array.value});
}
Napi::Value Glu(const Napi::CallbackInfo& i) { return GluImpl(i, false); }
Napi::Value GluAsync(const Napi::CallbackInfo& i) { return GluImpl(i, true); }

// Scratch for expertsForward, per calling thread, grown once and reused: the
// steady state allocates nothing.
struct ForwardWorkspace {
  AlignedBuffer<float> h, ys;
  std::vector<int32_t> row_of_slot, token_of_row;
};

// expertsForward(x [T, d], plan { sortedSlots, expertOffsets, weights, k }, gateUp, down, options?: { activation, out })
Napi::Value ExpertsForwardImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = async ? "expertsForwardAsync" : "expertsForward";
  auto x = get_tensor<float>(env, fn, "x", info[0], 2, "[tokens, d]");
  if (!info[1].IsObject() || info[1].IsArray() || info[1].IsTypedArray())
    throw_type(env, fn, "plan must be a routing plan { sortedSlots, expertOffsets, weights, k }, got " + describe(info[1]));
  Napi::Object plan = info[1].As<Napi::Object>();
  auto gate_up = PackedExpertsHandle::Get(env, fn, "gateUp", info[2]);
  auto down = PackedExpertsHandle::Get(env, fn, "down", info[3]);
  if (!gate_up->gated) throw_type(env, fn, "gateUp must be gated experts from prepackGatedExperts()");
  if (down->gated) throw_type(env, fn, "down must be a plain expert stack from prepackExperts()");
  int64_t tokens = x.dim(0), d = x.dim(1), ffn = gate_up->n, experts = gate_up->experts;
  if (gate_up->k != d)
    throw_range(env, fn, "gateUp expects d = " + std::to_string(gate_up->k) + " but x.shape[1] = " + std::to_string(d));
  if (down->experts != experts || down->k != ffn || down->n != d)
    throw_range(env, fn, "down must be [experts, d, ffn] = " + shape_str({experts, d, ffn}) + ", got " +
                             shape_str({down->experts, down->n, down->k}));
  int64_t k = get_k(env, fn, plan.Get("k"), "plan.k");
  auto weights = get_array<float>(env, fn, "plan.weights", plan.Get("weights"));
  if (weights.length != tokens * k)
    throw_range(env, fn, "plan.weights has " + std::to_string(weights.length) + " entries but tokens·k = " +
                             std::to_string(tokens * k) + " (is the plan for a different batch?)");
  auto slots = get_slots(env, fn, plan.Get("sortedSlots"), tokens * k);
  auto off = get_offsets(env, fn, plan.Get("expertOffsets"), experts, slots.length, "sortedSlots.length");
  Napi::Value opts = info.Length() > 4 ? info[4] : env.Undefined();
  Activation act = Activation::kSilu;
  Napi::Value av = get_option(env, fn, opts, "activation");
  if (!is_absent(av)) act = get_activation(env, fn, av);
  auto out = get_out(env, fn, get_option(env, fn, opts, "out"), tokens * d, "y [tokens, d]");
  const float* xd = x.data();
  const int32_t* sd = slots.data;
  const int32_t* od = off.data;
  const float* wd = weights.data;
  float* yd = out.data;
  int64_t rows = slots.length;
  auto kernel = [=]() -> Status {
    thread_local ForwardWorkspace ws;
    if (!ws.h.resize(static_cast<size_t>(rows * ffn + 1)) || !ws.ys.resize(static_cast<size_t>(rows * d + 1)))
      return Status::Oom("out of memory for expertsForward's workspace");
    ws.row_of_slot.resize(static_cast<size_t>(tokens * k));
    ws.token_of_row.resize(static_cast<size_t>(rows));
    invert_slots(sd, rows, tokens * k, ws.row_of_slot.data());
    // The permute is fused into the gate/up product's packing: its panels are
    // read straight from x's token rows (no [rows, d] copy of x).
    for (int64_t r = 0; r < rows; ++r) ws.token_of_row[r] = static_cast<int32_t>(sd[r] / k);
    Status s = grouped_linear(xd, od, *gate_up, act, ws.h.data(), ws.token_of_row.data());
    if (!s.ok()) return s;
    s = grouped_linear(ws.h.data(), od, *down, Activation::kNone, ws.ys.data());
    if (!s.ok()) return s;
    combine_rows(ws.ys.data(), d, ws.row_of_slot.data(), wd, tokens, k, yd);
    return Status::Ok();
  };
  auto result = [tokens, d](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    return make_tensor(e, kept[0], {tokens, d});
  };
  return run_op(env, async, fn, kernel, result,
                {out.value, x.array.value, slots.value, off.value, weights.value, info[2], info[3]});
}
Napi::Value ExpertsForward(const Napi::CallbackInfo& i) { return ExpertsForwardImpl(i, false); }
Napi::Value ExpertsForwardAsync(const Napi::CallbackInfo& i) { return ExpertsForwardImpl(i, true); }

}  // namespace

void RegisterExperts(Napi::Env env, Napi::Object exports) {
  PackedExpertsHandle::Init(env, exports, "PackedExperts", "use prepackExperts() or prepackGatedExperts() to make packed experts");
  exports.Set("prepackExperts", Napi::Function::New(env, PrepackExperts, "prepackExperts"));
  exports.Set("prepackGatedExperts", Napi::Function::New(env, PrepackGatedExperts, "prepackGatedExperts"));
  exports.Set("groupedLinear", Napi::Function::New(env, GroupedLinear, "groupedLinear"));
  exports.Set("groupedLinearAsync", Napi::Function::New(env, GroupedLinearAsync, "groupedLinearAsync"));
  exports.Set("groupedGatedLinear", Napi::Function::New(env, GroupedGatedLinear, "groupedGatedLinear"));
  exports.Set("groupedGatedLinearAsync", Napi::Function::New(env, GroupedGatedLinearAsync, "groupedGatedLinearAsync"));
  exports.Set("permute", Napi::Function::New(env, Permute, "permute"));
  exports.Set("permuteAsync", Napi::Function::New(env, PermuteAsync, "permuteAsync"));
  exports.Set("combine", Napi::Function::New(env, Combine, "combine"));
  exports.Set("combineAsync", Napi::Function::New(env, CombineAsync, "combineAsync"));
  exports.Set("glu", Napi::Function::New(env, Glu, "glu"));
  exports.Set("gluAsync", Napi::Function::New(env, GluAsync, "gluAsync"));
  exports.Set("expertsForward", Napi::Function::New(env, ExpertsForward, "expertsForward"));
  exports.Set("expertsForwardAsync", Napi::Function::New(env, ExpertsForwardAsync, "expertsForwardAsync"));
}

}  // namespace binding
}  // namespace sparsekit
