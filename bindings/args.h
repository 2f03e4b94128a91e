// Argument extraction and validation for every binding. The binding layer is
// the safety boundary: anything a caller passes is checked here before a kernel
// runs, and a mistake becomes a TypeError (wrong kind of value) or RangeError
// (wrong size or value) that names the function and the argument.
#pragma once
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "sparsekit/common.h"

namespace sparsekit {
namespace binding {

[[noreturn]] inline void throw_type(Napi::Env env, const std::string& fn, const std::string& msg) {
  throw Napi::TypeError::New(env, fn + ": " + msg);
}
[[noreturn]] inline void throw_range(Napi::Env env, const std::string& fn, const std::string& msg) {
  throw Napi::RangeError::New(env, fn + ": " + msg);
}

// Status from the core → the matching JS error.
inline void throw_if_error(Napi::Env env, const std::string& fn, const Status& s) {
  if (s.ok()) return;
  if (s.code == Status::kOutOfRange) throw_range(env, fn, s.message);
  if (s.code == Status::kInvalidArgument) throw_type(env, fn, s.message);
  throw Napi::Error::New(env, fn + ": " + s.message);
}

inline std::string describe(const Napi::Value& v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsBoolean()) return "a boolean";
  if (v.IsNumber()) return "a number";
  if (v.IsString()) return "a string";
  if (v.IsFunction()) return "a function";
  if (v.IsArray()) return "an array";
  if (v.IsTypedArray()) {
    switch (v.As<Napi::TypedArray>().TypedArrayType()) {
      case napi_int8_array: return "an Int8Array";
      case napi_uint8_array: return "a Uint8Array";
      case napi_uint8_clamped_array: return "a Uint8ClampedArray";
      case napi_int16_array: return "an Int16Array";
      case napi_uint16_array: return "a Uint16Array";
      case napi_int32_array: return "an Int32Array";
      case napi_uint32_array: return "a Uint32Array";
      case napi_float32_array: return "a Float32Array";
      case napi_float64_array: return "a Float64Array";
      case napi_bigint64_array: return "a BigInt64Array";
      case napi_biguint64_array: return "a BigUint64Array";
      default: return "a typed array";
    }
  }
  if (v.IsArrayBuffer()) return "an ArrayBuffer";
  if (v.IsObject()) return "an object";
  return "a value of another kind";
}

// Largest dimension we accept: kernels index with int64 but several formats
// store int32 indices, and a JS typed array cannot be longer anyway.
constexpr int64_t kMaxDim = 0x7fffffff;

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// A positive integer (or, with allow_zero, non-negative) that fits kMaxDim.
inline int64_t get_dim(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v,
                       bool allow_zero = false) {
  if (!v.IsNumber()) throw_type(env, fn, name + " must be an integer, got " + describe(v));
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d)
    throw_range(env, fn, name + " must be an integer, got " + std::to_string(d));
  if (d < (allow_zero ? 0 : 1) || d > static_cast<double>(kMaxDim))
    throw_range(env, fn, name + " must be " + (allow_zero ? "≥ 0" : "≥ 1") + " and ≤ 2^31−1, got " + std::to_string(static_cast<long long>(d)));
  return static_cast<int64_t>(d);
}

template <class T>
struct TypedArrayTraits;
template <>
struct TypedArrayTraits<float> {
  static constexpr napi_typedarray_type kind = napi_float32_array;
  static constexpr const char* name = "Float32Array";
};
template <>
struct TypedArrayTraits<int32_t> {
  static constexpr napi_typedarray_type kind = napi_int32_array;
  static constexpr const char* name = "Int32Array";
};
template <>
struct TypedArrayTraits<uint16_t> {
  static constexpr napi_typedarray_type kind = napi_uint16_array;
  static constexpr const char* name = "Uint16Array";
};
template <>
struct TypedArrayTraits<uint8_t> {
  static constexpr napi_typedarray_type kind = napi_uint8_array;
  static constexpr const char* name = "Uint8Array";
};
template <>
struct TypedArrayTraits<int16_t> {
  static constexpr napi_typedarray_type kind = napi_int16_array;
  static constexpr const char* name = "Int16Array";
};

// A typed array of exactly element type T.
template <class T>
struct ArrayArg {
  Napi::Value value;  // keep for async references
  T* data = nullptr;
  int64_t length = 0;
};

template <class T>
ArrayArg<T> get_array(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v) {
  using Tr = TypedArrayTraits<T>;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != Tr::kind)
    throw_type(env, fn, name + " must be a " + Tr::name + ", got " + describe(v));
  auto arr = v.As<Napi::TypedArrayOf<T>>();
  ArrayArg<T> out;
  out.value = v;
  out.length = static_cast<int64_t>(arr.ElementLength());
  out.data = out.length ? arr.Data() : nullptr;
  return out;
}

