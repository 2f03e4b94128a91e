// Block-sparse matrices: format helpers (validate, toDense, transpose,
// fromDense, fromMask), prepackBsrLinear and the PackedBsrLinear handle,
// bsrLinear, bsrLinearTransposed and sddmm (each with an Async variant).
//
// A block-sparse argument is any object { shape: [rows, cols], blockSize:
// [br, bc], rowPtr: Int32Array, colIdx: Int32Array, values: Float32Array }
// (lib's BlockSparseMatrix is one). Its structure is checked in full on every
// call: the typed arrays are the caller's and may have changed since the
// object was built. rowPtr and colIdx are copied before they are checked and
// the kernels read the copies, so nothing the caller does to its arrays
// afterwards (while an async call runs, or from another thread through a
// SharedArrayBuffer) can make a kernel index out of bounds.
#include <algorithm>
#include <cmath>
#include <memory>

#include "args.h"
#include "async.h"
#include "families.h"
#include "grouped_sparse.h"
#include "handle.h"
#include "sparsekit/bsr.h"
#include "sparsekit/runtime.h"

namespace sparsekit {
namespace binding {

namespace {

struct BsrArg {
  BsrView view;  // row_ptr / col_idx point into `pattern`
  std::shared_ptr<AlignedBuffer<int32_t>> pattern;
  ArrayArg<int32_t> row_ptr, col_idx;
  ArrayArg<float> values;
  Napi::Value object;
};

const char* kBsrHint = "a BlockSparseMatrix { shape, blockSize, rowPtr, colIdx, values }";

// `prefix` is how fields are named in messages ("W." → "W.rowPtr[0] ...").
// With need_values false (a mask), values are not read.
BsrArg get_bsr(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v, bool need_values,
               const std::string& prefix) {
  if (!v.IsObject() || v.IsArray() || v.IsTypedArray() || v.IsFunction())
    throw_type(env, fn, name + " must be " + kBsrHint + ", got " + describe(v));
  Napi::Object o = v.As<Napi::Object>();
  BsrArg b;
  b.object = v;
  auto pair = [&](const char* field, const char* hint) {
    Napi::Value pv = o.Get(field);
    std::string fname = prefix + field;
    if (!pv.IsArray()) throw_type(env, fn, fname + " must be an array " + hint + ", got " + describe(pv));
    Napi::Array a = pv.As<Napi::Array>();
    if (a.Length() != 2) throw_range(env, fn, fname + " must have 2 entries " + hint + ", got " + std::to_string(a.Length()));
    return std::make_pair(get_dim(env, fn, fname + "[0]", a.Get(0u)), get_dim(env, fn, fname + "[1]", a.Get(1u)));
  };
  auto shape = pair("shape", "[rows, cols]");
  auto block = pair("blockSize", "[blockRows, blockCols]");
  b.view.rows = shape.first;
  b.view.cols = shape.second;
  b.view.br = block.first;
  b.view.bc = block.second;
  Status st = bsr_check_shape(b.view.rows, b.view.cols, b.view.br, b.view.bc);
  if (!st.ok()) throw_range(env, fn, prefix + st.message);
  b.row_ptr = get_array<int32_t>(env, fn, prefix + "rowPtr", o.Get("rowPtr"));
  b.col_idx = get_array<int32_t>(env, fn, prefix + "colIdx", o.Get("colIdx"));
  if (need_values) b.values = get_array<float>(env, fn, prefix + "values", o.Get("values"));
  b.pattern = std::make_shared<AlignedBuffer<int32_t>>();
  if (!b.pattern->resize(static_cast<size_t>(b.row_ptr.length + b.col_idx.length)))
    throw Napi::Error::New(env, fn + ": out of memory copying " + name + "'s structure");
  int32_t* copy = b.pattern->data();
  std::copy(b.row_ptr.data, b.row_ptr.data + b.row_ptr.length, copy);
  std::copy(b.col_idx.data, b.col_idx.data + b.col_idx.length, copy + b.row_ptr.length);
  b.view.row_ptr = copy;
  b.view.col_idx = copy + b.row_ptr.length;
  b.view.values = b.values.data;
  b.view.nnz = b.col_idx.length;
  st = bsr_validate(b.view, b.row_ptr.length, b.col_idx.length, need_values ? b.values.length : -1);
  if (!st.ok()) throw_range(env, fn, prefix + st.message);
  return b;
}

Napi::Object parts_object(Napi::Env env, const Napi::Int32Array& row_ptr, const Napi::Int32Array& col_idx,
                          const Napi::Float32Array& values) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("rowPtr", row_ptr);
  o.Set("colIdx", col_idx);
  o.Set("values", values);
  return o;
}

using PackedBsrHandle = Handle<PackedBsr>;

void DescribePackedBsr(Napi::Env env, Napi::Object& o, const PackedBsr& p) {
  PackedBsrHandle::Prop(o, "outFeatures", Napi::Number::New(env, double(p.rows)));
  PackedBsrHandle::Prop(o, "inFeatures", Napi::Number::New(env, double(p.cols)));
  Napi::Array bs = Napi::Array::New(env, 2);
  bs.Set(0u, Napi::Number::New(env, double(p.br)));
  bs.Set(1u, Napi::Number::New(env, double(p.bc)));
  bs.Freeze();
  PackedBsrHandle::Prop(o, "blockSize", bs);
  PackedBsrHandle::Prop(o, "nnzBlocks", Napi::Number::New(env, double(p.nnz)));
  const double total = double(p.rows / p.br) * double(p.cols / p.bc);
  PackedBsrHandle::Prop(o, "density", Napi::Number::New(env, double(p.nnz) / total));
  PackedBsrHandle::Prop(o, "isa", Napi::String::New(env, isa_name(p.kernels->isa)));
  PackedBsrHandle::Prop(o, "kernel", Napi::String::New(env, p.kernels->name));
  const double bytes = double(p.nnz) * double(p.br * p.bc) * 4 + double(p.nnz) * 4 + double(p.rows / p.br + 1) * 4;
  PackedBsrHandle::Prop(o, "bytes", Napi::Number::New(env, bytes));
}

// ---- format helpers

// bsrValidate(parts, fnName?): throws the named error, or returns undefined.
Napi::Value BsrValidate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string fn = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "bsrValidate";
  get_bsr(env, fn, "parts", info[0], true, "");
  return env.Undefined();
}

Napi::Value BsrToDense(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "BlockSparseMatrix.toDense";
  BsrArg w = get_bsr(env, fn, "W", info[0], true, "W.");
  auto out = Napi::Float32Array::New(env, static_cast<size_t>(w.view.rows * w.view.cols));
  bsr_to_dense(w.view, out.Data());
  return out;
}

Napi::Value BsrTranspose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "BlockSparseMatrix.transpose";
  BsrArg w = get_bsr(env, fn, "W", info[0], true, "W.");
  auto rp = Napi::Int32Array::New(env, static_cast<size_t>(w.view.block_cols() + 1));
  auto ci = Napi::Int32Array::New(env, static_cast<size_t>(w.view.nnz));
  auto vals = Napi::Float32Array::New(env, static_cast<size_t>(w.view.nnz * w.view.br * w.view.bc));
  throw_if_error(env, fn, bsr_transpose(w.view, rp.Data(), ci.Data(), vals.Data()));
  return parts_object(env, rp, ci, vals);
}

