// N:M sparsity: format operations, prepackNM and the PackedNMLinear handle,
// nmLinear / nmLinearTransposed (sync and async), CUTLASS 2:4 interchange.
//
// An N:M matrix crosses this boundary as a plain object
//   { rows, cols, n, m, values: Float32Array [rows·kept], indices: Uint8Array [rows·ib] }
// (lib/nm.ts's NMSparseMatrix has exactly these properties). Every field is
// checked, and the indices are validated (each < m, increasing per group,
// padding bits 0) before any kernel reads them.
#include <cmath>
#include <cstring>
#include <memory>

#include "args.h"
#include "async.h"
#include "families.h"
#include "handle.h"
#include "nm_args.h"
#include "grouped_sparse.h"
#include "sparsekit/nm.h"
#include "sparsekit/runtime.h"

namespace sparsekit {
namespace binding {

namespace {

using PackedNmHandle = Handle<PackedNm>;

void DescribePackedNm(Napi::Env env, Napi::Object& o, const PackedNm& p) {
  PackedNmHandle::Prop(o, "outFeatures", Napi::Number::New(env, double(p.shape.rows)));
  PackedNmHandle::Prop(o, "inFeatures", Napi::Number::New(env, double(p.shape.cols)));
  PackedNmHandle::Prop(o, "n", Napi::Number::New(env, p.shape.n));
  PackedNmHandle::Prop(o, "m", Napi::Number::New(env, p.shape.m));
  PackedNmHandle::Prop(o, "isa", Napi::String::New(env, isa_name(p.kernels->isa)));
  PackedNmHandle::Prop(o, "kernel", Napi::String::New(env, p.kernel_name()));
  PackedNmHandle::Prop(o, "bytes", Napi::Number::New(env, double(p.bytes_held())));
  PackedNmHandle::Prop(o, "bytesPerCall", Napi::Number::New(env, double(p.bytes_per_call())));
}

// A Float32 tensor of rank 1..4 (shape taken from the value).
TensorArg<float> get_any_tensor(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v) {
  size_t rank = 2;
  if (v.IsObject() && !v.IsTypedArray() && !v.IsArray()) {
    Napi::Value s = v.As<Napi::Object>().Get("shape");
    if (s.IsArray()) rank = s.As<Napi::Array>().Length();
  }
  if (rank < 1 || rank > 4) throw_range(env, fn, name + ".shape must have 1 to 4 dimensions, got " + std::to_string(rank));
  return get_tensor<float>(env, fn, name, v, rank, "[...]");
}

Napi::Object make_parts(Napi::Env env, Napi::Float32Array values, Napi::Uint8Array indices) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("values", values);
  o.Set("indices", indices);
  return o;
}

double get_number(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v) {
  if (!v.IsNumber()) throw_type(env, fn, name + " must be a number, got " + describe(v));
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) throw_range(env, fn, name + " must be finite, got " + std::to_string(d));
  return d;
}

HalfType get_half_type(Napi::Env env, const std::string& fn, const Napi::Value& v) {
  if (is_absent(v)) return HalfType::kFloat16;
  if (!v.IsString()) throw_type(env, fn, "dtype must be 'float16' or 'bfloat16', got " + describe(v));
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s == "float16") return HalfType::kFloat16;
  if (s == "bfloat16") return HalfType::kBFloat16;
  throw_range(env, fn, "dtype must be 'float16' or 'bfloat16', got '" + s + "'");
}

// ---- format operations ------------------------------------------------------

// nmPrune(W [rows, cols], n, m) → { values, indices }
Napi::Value NmPrune(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "NMSparseMatrix.prune";
  auto w = get_tensor<float>(env, fn, "W", info[0], 2, "[rows, cols]");
  NmShape s{w.dim(0), w.dim(1), 0, 0};
  get_pattern(env, fn, "", info[1], info[2], &s.n, &s.m);
  Status st = nm_check_shape(s);
  if (!st.ok()) throw_range(env, fn, "W: " + st.message);
  auto values = Napi::Float32Array::New(env, size_t(s.rows * nm_kept_per_row(s)));
  auto indices = Napi::Uint8Array::New(env, size_t(s.rows * nm_index_bytes_per_row(s)));
  nm_prune(w.data(), s, values.Data(), indices.Data());
  return make_parts(env, values, indices);
}