// A tensor: { data: <typed array of T>, shape: number[] } with the given rank,
// positive integer dims whose product is data.length.
template <class T>
struct TensorArg {
  ArrayArg<T> array;
  std::vector<int64_t> shape;
  T* data() const { return array.data; }
  int64_t dim(size_t i) const { return shape[i]; }
};

template <class T>
TensorArg<T> get_tensor(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v,
                        size_t rank, const char* shape_hint) {
  using Tr = TypedArrayTraits<T>;
  if (!v.IsObject() || v.IsTypedArray() || v.IsArray())
    throw_type(env, fn, name + " must be a tensor { data: " + Tr::name + ", shape: " + shape_hint + " }, got " + describe(v));
  Napi::Object o = v.As<Napi::Object>();
  TensorArg<T> t;
  t.array = get_array<T>(env, fn, name + ".data", o.Get("data"));
  Napi::Value sv = o.Get("shape");
  if (!sv.IsArray()) throw_type(env, fn, name + ".shape must be an array " + shape_hint + ", got " + describe(sv));
  Napi::Array sa = sv.As<Napi::Array>();
  if (sa.Length() != rank)
    throw_range(env, fn, name + ".shape must have " + std::to_string(rank) + " dimensions " + shape_hint + ", got " +
                             std::to_string(sa.Length()));
  double product = 1;
  for (uint32_t i = 0; i < rank; ++i) {
    int64_t d = get_dim(env, fn, name + ".shape[" + std::to_string(i) + "]", sa.Get(i));
    t.shape.push_back(d);
    product *= static_cast<double>(d);
  }
  if (product != static_cast<double>(t.array.length))
    throw_range(env, fn, name + ".data has " + std::to_string(t.array.length) + " elements but " + name + ".shape " +
                             shape_str(t.shape) + " needs " + std::to_string(static_cast<long long>(product)));
  return t;
}

inline bool is_absent(const Napi::Value& v) { return v.IsUndefined() || v.IsNull(); }

// options.<key> from an options object that may itself be absent.
inline Napi::Value get_option(Napi::Env env, const std::string& fn, const Napi::Value& opts, const char* key) {
  if (is_absent(opts)) return env.Undefined();
  if (!opts.IsObject() || opts.IsArray() || opts.IsTypedArray())
    throw_type(env, fn, std::string("options must be an object, got ") + describe(opts));
  return opts.As<Napi::Object>().Get(key);
}

inline Activation get_activation(Napi::Env env, const std::string& fn, const Napi::Value& v) {
  if (is_absent(v)) return Activation::kNone;
  if (!v.IsString()) throw_type(env, fn, "activation must be a string (none|relu|gelu|gelu_tanh|silu), got " + describe(v));
  Activation a;
  std::string s = v.As<Napi::String>().Utf8Value();
  if (!activation_from_name(s, &a))
    throw_range(env, fn, "activation must be one of none|relu|gelu|gelu_tanh|silu, got '" + s + "'");
  return a;
}

// Caller-supplied output buffer (options.out) of at least `need` floats, or a
// new zero-filled Float32Array.
inline ArrayArg<float> get_out(Napi::Env env, const std::string& fn, const Napi::Value& v, int64_t need,
                               const std::string& what) {
  if (is_absent(v)) {
    auto arr = Napi::Float32Array::New(env, static_cast<size_t>(need));
    ArrayArg<float> out;
    out.value = arr;
    out.length = need;
    out.data = need ? arr.Data() : nullptr;
    return out;
  }
  ArrayArg<float> out = get_array<float>(env, fn, "out", v);
  if (out.length < need)
    throw_range(env, fn, "out is too small: " + what + " needs " + std::to_string(need) + " floats, out has " +
                             std::to_string(out.length));
  return out;
}

// { data, shape } for a result; `data` is trimmed to the shape's element count.
// `array` is a typed array holding at least the shape's element count.
inline Napi::Object make_tensor(Napi::Env env, const Napi::Value& array, const std::vector<int64_t>& shape) {
  int64_t need = 1;
  for (auto d : shape) need *= d;
  Napi::Value data = array;
  if (static_cast<int64_t>(array.As<Napi::TypedArray>().ElementLength()) != need) {
    auto ta = array.As<Napi::TypedArray>();
    Napi::Function subarray = ta.Get("subarray").As<Napi::Function>();
    data = subarray.Call(ta, {Napi::Number::New(env, 0), Napi::Number::New(env, static_cast<double>(need))});
  }
  Napi::Array s = Napi::Array::New(env, shape.size());
  for (size_t i = 0; i < shape.size(); ++i) s.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(shape[i])));
  Napi::Object o = Napi::Object::New(env);
  o.Set("data", data);
  o.Set("shape", s);
  return o;
}

}  // namespace binding
}  // namespace sparsekit