// Gathers the kept blocks into new typed arrays.
Napi::Object gather_parts(Napi::Env env, const TensorArg<float>& w, int64_t br, int64_t bc, const uint8_t* keep) {
  const int64_t rows = w.dim(0), cols = w.dim(1);
  const int64_t nb = (rows / br) * (cols / bc);
  const int64_t nnz = bsr_count_kept(keep, nb);
  auto rp = Napi::Int32Array::New(env, static_cast<size_t>(rows / br + 1));
  auto ci = Napi::Int32Array::New(env, static_cast<size_t>(nnz));
  auto vals = Napi::Float32Array::New(env, static_cast<size_t>(nnz * br * bc));
  bsr_from_dense(w.data(), rows, cols, br, bc, keep, rp.Data(), ci.Data(), vals.Data());
  return parts_object(env, rp, ci, vals);
}

// bsrFromDense(W, [br, bc], { density } | { threshold } | {}) → parts.
// density: keep round(density · blocks) blocks of largest L2 norm;
// threshold: keep blocks whose L2 norm is > threshold; neither: threshold 0
// (every block that is not all zeros).
Napi::Value BsrFromDense(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "BlockSparseMatrix.fromDense";
  auto w = get_tensor<float>(env, fn, "W", info[0], 2, "[rows, cols]");
  if (!info[1].IsArray()) throw_type(env, fn, "blockSize must be an array [blockRows, blockCols], got " + describe(info[1]));
  Napi::Array bs = info[1].As<Napi::Array>();
  if (bs.Length() != 2) throw_range(env, fn, "blockSize must have 2 entries [blockRows, blockCols], got " + std::to_string(bs.Length()));
  const int64_t br = get_dim(env, fn, "blockSize[0]", bs.Get(0u)), bc = get_dim(env, fn, "blockSize[1]", bs.Get(1u));
  Status st = bsr_check_shape(w.dim(0), w.dim(1), br, bc);
  if (!st.ok()) throw_range(env, fn, "W." + st.message);
  Napi::Value opts = info.Length() > 2 ? info[2] : env.Undefined();
  Napi::Value dv = get_option(env, fn, opts, "density"), tv = get_option(env, fn, opts, "threshold");
  if (!is_absent(dv) && !is_absent(tv)) throw_type(env, fn, "give density or threshold, not both");
  auto number = [&](const Napi::Value& v, const char* name) {
    if (!v.IsNumber()) throw_type(env, fn, std::string(name) + " must be a number, got " + describe(v));
    double d = v.As<Napi::Number>().DoubleValue();
    if (std::isnan(d)) throw_range(env, fn, std::string(name) + " must not be NaN");
    return d;
  };
  const int64_t n_blocks = (w.dim(0) / br) * (w.dim(1) / bc);
  for (int64_t i = 0; i < w.array.length; ++i)
    if (std::isnan(w.data()[i])) throw_range(env, fn, "W.data[" + std::to_string(i) + "] is NaN (block norms must be comparable)");
  AlignedBuffer<double> norms;
  AlignedBuffer<uint8_t> keep;
  if (!norms.resize(static_cast<size_t>(n_blocks)) || !keep.resize(static_cast<size_t>(n_blocks)))
    throw Napi::Error::New(env, fn + ": out of memory");
  bsr_block_norms(w.data(), w.dim(0), w.dim(1), br, bc, norms.data());
  if (!is_absent(dv)) {
    double d = number(dv, "density");
    if (d < 0 || d > 1) throw_range(env, fn, "density must be in [0, 1], got " + std::to_string(d));
    throw_if_error(env, fn, bsr_select_top(norms.data(), n_blocks, d, keep.data()));
  } else {
    double t = is_absent(tv) ? 0.0 : number(tv, "threshold");
    for (int64_t i = 0; i < n_blocks; ++i) keep.data()[i] = norms.data()[i] > t ? 1 : 0;
  }
  return gather_parts(env, w, br, bc, keep.data());
}