// nmFromMask(W, mask, n, m) → { values, indices }
Napi::Value NmFromMask(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "NMSparseMatrix.fromMask";
  auto w = get_tensor<float>(env, fn, "W", info[0], 2, "[rows, cols]");
  auto mask = get_tensor<float>(env, fn, "mask", info[1], 2, "[rows, cols]");
  if (mask.shape != w.shape)
    throw_range(env, fn, "mask.shape " + shape_str(mask.shape) + " must equal W.shape " + shape_str(w.shape));
  NmShape s{w.dim(0), w.dim(1), 0, 0};
  get_pattern(env, fn, "", info[2], info[3], &s.n, &s.m);
  Status st = nm_check_shape(s);
  if (!st.ok()) throw_range(env, fn, "W: " + st.message);
  auto values = Napi::Float32Array::New(env, size_t(s.rows * nm_kept_per_row(s)));
  auto indices = Napi::Uint8Array::New(env, size_t(s.rows * nm_index_bytes_per_row(s)));
  throw_if_error(env, fn, nm_from_mask(w.data(), mask.data(), s, values.Data(), indices.Data()));
  return make_parts(env, values, indices);
}

// nmValidate(W) → undefined, or throws naming what is wrong
Napi::Value NmValidate(const Napi::CallbackInfo& info) {
  get_nm(info.Env(), "NMSparseMatrix.fromParts", "parts", info[0], true);
  return info.Env().Undefined();
}

// nmToDense(W) → tensor [rows, cols]
Napi::Value NmToDense(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NmArg a = get_nm(env, "NMSparseMatrix.toDense", "W", info[0], true);
  auto out = Napi::Float32Array::New(env, size_t(a.shape.rows * a.shape.cols));
  nm_to_dense(a.shape, a.values.data, a.indices.data, out.Data());
  return make_tensor(env, out, {a.shape.rows, a.shape.cols});
}

// nmMaskOf(W) → 0/1 tensor [rows, cols] of the stored slots
Napi::Value NmMaskOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NmArg a = get_nm(env, "NMSparseMatrix.mask", "W", info[0], true);
  auto out = Napi::Float32Array::New(env, size_t(a.shape.rows * a.shape.cols));
  nm_mask(a.shape, a.indices.data, out.Data());
  return make_tensor(env, out, {a.shape.rows, a.shape.cols});
}

// nmPruneMask(W, n, m) → 0/1 tensor
Napi::Value NmPruneMask(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "nmMask";
  auto w = get_tensor<float>(env, fn, "W", info[0], 2, "[rows, cols]");
  NmShape s{w.dim(0), w.dim(1), 0, 0};
  get_pattern(env, fn, "", info[1], info[2], &s.n, &s.m);
  Status st = nm_check_shape(s);
  if (!st.ok()) throw_range(env, fn, "W: " + st.message);
  auto out = Napi::Float32Array::New(env, size_t(s.rows * s.cols));
  nm_prune_mask(w.data(), s, out.Data());
  return make_tensor(env, out, {s.rows, s.cols});
}

// nmIsNM(A [rows, cols], n, m) → boolean (false when cols % m != 0)
Napi::Value NmIsNM(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "isNM";
  auto a = get_tensor<float>(env, fn, "mask", info[0], 2, "[rows, cols]");
  int n, m;
  get_pattern(env, fn, "", info[1], info[2], &n, &m);
  return Napi::Boolean::New(env, nm_is_nm(a.data(), a.dim(0), a.dim(1), n, m));
}

