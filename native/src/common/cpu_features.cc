#include <cstdlib>
#include <mutex>

#include "sparsekit/runtime.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define SPARSEKIT_X86 1
#endif

namespace sparsekit {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kNeon: return "neon";
  }
  return "unknown";
}

bool isa_from_name(const std::string& name, Isa* out) {
  if (name == "scalar") *out = Isa::kScalar;
  else if (name == "avx2") *out = Isa::kAvx2;
  else if (name == "avx512") *out = Isa::kAvx512;
  else if (name == "neon") *out = Isa::kNeon;
  else return false;
  return true;
}

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::kNone: return "none";
    case Activation::kRelu: return "relu";
    case Activation::kGelu: return "gelu";
    case Activation::kGeluTanh: return "gelu_tanh";
    case Activation::kSilu: return "silu";
  }
  return "unknown";
}

bool activation_from_name(const std::string& name, Activation* out) {
  if (name == "none") *out = Activation::kNone;
  else if (name == "relu") *out = Activation::kRelu;
  else if (name == "gelu") *out = Activation::kGelu;
  else if (name == "gelu_tanh") *out = Activation::kGeluTanh;
  else if (name == "silu") *out = Activation::kSilu;
  else return false;
  return true;
}

namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(SPARSEKIT_X86)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  bool osxsave = (c >> 27) & 1;
  bool avx = (c >> 28) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  unsigned long long xcr0 = 0;
  if (osxsave) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<unsigned long long>(hi) << 32) | lo;
  }
  bool os_ymm = (xcr0 & 0x6) == 0x6;
  bool os_zmm = (xcr0 & 0xe6) == 0xe6;
  if (__get_cpuid_max(0, nullptr) >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = avx && os_ymm && ((b >> 5) & 1);
    f.fma = f.fma && os_ymm;
    f.avx512f = os_zmm && ((b >> 16) & 1);
    f.avx512dq = os_zmm && ((b >> 17) & 1);
    f.avx512bw = os_zmm && ((b >> 30) & 1);
    f.avx512vl = os_zmm && ((b >> 31) & 1);
    unsigned a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    f.avx512bf16 = os_zmm && ((a1 >> 5) & 1);
  }
#elif defined(__aarch64__)
  f.neon = true;  // Advanced SIMD is mandatory on AArch64.
#endif
  return f;
}

struct IsaState {
  std::mutex mu;
  bool initialised = false;
  Isa active = Isa::kScalar;
  std::string reason;
};

IsaState& state() {
  static IsaState* s = new IsaState();
  return *s;
}

void init_locked(IsaState& s) {
  if (s.initialised) return;
  s.initialised = true;
  s.active = best_isa();
  s.reason = "best available on this CPU";
  if (const char* env = std::getenv("SPARSEKIT_ISA")) {
    Isa forced;
    std::string name(env);
    if (!name.empty() && isa_from_name(name, &forced)) {
      if (isa_supported(forced)) {
        s.active = forced;
        s.reason = "forced by SPARSEKIT_ISA=" + name;
      } else {
        s.reason = "SPARSEKIT_ISA=" + name + " ignored: not supported on this CPU/build; using best available";
      }
    } else if (!name.empty()) {
      s.reason = "SPARSEKIT_ISA=" + name + " ignored: unknown name (scalar|avx2|avx512|neon); using best available";
    }
  }
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

bool isa_supported(Isa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::kScalar: return true;
#if defined(SPARSEKIT_X86)
    case Isa::kAvx2: return f.avx2 && f.fma;
    case Isa::kAvx512: return f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl;
    case Isa::kNeon: return false;
#elif defined(__aarch64__)
    case Isa::kAvx2: return false;
    case Isa::kAvx512: return false;
    case Isa::kNeon: return f.neon;
#else
    default: return false;
#endif
  }
  return false;
}

Isa best_isa() {
  if (isa_supported(Isa::kAvx512)) return Isa::kAvx512;
  if (isa_supported(Isa::kAvx2)) return Isa::kAvx2;
  if (isa_supported(Isa::kNeon)) return Isa::kNeon;
  return Isa::kScalar;
}

Isa active_isa() {
  IsaState& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  init_locked(s);
  return s.active;
}

bool set_active_isa(Isa isa) {
  if (!isa_supported(isa)) return false;
  IsaState& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  init_locked(s);
  s.active = isa;
  s.reason = std::string("set by setIsa('") + isa_name(isa) + "')";
  return true;
}

std::string isa_reason() {
  IsaState& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  init_locked(s);
  return s.reason;
}

}  // namespace sparsekit