// bsrFromMask(W, blockMask: { data: Uint8Array, shape: [blockRows, blockCols] }) → parts + blockSize.
Napi::Value BsrFromMask(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "BlockSparseMatrix.fromMask";
  auto w = get_tensor<float>(env, fn, "W", info[0], 2, "[rows, cols]");
  auto mask = get_tensor<uint8_t>(env, fn, "blockMask", info[1], 2, "[rows / blockRows, cols / blockCols]");
  const int64_t mr = mask.dim(0), mc = mask.dim(1);
  if (w.dim(0) % mr != 0 || w.dim(1) % mc != 0)
    throw_range(env, fn, "blockMask.shape " + shape_str(mask.shape) + " must divide W.shape " + shape_str(w.shape) +
                             " (one mask entry per block)");
  const int64_t br = w.dim(0) / mr, bc = w.dim(1) / mc;
  Napi::Object parts = gather_parts(env, w, br, bc, mask.data());
  Napi::Array bs = Napi::Array::New(env, 2);
  bs.Set(0u, Napi::Number::New(env, double(br)));
  bs.Set(1u, Napi::Number::New(env, double(bc)));
  parts.Set("blockSize", bs);
  return parts;
}

Napi::Value PrepackBsrLinear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string fn = "prepackBsrLinear";
  BsrArg w = get_bsr(env, fn, "W", info[0], true, "W.");
  std::shared_ptr<PackedBsr> packed;
  throw_if_error(env, fn, bsr_pack(w.view, active_isa(), &packed));
  return PackedBsrHandle::Wrap(env, std::move(packed), DescribePackedBsr);
}