// srsteGrad(grad, W, mask, lambda, options?: { out }) → tensor
Napi::Value SrsteGrad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "srsteGrad";
  auto g = get_any_tensor(env, fn, "grad", info[0]);
  auto w = get_any_tensor(env, fn, "W", info[1]);
  auto mask = get_any_tensor(env, fn, "mask", info[2]);
  if (w.shape != g.shape) throw_range(env, fn, "W.shape " + shape_str(w.shape) + " must equal grad.shape " + shape_str(g.shape));
  if (mask.shape != g.shape)
    throw_range(env, fn, "mask.shape " + shape_str(mask.shape) + " must equal grad.shape " + shape_str(g.shape));
  double lambda = get_number(env, fn, "lambda", info[3]);
  Napi::Value opts = info.Length() > 4 ? info[4] : env.Undefined();
  int64_t count = g.array.length;
  ArrayArg<float> out = get_out(env, fn, get_option(env, fn, opts, "out"), count, "grad-shaped output");
  nm_srste_grad(g.data(), w.data(), mask.data(), count, float(lambda), out.data);
  return make_tensor(env, out.value, g.shape);
}

// nmRandom(rows, cols, n, m, seed, scale) → { values, indices }
Napi::Value NmRandom(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "NMSparseMatrix.random";
  NmShape s;
  s.rows = get_dim(env, fn, "rows", info[0]);
  s.cols = get_dim(env, fn, "cols", info[1]);
  get_pattern(env, fn, "", info[2], info[3], &s.n, &s.m);
  Status st = nm_check_shape(s);
  if (!st.ok()) throw_range(env, fn, st.message);
  if (double(s.rows) * double(s.cols) > double(kMaxDim))
    throw_range(env, fn, "rows·cols must be ≤ 2^31−1, got " + std::to_string(s.rows) + "·" + std::to_string(s.cols));
  double seed = get_number(env, fn, "seed", info[4]);
  if (seed < 0 || std::floor(seed) != seed || seed > 9007199254740991.0)
    throw_range(env, fn, "seed must be an integer ≥ 0, got " + std::to_string(seed));
  double scale = get_number(env, fn, "scale", info[5]);
  if (!(scale > 0)) throw_range(env, fn, "scale must be > 0, got " + std::to_string(scale));
  auto values = Napi::Float32Array::New(env, size_t(s.rows * nm_kept_per_row(s)));
  auto indices = Napi::Uint8Array::New(env, size_t(s.rows * nm_index_bytes_per_row(s)));
  nm_random(s, uint64_t(seed), float(scale), values.Data(), indices.Data());
  return make_parts(env, values, indices);
}

// nmToCutlass24(W, dtype?) → { values: Uint16Array [rows, cols/2], meta: Int16Array [rows, cols/16] }
Napi::Value NmToCutlass24(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "NMSparseMatrix.toCutlass24";
  NmArg a = get_nm(env, fn, "W", info[0], true);
  HalfType t = get_half_type(env, fn, info.Length() > 1 ? info[1] : env.Undefined());
  if (a.shape.n != 2 || a.shape.m != 4)
    throw_range(env, fn, "only 2:4 matrices have a CUTLASS layout, this one is " + std::to_string(a.shape.n) + ":" +
                             std::to_string(a.shape.m));
  if (a.shape.rows % 32 != 0 || a.shape.cols % 32 != 0)
    throw_range(env, fn, "the CUTLASS 2:4 layout needs rows % 32 == 0 and cols % 32 == 0, got [" +
                             std::to_string(a.shape.rows) + ", " + std::to_string(a.shape.cols) + "]");
  auto values = Napi::Uint16Array::New(env, size_t(a.shape.rows * a.shape.cols / 2));
  auto meta = Napi::Int16Array::New(env, size_t(a.shape.rows * a.shape.cols / 16));
  throw_if_error(env, fn, nm_to_cutlass24(a.shape, a.values.data, a.indices.data, t, values.Data(), meta.Data()));
  Napi::Object o = Napi::Object::New(env);
  o.Set("values", values);
  o.Set("meta", meta);
  return o;
}

