// The N:M matrix argument ({ rows, cols, n, m, values, indices }, an
// NMSparseMatrix), validated: shared by the CPU (nm.cc) and CUDA (cuda.cc)
// bindings.
#pragma once
#include <napi.h>

#include <string>

#include "args.h"
#include "sparsekit/nm.h"

namespace sparsekit {
namespace binding {

struct NmArg {
  NmShape shape;
  ArrayArg<float> values;
  ArrayArg<uint8_t> indices;
  Napi::Value object;
};

// n and m of a pattern, range-checked (1 ≤ n < m ≤ 16).
inline void get_pattern(Napi::Env env, const std::string& fn, const std::string& prefix, const Napi::Value& nv,
                        const Napi::Value& mv, int* n, int* m) {
  int64_t mm = get_dim(env, fn, prefix + "m", mv);
  int64_t nn = get_dim(env, fn, prefix + "n", nv);
  if (mm < 2 || mm > 16) throw_range(env, fn, prefix + "m must be in 2..16, got " + std::to_string(mm));
  if (nn >= mm)
    throw_range(env, fn, prefix + "n must be < m (" + std::to_string(nn) + ":" + std::to_string(mm) + " keeps every value)");
  *n = int(nn);
  *m = int(mm);
}

inline NmArg get_nm(Napi::Env env, const std::string& fn, const std::string& name, const Napi::Value& v, bool validate) {
  const std::string hint = " must be an N:M matrix { rows, cols, n, m, values: Float32Array, indices: Uint8Array } (an NMSparseMatrix)";
  if (!v.IsObject() || v.IsTypedArray() || v.IsArray()) throw_type(env, fn, name + hint + ", got " + describe(v));
  Napi::Object o = v.As<Napi::Object>();
  NmArg a;
  a.object = v;
  a.shape.rows = get_dim(env, fn, name + ".rows", o.Get("rows"));
  a.shape.cols = get_dim(env, fn, name + ".cols", o.Get("cols"));
  get_pattern(env, fn, name + ".", o.Get("n"), o.Get("m"), &a.shape.n, &a.shape.m);
  Status st = nm_check_shape(a.shape);
  if (!st.ok()) throw_range(env, fn, name + ": " + st.message);
  a.values = get_array<float>(env, fn, name + ".values", o.Get("values"));
  a.indices = get_array<uint8_t>(env, fn, name + ".indices", o.Get("indices"));
  const double kept = double(a.shape.rows) * double(nm_kept_per_row(a.shape));
  const double ib = double(a.shape.rows) * double(nm_index_bytes_per_row(a.shape));
  if (double(a.values.length) != kept)
    throw_range(env, fn, name + ".values has " + std::to_string(a.values.length) + " elements but rows·cols·n/m = " +
                             std::to_string(int64_t(kept)));
  if (double(a.indices.length) != ib)
    throw_range(env, fn, name + ".indices has " + std::to_string(a.indices.length) + " bytes but " +
                             std::to_string(a.shape.rows) + " rows of " + std::to_string(nm_kept_per_row(a.shape)) +
                             " indices × " + std::to_string(nm_index_bits(a.shape.m)) + " bits need " +
                             std::to_string(int64_t(ib)));
  if (validate) {
    st = nm_validate_indices(a.shape, a.indices.data);
    if (!st.ok()) throw_range(env, fn, name + "." + st.message);
  }
  return a;
}

}  // namespace binding
}  // namespace sparsekit