// ---- products

struct WeightArg {
  std::shared_ptr<PackedBsr> packed;
  BsrArg plain;
  int64_t rows = 0, cols = 0;
};

WeightArg get_weight(Napi::Env env, const std::string& fn, const Napi::Value& v) {
  WeightArg w;
  if (PackedBsrHandle::Is(v)) {
    w.packed = PackedBsrHandle::Get(env, fn, "W", v);
    w.rows = w.packed->rows;
    w.cols = w.packed->cols;
  } else {
    w.plain = get_bsr(env, fn, "W", v, true, "W.");
    w.rows = w.plain.view.rows;
    w.cols = w.plain.view.cols;
  }
  return w;
}

// bsrLinear(x, W | PackedBsrLinear, { bias, activation, out }).
Napi::Value BsrLinearImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = async ? "bsrLinearAsync" : "bsrLinear";
  auto x = get_tensor<float>(env, fn, "x", info[0], 2, "[tokens, in]");
  WeightArg w = get_weight(env, fn, info[1]);
  const int64_t m = x.dim(0), k = x.dim(1), n = w.rows;
  if (w.cols != k)
    throw_range(env, fn, "W.shape[1] (in = " + std::to_string(w.cols) + ") must equal x.shape[1] (in = " + std::to_string(k) + ")");
  Napi::Value opts = info.Length() > 2 ? info[2] : env.Undefined();
  Napi::Value bias_v = get_option(env, fn, opts, "bias");
  ArrayArg<float> bias;
  if (!is_absent(bias_v)) {
    if (bias_v.IsObject() && !bias_v.IsTypedArray() && bias_v.As<Napi::Object>().Has("data"))
      bias = get_tensor<float>(env, fn, "bias", bias_v, 1, "[out]").array;
    else
      bias = get_array<float>(env, fn, "bias", bias_v);
    if (bias.length != n)
      throw_range(env, fn, "bias has " + std::to_string(bias.length) + " elements but W has out = " + std::to_string(n));
  }
  Activation act = get_activation(env, fn, get_option(env, fn, opts, "activation"));
  ArrayArg<float> out = get_out(env, fn, get_option(env, fn, opts, "out"), m * n, "y [tokens, out]");

  BsrLinearArgs a;
  a.x = x.data();
  a.m = m;
  a.k = k;
  a.bias = bias.data;
  a.act = act;
  a.y = out.data;
  Isa isa = active_isa();
  auto packed = w.packed;
  BsrView view = w.plain.view;
  auto pattern = w.plain.pattern;
  auto kernel = [a, packed, view, pattern, isa]() -> Status {
    if (packed) return bsr_linear_packed(a, *packed);
    return bsr_linear(a, view, isa);
  };
  auto result = [m, n](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    return make_tensor(e, kept[0], {m, n});
  };
  return run_op(env, async, fn, kernel, result,
                {out.value, x.array.value, bias.value, info[1], w.plain.row_ptr.value, w.plain.col_idx.value,
                 w.plain.values.value});
}