// nmFromCutlass24(values: Uint16Array, meta: Int16Array | Uint16Array, rows, cols, dtype?) → { values, indices }
Napi::Value NmFromCutlass24(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "NMSparseMatrix.fromCutlass24";
  auto vals = get_array<uint16_t>(env, fn, "values", info[0]);
  const int16_t* meta = nullptr;
  int64_t meta_len = 0;
  if (info[1].IsTypedArray() && info[1].As<Napi::TypedArray>().TypedArrayType() == napi_uint16_array) {
    auto u = get_array<uint16_t>(env, fn, "meta", info[1]);
    meta = reinterpret_cast<const int16_t*>(u.data);
    meta_len = u.length;
  } else {
    if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int16_array)
      throw_type(env, fn, "meta must be an Int16Array (or Uint16Array), got " + describe(info[1]));
    auto sgn = get_array<int16_t>(env, fn, "meta", info[1]);
    meta = sgn.data;
    meta_len = sgn.length;
  }
  int64_t rows = get_dim(env, fn, "rows", info[2]);
  int64_t cols = get_dim(env, fn, "cols", info[3]);
  HalfType t = get_half_type(env, fn, info.Length() > 4 ? info[4] : env.Undefined());
  if (rows % 32 != 0 || cols % 32 != 0)
    throw_range(env, fn, "the CUTLASS 2:4 layout needs rows % 32 == 0 and cols % 32 == 0, got [" + std::to_string(rows) +
                             ", " + std::to_string(cols) + "]");
  if (double(vals.length) != double(rows) * double(cols) / 2)
    throw_range(env, fn, "values has " + std::to_string(vals.length) + " elements but [rows, cols/2] needs " +
                             std::to_string(rows * cols / 2));
  if (double(meta_len) != double(rows) * double(cols) / 16)
    throw_range(env, fn, "meta has " + std::to_string(meta_len) + " elements but [rows, cols/16] needs " +
                             std::to_string(rows * cols / 16));
  NmShape s{rows, cols, 2, 4};
  auto values = Napi::Float32Array::New(env, size_t(rows * nm_kept_per_row(s)));
  auto indices = Napi::Uint8Array::New(env, size_t(rows * nm_index_bytes_per_row(s)));
  throw_if_error(env, fn, nm_from_cutlass24(rows, cols, vals.data, t, meta, values.Data(), indices.Data()));
  return make_parts(env, values, indices);
}

// ---- kernels ----------------------------------------------------------------

Napi::Value PrepackNM(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "prepackNM";
  NmArg a = get_nm(env, fn, "W", info[0], false);  // pack_nm validates the indices
  std::shared_ptr<PackedNm> packed;
  Status st = pack_nm(a.shape, a.values.data, a.indices.data, active_isa(), &packed);
  if (!st.ok() && st.code == Status::kOutOfRange) throw_range(env, fn, "W." + st.message);
  throw_if_error(env, fn, st);
  return PackedNmHandle::Wrap(env, std::move(packed), DescribePackedNm);
}

// W as a packed handle, or an N:M object validated now (so the async variant
// throws at the call, like the sync one) and packed in the kernel closure.
// pack_nm validates its private copy of the indices once more: the caller's
// arrays stay writable from JS until an async call settles, and the kernels
// must only ever see checked indices.
struct WeightArg {
  std::shared_ptr<PackedNm> packed;
  NmArg parts;
  NmShape shape;
};

WeightArg get_weight(Napi::Env env, const std::string& fn, const Napi::Value& v) {
  WeightArg w;
  if (PackedNmHandle::Is(v)) {
    w.packed = PackedNmHandle::Get(env, fn, "W", v);
    w.shape = w.packed->shape;
  } else {
    w.parts = get_nm(env, fn, "W", v, true);
    w.shape = w.parts.shape;
  }
  return w;
}

