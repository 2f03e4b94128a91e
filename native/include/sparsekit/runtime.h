// Process-wide runtime: CPU features, the chosen instruction set, the thread pool.
#pragma once
#include <string>
#include "sparsekit/common.h"

namespace sparsekit {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false, avx512bf16 = false;
  bool neon = false;
};

const CpuFeatures& cpu_features();
// True when this binary holds a variant for `isa` and the CPU (and OS) can run it.
bool isa_supported(Isa isa);
// The best supported instruction set, before any override.
Isa best_isa();
// The active instruction set: best_isa(), or SPARSEKIT_ISA from the environment
// at first use, or what set_active_isa() chose. Kernels dispatch on it.
Isa active_isa();
// Fails (returns false) when the CPU cannot run `isa`.
bool set_active_isa(Isa isa);
// Why the active ISA is what it is ("best available", "SPARSEKIT_ISA=scalar", ...).
std::string isa_reason();

}  // namespace sparsekit