// bsrLinearTransposed(dy, W | PackedBsrLinear, { out }): dx = dy · W.
Napi::Value BsrLinearTransposedImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = async ? "bsrLinearTransposedAsync" : "bsrLinearTransposed";
  auto dy = get_tensor<float>(env, fn, "dy", info[0], 2, "[tokens, out]");
  WeightArg w = get_weight(env, fn, info[1]);
  const int64_t m = dy.dim(0), k = dy.dim(1), n = w.cols;
  if (w.rows != k)
    throw_range(env, fn, "W.shape[0] (out = " + std::to_string(w.rows) + ") must equal dy.shape[1] (out = " +
                             std::to_string(k) + ")");
  Napi::Value opts = info.Length() > 2 ? info[2] : env.Undefined();
  ArrayArg<float> out = get_out(env, fn, get_option(env, fn, opts, "out"), m * n, "dx [tokens, in]");
  BsrLinearArgs a;
  a.x = dy.data();
  a.m = m;
  a.k = k;
  a.y = out.data;
  Isa isa = active_isa();
  auto packed = w.packed;
  BsrView view = w.plain.view;
  auto pattern = w.plain.pattern;
  auto kernel = [a, packed, view, pattern, isa]() -> Status {
    if (packed) return bsr_linear_transposed_packed(a, *packed);
    return bsr_linear_transposed(a, view, isa);
  };
  auto result = [m, n](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    return make_tensor(e, kept[0], {m, n});
  };
  return run_op(env, async, fn, kernel, result,
                {out.value, dy.array.value, info[1], w.plain.row_ptr.value, w.plain.col_idx.value, w.plain.values.value});
}

// sddmm(a, b, mask, { out }) → values [nnz · br · bc] of (a · bᵀ) on mask's blocks.
Napi::Value SddmmImpl(const Napi::CallbackInfo& info, bool async) {
  Napi::Env env = info.Env();
  const std::string fn = async ? "sddmmAsync" : "sddmm";
  auto a = get_tensor<float>(env, fn, "a", info[0], 2, "[m, k]");
  auto b = get_tensor<float>(env, fn, "b", info[1], 2, "[n, k]");
  if (b.dim(1) != a.dim(1))
    throw_range(env, fn, "b.shape[1] (k = " + std::to_string(b.dim(1)) + ") must equal a.shape[1] (k = " +
                             std::to_string(a.dim(1)) + ")");
  BsrArg mask = get_bsr(env, fn, "mask", info[2], false, "mask.");
  if (mask.view.rows != a.dim(0) || mask.view.cols != b.dim(0))
    throw_range(env, fn, "mask.shape [" + std::to_string(mask.view.rows) + ", " + std::to_string(mask.view.cols) +
                             "] must be [a.shape[0], b.shape[0]] = [" + std::to_string(a.dim(0)) + ", " +
                             std::to_string(b.dim(0)) + "]");
  Napi::Value opts = info.Length() > 3 ? info[3] : env.Undefined();
  const int64_t need = mask.view.nnz * mask.view.br * mask.view.bc;
  ArrayArg<float> out = get_out(env, fn, get_option(env, fn, opts, "out"), need, "values [nnzBlocks · blockRows · blockCols]");
  const float* ad = a.data();
  const float* bd = b.data();
  const int64_t m = a.dim(0), k = a.dim(1), n = b.dim(0);
  BsrView view = mask.view;
  auto pattern = mask.pattern;
  float* od = out.data;
  Isa isa = active_isa();
  auto kernel = [ad, bd, m, k, n, view, pattern, od, isa]() -> Status {
    return bsr_sddmm(ad, m, k, bd, n, view, od, isa);
  };
  auto result = [need](Napi::Env e, const std::vector<Napi::Value>& kept) -> Napi::Value {
    Napi::TypedArray ta = kept[0].As<Napi::TypedArray>();
    if (static_cast<int64_t>(ta.ElementLength()) == need) return kept[0];
    Napi::Function subarray = ta.Get("subarray").As<Napi::Function>();
    return subarray.Call(ta, {Napi::Number::New(e, 0), Napi::Number::New(e, static_cast<double>(need))});
  };
  return run_op(env, async, fn, kernel, result,
                {out.value, a.array.value, b.array.value, mask.row_ptr.value, mask.col_idx.value});
}

