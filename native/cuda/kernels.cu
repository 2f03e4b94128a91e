// sk_cuda_kernel_names: which kernels this build runs on this device.
#include <string>

#include "ops.h"

extern "C" SK_CUDA_API const char* sk_cuda_kernel_names(void) {
  static thread_local std::string names;
  names.clear();
  names += skc::dense_kernel_names();
  names += "\n";
  names += skc::experts_kernel_names();
  names += "\n";
  names += skc::bsr_kernel_names();
  names += "\n";
  names += skc::nm_kernel_names();
  names += "\n";
  names += skc::route_kernel_names();
  names += "\n";
  names += skc::use_wgmma() ? skc::wgmma_kernel_names() : "sm_90a wgmma kernels: not used on this device";
  return names.c_str();
}
