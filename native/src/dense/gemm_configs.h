// Tile shapes of the dense GEMM per instruction set. Shared by the dense
// family (gemm_<isa>.cc) and every family that runs the dense micro-kernel on
// sub-blocks (e.g. sddmm in native/src/bsr/), so both tune from one place.
// Each struct only exists where the file's flags define its vector traits.
#pragma once
#include "../common/simd.h"

namespace sparsekit {
namespace {  // internal linkage: see simd.h

struct GemmCfg_scalar {
  using V = ScalarVec;
  static constexpr int MR = 4;
  static constexpr int NRV = 4;
  static constexpr int KC = 256;
  static constexpr int KC_PLAIN = KC;  // plain product slices (see the AVX-512 config)
  static constexpr int MC_MAX = 96;
  static constexpr int NC_PANELS_MAX = 32;
  static constexpr int STREAM_PF_FLOATS = 0;  // no streaming path: KC slices
  static constexpr bool PREFETCH_C = false;
  static constexpr int PANEL_MAJOR_ROWS = 0;  // see for_each_tile
  static constexpr int64_t PANEL_MAJOR_X_FLOATS = 0;
};

#if defined(__AVX2__) && defined(__FMA__)
struct GemmCfg_avx2 {
  using V = Avx2Vec;
  static constexpr int MR = 6;
  static constexpr int NRV = 2;
  static constexpr int KC = 256;
  static constexpr int KC_PLAIN = KC;  // plain product slices (see the AVX-512 config)
  static constexpr int MC_MAX = 240;
  static constexpr int NC_PANELS_MAX = 32;
  static constexpr int STREAM_PF_FLOATS = 2048;  // W floats prefetched ahead in the decode path
  static constexpr bool PREFETCH_C = true;  // partial sums of the next tile, ahead of its reload
  static constexpr int PANEL_MAJOR_ROWS = 24;  // small batches walk W panel by panel (for_each_tile)
  static constexpr int64_t PANEL_MAJOR_X_FLOATS = 80 * 1024;  // when their x block fits L2
};
#endif

#if defined(__AVX512F__)
struct GemmCfg_avx512 {
  using V = Avx512Vec;
  static constexpr int MR = 8;
  static constexpr int NRV = 2;
  static constexpr int KC = 192;
  // Depth of the plain (not gated) product's k slices: Zen 5's 1 MB L2
  // feeds a whole 2048-deep W panel slice (256 KB) fast enough, and fewer
  // slices mean fewer C tile reloads and slice switches. Against 192, 2
  // threads, gemm_bench: 16×4096×4096 1.17x, 128-2048 rows 1.07-1.16x,
  // 128×14336×4096 1.17x; Mixtral-shaped experts at T = 512 1.04x (their
  // down projection). The gated product keeps KC: deeper slices measured
  // no faster there (its W1 and W3 panels alternate).
  static constexpr int KC_PLAIN = 2048;
  static constexpr int MC_MAX = 240;
  static constexpr int NC_PANELS_MAX = 16;
  static constexpr int STREAM_PF_FLOATS = 2048;  // W floats prefetched ahead in the decode path
  static constexpr bool PREFETCH_C = true;  // partial sums of the next tile, ahead of its reload
  // Small batches walk W panel by panel (for_each_tile) up to 64 rows whose x
  // block fits 768 KB (Zen 5's L2 is 1 MB): measured there against 24 rows /
  // 80 K floats, 2 threads, 32-64 rows: 1.02-1.11x (fine-grained experts'
  // groups are ~48 tokens at T = 512).
  static constexpr int PANEL_MAJOR_ROWS = 64;
  static constexpr int64_t PANEL_MAJOR_X_FLOATS = 192 * 1024;
};
#endif

#if defined(__ARM_NEON)
struct GemmCfg_neon {
  using V = NeonVec;
  static constexpr int MR = 6;
  static constexpr int NRV = 4;
  static constexpr int KC = 256;
  static constexpr int KC_PLAIN = KC;  // plain product slices (see the AVX-512 config)
  static constexpr int MC_MAX = 240;
  static constexpr int NC_PANELS_MAX = 32;
  static constexpr int STREAM_PF_FLOATS = 2048;  // W floats prefetched ahead in the decode path
  static constexpr bool PREFETCH_C = true;  // partial sums of the next tile, ahead of its reload
  static constexpr int PANEL_MAJOR_ROWS = 24;  // small batches walk W panel by panel (for_each_tile)
  static constexpr int64_t PANEL_MAJOR_X_FLOATS = 80 * 1024;  // when their x block fits L2
};
#endif

}  // namespace
}  // namespace sparsekit