// The kernel closure's way to the packed weight (packing unpacked W off the main thread).
std::function<Status(std::shared_ptr<PackedNm>*)> packer(const WeightArg& w, Isa isa) {
  if (w.packed) {
    auto p = w.packed;
    return [p](std::shared_ptr<PackedNm>* out) {
      *out = p;
      return Status::Ok();
    };
  }
  NmShape s = w.shape;
  const float* v = w.parts.values.data;
  const uint8_t* ix = w.parts.indices.data;
  return [s, v, ix, isa](std::shared_ptr<PackedNm>* out) { return pack_nm(s, v, ix, isa, out); };
}

// nmLinear(x [tokens, in], W, options?: { bias, activation, out }) → y [tokens, out]
Napi::Value NmLinearImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = async ? "nmLinearAsync" : "nmLinear";
  auto x = get_tensor<float>(env, fn, "x", info[0], 2, "[tokens, in]");
  WeightArg w = get_weight(env, fn, info[1]);
  const int64_t m = x.dim(0), k = x.dim(1), n = w.shape.rows;
  if (w.shape.cols != k)
    throw_range(env, fn, "W has in = " + std::to_string(w.shape.cols) + " columns but x has in = " + std::to_string(k) +
                             " (x.shape[1])");
  Napi::Value opts = info.Length() > 2 ? info[2] : env.Undefined();
  Napi::Value bias_v = get_option(env, fn, opts, "bias");
  ArrayArg<float> bias;
  if (!is_absent(bias_v)) {
    if (bias_v.IsObject() && !bias_v.IsTypedArray() && bias_v.As<Napi::Object>().Has("data")) {
      bias = get_tensor<float>(env, fn, "bias", bias_v, 1, "[out]").array;
    } else {
      bias = get_array<float>(env, fn, "bias", bias_v);
    }
    if (bias.length != n)
      throw_range(env, fn, "bias has " + std::to_string(bias.length) + " elements but W has out = " + std::to_string(n));
  }
  Activation act = get_activation(env, fn, get_option(env, fn, opts, "activation"));
  ArrayArg<float> out = get_out(env, fn, get_option(env, fn, opts, "out"), m * n, "y [tokens, out]");
  NmLinearArgs a;
  a.x = x.data();
  a.m = m;
  a.bias = bias.data;
  a.act = act;
  a.y = out.data;
  auto get_packed = packer(w, active_isa());
  auto kernel = [a, get_packed]() -> Status {
    std::shared_ptr<PackedNm> p;
    Status st = get_packed(&p);
    if (!st.ok()) return st;
    return nm_linear_packed(a, *p);
  };
  auto result = [m, n](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    return make_tensor(e, kept[0], {m, n});
  };
  return run_op(env, async, fn, kernel, result,
                {out.value, x.array.value, info[1], w.parts.values.value, w.parts.indices.value, bias.value});
}

// nmLinearTransposed(dy [tokens, out], W, options?: { out }) → dx [tokens, in]
Napi::Value NmLinearTransposedImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = async ? "nmLinearTransposedAsync" : "nmLinearTransposed";
  auto dy = get_tensor<float>(env, fn, "dy", info[0], 2, "[tokens, out]");
  WeightArg w = get_weight(env, fn, info[1]);
  const int64_t m = dy.dim(0), k = w.shape.cols;
  if (dy.dim(1) != w.shape.rows)
    throw_range(env, fn, "dy has " + std::to_string(dy.dim(1)) + " columns (dy.shape[1]) but W has out = " +
                             std::to_string(w.shape.rows) + " rows");
  Napi::Value opts = info.Length() > 2 ? info[2] : env.Undefined();
  ArrayArg<float> out = get_out(env, fn, get_option(env, fn, opts, "out"), m * k, "dx [tokens, in]");
  const float* dyp = dy.data();
  float* dx = out.data;
  auto get_packed = packer(w, active_isa());
  auto kernel = [dyp, m, dx, get_packed]() -> Status {
    std::shared_ptr<PackedNm> p;
    Status st = get_packed(&p);
    if (!st.ok()) return st;
    return nm_linear_transposed_packed(dyp, m, *p, dx);
  };
  auto result = [m, k](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    return make_tensor(e, kept[0], {m, k});
  };
  return run_op(env, async, fn, kernel, result,
                {out.value, dy.array.value, info[1], w.parts.values.value, w.parts.indices.value});
}