// bsrGroupedLinear(xs [rows, in], expertOffsets, experts: PackedBsrLinear[], options?: { gated, activation, out })
Napi::Value BsrGroupedLinearImpl(const Napi::CallbackInfo& info, bool async) {
  auto shape_of = [](const PackedBsr& p) {
    SparseExpertShape<PackedBsr> s;
    s.rows = p.rows;
    s.cols = p.cols;
    s.text = "[" + std::to_string(p.rows) + ", " + std::to_string(p.cols) + "] in " + std::to_string(p.br) + "x" +
             std::to_string(p.bc) + " blocks";
    return s;
  };
  auto gate_error = [](const PackedBsr& p) {
    if ((p.rows / 2) % p.br == 0) return std::string();
    return "gated experts split out = " + std::to_string(p.rows) + " rows into gate and up halves, which must be whole block rows (block height " +
           std::to_string(p.br) + ")";
  };
  return grouped_sparse_linear<PackedBsr>(info, async ? "bsrGroupedLinearAsync" : "bsrGroupedLinear",
                                          "PackedBsrLinear from prepackBsrLinear()", shape_of, gate_error,
                                          bsr_grouped_linear, async);
}
Napi::Value BsrGroupedLinear(const Napi::CallbackInfo& info) { return BsrGroupedLinearImpl(info, false); }
Napi::Value BsrGroupedLinearAsync(const Napi::CallbackInfo& info) { return BsrGroupedLinearImpl(info, true); }

Napi::Value BsrLinear(const Napi::CallbackInfo& info) { return BsrLinearImpl(info, false); }
Napi::Value BsrLinearAsync(const Napi::CallbackInfo& info) { return BsrLinearImpl(info, true); }
Napi::Value BsrLinearTransposed(const Napi::CallbackInfo& info) { return BsrLinearTransposedImpl(info, false); }
Napi::Value BsrLinearTransposedAsync(const Napi::CallbackInfo& info) { return BsrLinearTransposedImpl(info, true); }
Napi::Value Sddmm(const Napi::CallbackInfo& info) { return SddmmImpl(info, false); }
Napi::Value SddmmAsync(const Napi::CallbackInfo& info) { return SddmmImpl(info, true); }

}  // namespace

void RegisterBsr(Napi::Env env, Napi::Object exports) {
  PackedBsrHandle::Init(env, exports, "PackedBsrLinear", "use prepackBsrLinear(W) to make a packed block-sparse weight");
  auto fn = [&](const char* name, Napi::Function::Callback cb) { exports.Set(name, Napi::Function::New(env, cb, name)); };
  fn("bsrValidate", BsrValidate);
  fn("bsrToDense", BsrToDense);
  fn("bsrTranspose", BsrTranspose);
  fn("bsrFromDense", BsrFromDense);
  fn("bsrFromMask", BsrFromMask);
  fn("prepackBsrLinear", PrepackBsrLinear);
  fn("bsrLinear", BsrLinear);
  fn("bsrLinearAsync", BsrLinearAsync);
  fn("bsrGroupedLinear", BsrGroupedLinear);
  fn("bsrGroupedLinearAsync", BsrGroupedLinearAsync);
  fn("bsrLinearTransposed", BsrLinearTransposed);
  fn("bsrLinearTransposedAsync", BsrLinearTransposedAsync);
  fn("sddmm", Sddmm);
  fn("sddmmAsync", SddmmAsync);
}

}  // namespace binding
}  // namespace sparsekit
