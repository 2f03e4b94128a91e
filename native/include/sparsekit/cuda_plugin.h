// The optional CUDA backend, seen from the CPU side: finds libsparsekit_cuda
// at run time (dlopen), checks its ABI version, resolves its functions and
// asks it whether a driver and a GPU are there. No CUDA header is involved:
// the plugin's interface is plain C (native/cuda/sparsekit_cuda.h).
#pragma once
#include <string>
#include <vector>

#include "../../cuda/sparsekit_cuda.h"

namespace sparsekit {

// Every function of the plugin's C interface, resolved by name.
struct CudaApi {
  int (*abi_version)();
  int (*query)(sk_cuda_device_info*);
  const char* (*last_error)();
  const char* (*kernel_names)();
  int (*set_option)(const char*, int64_t);
  int (*stream_create)(sk_cuda_stream*);
  int (*stream_destroy)(sk_cuda_stream);
  int (*stream_synchronize)(sk_cuda_stream);
  int (*stream_wait)(sk_cuda_stream, sk_cuda_stream);
  int (*malloc)(void**, size_t, sk_cuda_stream);
  int (*free)(void*, sk_cuda_stream);
  int (*memcpy_h2d)(void*, const void*, size_t, sk_cuda_stream);
  int (*memcpy_d2h)(void*, const void*, size_t, sk_cuda_stream);
  int (*memcpy_d2d)(void*, const void*, size_t, sk_cuda_stream);
  int (*memset)(void*, int, size_t, sk_cuda_stream);
  int (*convert)(void*, sk_dtype, const void*, sk_dtype, int64_t, sk_cuda_stream);
  int (*fill_random)(void*, sk_dtype, int64_t, uint64_t, float, sk_cuda_stream);
  int (*linear)(sk_dtype, const void*, const void*, const float*, void*, sk_dtype, int64_t, int64_t, int64_t, int,
                sk_cuda_stream);
  int (*grouped_linear)(sk_dtype, const void*, const int32_t*, int64_t, const void*, const void*, const float*, void*,
                        sk_dtype, int64_t, int64_t, int64_t, int, sk_cuda_stream);
  int (*permute)(sk_dtype, const void*, int64_t, int64_t, const int32_t*, int64_t, int64_t, void*, sk_cuda_stream);
  int (*invert_slots)(const int32_t*, int64_t, int32_t*, int64_t, sk_cuda_stream);
  int (*combine)(sk_dtype, const void*, int64_t, int64_t, const int32_t*, const float*, int64_t, int64_t, void*,
                 sk_dtype, sk_cuda_stream);
  int (*add_rows)(sk_dtype, void*, const void*, const float*, int64_t, int64_t, sk_cuda_stream);
  int (*bsr_linear)(sk_dtype, const void*, int64_t, const sk_cuda_bsr*, const float*, void*, sk_dtype, int,
                    sk_cuda_stream);
  int (*sddmm)(sk_dtype, const void*, const void*, int64_t, const sk_cuda_bsr*, void*, sk_dtype, sk_cuda_stream);
  int (*nm24_linear)(const void*, const void*, const uint16_t*, const float*, void*, sk_dtype, int64_t, int64_t,
                     int64_t, int, sk_cuda_stream);
  int (*nm_linear)(sk_dtype, const void*, const void*, const uint8_t*, const float*, void*, sk_dtype, int64_t,
                   int64_t, int64_t, int, int, int, sk_cuda_stream);
  int (*route)(const float*, int64_t, int64_t, const sk_cuda_route_options*, int32_t*, float*, int32_t*, int32_t*,
               int32_t*, int32_t*, sk_cuda_stream);
};

enum class CudaState {
  kDisabled,       // SPARSEKIT_CUDA_PLUGIN=off
  kNoPlugin,       // no libsparsekit_cuda where we looked
  kLoadError,      // dlopen failed, or a function is missing
  kAbiMismatch,    // sk_cuda_abi_version() != SK_CUDA_ABI_VERSION
  kNoDriver,       // no libcuda.so.1, or a driver older than the plugin's runtime
  kNoDevice,       // a driver but no GPU
  kUnsupported,    // a GPU the kernels cannot run on (older than sm_80)
  kAvailable,
};

struct CudaBackend {
  CudaState state = CudaState::kNoPlugin;
  // One word per state for programs: disabled, no-plugin, load-error,
  // abi-mismatch, no-driver, no-gpu, unsupported-gpu, available.
  std::string status;
  // In words, for people: what was found and why it cannot be used.
  std::string reason;
  std::string plugin_path;            // the library that was loaded (or failed to)
  std::vector<std::string> searched;  // files looked for
  int plugin_abi = 0;
  sk_cuda_device_info device{};
  CudaApi api{};
  bool available() const { return state == CudaState::kAvailable; }
};

// Loads the plugin on first use (thread-safe; later calls return the same
// object). Where it looks, in order: the path in SPARSEKIT_CUDA_PLUGIN (or
// "off"/"0"/"none" to disable the backend), then libsparsekit_cuda.so in each
// of `search_dirs` (the first call's list is the one used).
const CudaBackend& cuda_backend(const std::vector<std::string>& search_dirs);

// The file name of the plugin on this platform (libsparsekit_cuda.so).
const char* cuda_plugin_file_name();
// "<platform>-<arch>" as prebuilds/ names it (linux-x64, linux-arm64, ...).
const char* prebuild_platform_dir();

}  // namespace sparsekit