Napi::Value NmLinear(const Napi::CallbackInfo& info) { return NmLinearImpl(info, false); }
Napi::Value NmLinearAsync(const Napi::CallbackInfo& info) { return NmLinearImpl(info, true); }
Napi::Value NmLinearTransposed(const Napi::CallbackInfo& info) { return NmLinearTransposedImpl(info, false); }
Napi::Value NmLinearTransposedAsync(const Napi::CallbackInfo& info) { return NmLinearTransposedImpl(info, true); }

// nmGroupedLinear(xs [rows, in], expertOffsets, experts: PackedNMLinear[], options?: { gated, activation, out })
Napi::Value NmGroupedLinearImpl(const Napi::CallbackInfo& info, bool async) {
  auto shape_of = [](const PackedNm& p) {
    SparseExpertShape<PackedNm> s;
    s.rows = p.shape.rows;
    s.cols = p.shape.cols;
    s.text = "[" + std::to_string(p.shape.rows) + ", " + std::to_string(p.shape.cols) + "] " + std::to_string(p.shape.n) +
             ":" + std::to_string(p.shape.m);
    return s;
  };
  auto gate_error = [](const PackedNm&) { return std::string(); };
  return grouped_sparse_linear<PackedNm>(info, async ? "nmGroupedLinearAsync" : "nmGroupedLinear", "PackedNMLinear from prepackNM()",
                                         shape_of, gate_error, nm_grouped_linear, async, nm_grouped_gated_down);
}

Napi::Value NmGroupedLinear(const Napi::CallbackInfo& info) { return NmGroupedLinearImpl(info, false); }
Napi::Value NmGroupedLinearAsync(const Napi::CallbackInfo& info) { return NmGroupedLinearImpl(info, true); }

Napi::Value NmIsTuned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int n, m;
  get_pattern(env, "isTunedPattern", "", info[0], info[1], &n, &m);
  return Napi::Boolean::New(env, nm_is_tuned(n, m));
}

}  // namespace

void RegisterNM(Napi::Env env, Napi::Object exports) {
  PackedNmHandle::Init(env, exports, "PackedNMLinear", "use prepackNM(W) to make a packed N:M weight");
  auto add = [&](const char* name, Napi::Value (*f)(const Napi::CallbackInfo&)) {
    exports.Set(name, Napi::Function::New(env, f, name));
  };
  add("nmPrune", NmPrune);
  add("nmFromMask", NmFromMask);
  add("nmValidate", NmValidate);
  add("nmToDense", NmToDense);
  add("nmMaskOf", NmMaskOf);
  add("nmPruneMask", NmPruneMask);
  add("nmIsNM", NmIsNM);
  add("srsteGrad", SrsteGrad);
  add("nmRandom", NmRandom);
  add("nmToCutlass24", NmToCutlass24);
  add("nmFromCutlass24", NmFromCutlass24);
  add("nmIsTuned", NmIsTuned);
  add("prepackNM", PrepackNM);
  add("nmLinear", NmLinear);
  add("nmLinearAsync", NmLinearAsync);
  add("nmLinearTransposed", NmLinearTransposed);
  add("nmLinearTransposedAsync", NmLinearTransposedAsync);
  add("nmGroupedLinear", NmGroupedLinear);
  add("nmGroupedLinearAsync", NmGroupedLinearAsync);
}

}  // namespace binding
}  // namespace sparsekit
