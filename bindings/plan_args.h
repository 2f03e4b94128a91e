// Validation of the routing-plan arrays the expert ops read (expertOffsets,
// sortedSlots, k), shared by the CPU and CUDA bindings.
#pragma once
#include <napi.h>

#include <string>
#include <vector>

#include "args.h"

namespace sparsekit {
namespace binding {

// expertOffsets: Int32Array [E+1], 0 = o[0] ≤ o[1] ≤ … ≤ o[E] = rows.
inline ArrayArg<int32_t> get_offsets(Napi::Env env, const std::string& fn, const Napi::Value& v, int64_t experts,
                                     int64_t rows, const std::string& rows_name) {
  auto o = get_array<int32_t>(env, fn, "expertOffsets", v);
  if (o.length != experts + 1)
    throw_range(env, fn, "expertOffsets must have experts + 1 = " + std::to_string(experts + 1) + " entries, got " +
                             std::to_string(o.length));
  if (o.data[0] != 0) throw_range(env, fn, "expertOffsets[0] must be 0, got " + std::to_string(o.data[0]));
  for (int64_t e = 0; e < experts; ++e)
    if (o.data[e + 1] < o.data[e])
      throw_range(env, fn, "expertOffsets must be non-decreasing: expertOffsets[" + std::to_string(e + 1) + "] = " +
                               std::to_string(o.data[e + 1]) + " < expertOffsets[" + std::to_string(e) + "] = " +
                               std::to_string(o.data[e]));
  if (o.data[experts] != rows)
    throw_range(env, fn, "expertOffsets[" + std::to_string(experts) + "] = " + std::to_string(o.data[experts]) +
                             " must equal " + rows_name + " = " + std::to_string(rows));
  return o;
}

// sortedSlots: Int32Array of distinct slots in [0, tokens·k).
inline ArrayArg<int32_t> get_slots(Napi::Env env, const std::string& fn, const Napi::Value& v, int64_t n_slots) {
  auto s = get_array<int32_t>(env, fn, "sortedSlots", v);
  if (s.length > n_slots)
    throw_range(env, fn, "sortedSlots has " + std::to_string(s.length) + " entries but tokens·k = " +
                             std::to_string(n_slots));
  std::vector<uint8_t> seen(static_cast<size_t>(n_slots), 0);
  for (int64_t i = 0; i < s.length; ++i) {
    int32_t v2 = s.data[i];
    if (v2 < 0 || v2 >= n_slots)
      throw_range(env, fn, "sortedSlots[" + std::to_string(i) + "] = " + std::to_string(v2) + " is outside [0, tokens·k = " +
                               std::to_string(n_slots) + ")");
    if (seen[v2]) throw_range(env, fn, "sortedSlots[" + std::to_string(i) + "] = " + std::to_string(v2) + " appears twice");
    seen[v2] = 1;
  }
  return s;
}

inline int64_t get_k(Napi::Env env, const std::string& fn, const Napi::Value& v, const std::string& name = "k") {
  int64_t k = get_dim(env, fn, name, v);
  if (k > 256) throw_range(env, fn, name + " must be ≤ 256, got " + std::to_string(k));
  return k;
}

}  // namespace binding
}  // namespace sparsekit
