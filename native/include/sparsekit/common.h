// Shared vocabulary of the core: status codes, views, instruction sets.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace sparsekit {

// The core never throws across its public API and never aborts: it reports.
// The binding layer has already validated arguments; a Status that is not ok
// from the core means an invariant the binding should have caught, or memory.
struct Status {
  enum Code { kOk = 0, kInvalidArgument, kOutOfRange, kOutOfMemory, kInternal };
  Code code = kOk;
  std::string message;
  static Status Ok() { return {}; }
  static Status Invalid(std::string m) { return {kInvalidArgument, std::move(m)}; }
  static Status Range(std::string m) { return {kOutOfRange, std::move(m)}; }
  static Status Oom(std::string m) { return {kOutOfMemory, std::move(m)}; }
  bool ok() const { return code == kOk; }
};

// Instruction-set variants. Every binary carries all the variants of its
// architecture; one is chosen at load (or forced with SPARSEKIT_ISA).
enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kNeon = 3 };
const char* isa_name(Isa isa);
bool isa_from_name(const std::string& name, Isa* out);

// Activations fused into the store of every linear-like kernel.
enum class Activation : int { kNone = 0, kRelu = 1, kGelu = 2, kGeluTanh = 3, kSilu = 4 };
const char* activation_name(Activation a);
bool activation_from_name(const std::string& name, Activation* out);

}  // namespace sparsekit
