// Host-side declarations shared between the plugin's translation units.
#pragma once
#include "common.cuh"

namespace skc {

// One line per op family describing the kernels it launches (sk_cuda_kernel_names).
const char* dense_kernel_names();
const char* experts_kernel_names();
const char* bsr_kernel_names();
const char* nm_kernel_names();
const char* route_kernel_names();
const char* wgmma_kernel_names();

// The sm_90a warpgroup (wgmma) GEMMs, compiled for sm_90a only (wgmma.cu).
// *_supported says whether a problem fits the kernel's alignment rules; the
// callers check use_wgmma() (device is sm_90 and the option is on) first.
bool wgmma_linear_supported(int64_t m, int64_t n, int64_t k);
int wgmma_linear(const bf16* x, const bf16* w, const float* bias, void* y, int ydt, int64_t m, int64_t n, int64_t k,
                 int act, cudaStream_t s);
bool wgmma_grouped_supported(int64_t n, int64_t k);
// Grouped (optionally gated) GEMM over experts; tile_start/offsets as in experts.cu.
int wgmma_grouped(const bf16* xs, const int32_t* offsets, const int32_t* tile_start, int64_t experts,
                  int64_t max_tiles, const bf16* w, const bf16* w3, const float* bias, void* y, int ydt, int64_t rows,
                  int64_t n, int64_t k, int act, cudaStream_t s);
// Rows per tile of the grouped wgmma kernel (the tile schedule is built for it).
constexpr int kWgmmaGroupedBM = 128;

}  // namespace skc
