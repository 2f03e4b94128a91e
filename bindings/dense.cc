// linear, linearAsync, prepackLinear and the PackedLinear handle.
#include <memory>

#include "args.h"
#include "async.h"
#include "families.h"
#include "handle.h"
#include "sparsekit/dense.h"
#include "sparsekit/runtime.h"

namespace sparsekit {
namespace binding {

namespace {

using PackedLinearHandle = Handle<PackedLinear>;

void DescribePackedLinear(Napi::Env env, Napi::Object& o, const PackedLinear& p) {
  PackedLinearHandle::Prop(o, "outFeatures", Napi::Number::New(env, double(p.n)));
  PackedLinearHandle::Prop(o, "inFeatures", Napi::Number::New(env, double(p.k)));
  PackedLinearHandle::Prop(o, "isa", Napi::String::New(env, isa_name(p.kernels->isa)));
  PackedLinearHandle::Prop(o, "kernel", Napi::String::New(env, p.kernels->name));
  PackedLinearHandle::Prop(o, "bytes", Napi::Number::New(env, double(packed_w_floats(*p.kernels, p.n, p.k)) * 4));
}

const char* kWShape = "[out, in]";

Napi::Value PrepackLinear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "prepackLinear";
  auto w = get_tensor<float>(env, fn, "W", info[0], 2, kWShape);
  std::shared_ptr<PackedLinear> packed;
  throw_if_error(env, fn, pack_linear(w.data(), w.dim(0), w.dim(1), active_isa(), &packed));
  return PackedLinearHandle::Wrap(env, std::move(packed), DescribePackedLinear);
}

// linear(x, W | PackedLinear, options?) with options { bias, activation, out }.
Napi::Value LinearImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = async ? "linearAsync" : "linear";
  auto x = get_tensor<float>(env, fn, "x", info[0], 2, "[tokens, in]");
  int64_t m = x.dim(0), k = x.dim(1);

  std::shared_ptr<PackedLinear> packed;
  TensorArg<float> w;
  int64_t n;
  if (PackedLinearHandle::Is(info[1])) {
    packed = PackedLinearHandle::Get(env, fn, "W", info[1]);
    n = packed->n;
    if (packed->k != k)
      throw_range(env, fn, "W was packed for in = " + std::to_string(packed->k) + " but x has in = " + std::to_string(k) +
                               " (x.shape[1])");
  } else {
    if (info[1].IsObject() && !info[1].IsTypedArray() && !info[1].IsArray() && !info[1].As<Napi::Object>().Has("data"))
      throw_type(env, fn, "W must be a tensor { data: Float32Array, shape: [out, in] } or a PackedLinear from prepackLinear(), got an object without data");
    w = get_tensor<float>(env, fn, "W", info[1], 2, kWShape);
    n = w.dim(0);
    if (w.dim(1) != k)
      throw_range(env, fn, "W.shape[1] (in = " + std::to_string(w.dim(1)) + ") must equal x.shape[1] (in = " +
                               std::to_string(k) + ")");
  }
  Napi::Value opts = info.Length() > 2 ? info[2] : env.Undefined();
  Napi::Value bias_v = get_option(env, fn, opts, "bias");
  ArrayArg<float> bias;
  if (!is_absent(bias_v)) {
    if (bias_v.IsObject() && !bias_v.IsTypedArray() && bias_v.As<Napi::Object>().Has("data")) {
      auto bt = get_tensor<float>(env, fn, "bias", bias_v, 1, "[out]");
      bias = bt.array;
    } else {
      bias = get_array<float>(env, fn, "bias", bias_v);
    }
    if (bias.length != n)
      throw_range(env, fn, "bias has " + std::to_string(bias.length) + " elements but W has out = " + std::to_string(n));
  }
  Activation act = get_activation(env, fn, get_option(env, fn, opts, "activation"));
  ArrayArg<float> out = get_out(env, fn, get_option(env, fn, opts, "out"), m * n, "y [tokens, out]");

  LinearArgs a;
  a.x = x.data();
  a.m = m;
  a.k = k;
  a.bias = bias.data;
  a.act = act;
  a.y = out.data;
  Isa isa = active_isa();
  const float* wdata = w.data();
  auto kernel = [a, packed, wdata, n, isa]() -> Status {
    if (packed) return linear_packed(a, *packed);
    return linear(a, wdata, n, isa);
  };
  auto result = [m, n](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    return make_tensor(e, kept[0], {m, n});
  };
  return run_op(env, async, fn, kernel, result, {out.value, x.array.value, w.array.value, bias.value, info[1]});
}

Napi::Value Linear(const Napi::CallbackInfo& info) { return LinearImpl(info, false); }
Napi::Value LinearAsync(const Napi::CallbackInfo& info) { return LinearImpl(info, true); }

}  // namespace

void RegisterDense(Napi::Env env, Napi::Object exports) {
  PackedLinearHandle::Init(env, exports, "PackedLinear", "use prepackLinear(W) to make a packed weight");
  exports.Set("prepackLinear", Napi::Function::New(env, PrepackLinear, "prepackLinear"));
  exports.Set("linear", Napi::Function::New(env, Linear, "linear"));
  exports.Set("linearAsync", Napi::Function::New(env, LinearAsync, "linearAsync"));
}

}  // namespace binding
}  // namespace sparsekit
