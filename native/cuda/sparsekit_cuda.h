/*
 * The C interface of libsparsekit_cuda, the optional CUDA plugin.
 *
 * The Node addon never links against CUDA: it dlopen()s this library at run
 * time, checks sk_cuda_abi_version() == SK_CUDA_ABI_VERSION, resolves every
 * function below by name, and asks sk_cuda_query() whether a driver and a GPU
 * are there. This header is plain C with no CUDA include so that the CPU side
 * (native/src/common/cuda_plugin.cc) can include it. Any change to a signature,
 * an enum value or a struct layout here must bump SK_CUDA_ABI_VERSION.
 *
 * Conventions
 *  - Every function returns 0 (SK_CUDA_OK) or an SK_CUDA_E* code; the message
 *    of the last failure on the calling thread is sk_cuda_last_error().
 *  - Pointers named d_* are device pointers from sk_cuda_malloc; h_* are host
 *    pointers. Shapes are int64. Matrices are row-major.
 *  - Every op is enqueued on the given stream and returns without waiting.
 *    Results are ready after sk_cuda_stream_synchronize(stream).
 *  - Linear-like ops compute y = act(x · Wᵀ + bias) with W in nn.Linear
 *    layout [out, in]; x and W share one dtype (f32 or bf16), bias is f32,
 *    accumulation is f32, y is written in y_dtype (f32 or bf16, rounded to
 *    nearest even).
 *  - Index arrays on the device (offsets, slots, BSR structure, N:M indices)
 *    must have been validated by the caller; the kernels still bound-check
 *    every index they read so that a bad one skips work instead of touching
 *    memory outside the buffers.
 */
#ifndef SPARSEKIT_CUDA_H_
#define SPARSEKIT_CUDA_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SK_CUDA_ABI_VERSION 1

#if defined(_WIN32)
#define SK_CUDA_API __declspec(dllexport)
#else
#define SK_CUDA_API __attribute__((visibility("default")))
#endif

typedef struct sk_cuda_stream_s* sk_cuda_stream; /* a cudaStream_t */

enum {
  SK_CUDA_OK = 0,
  SK_CUDA_EINVAL = 1,    /* bad argument (shape, dtype, null pointer) */
  SK_CUDA_ENOMEM = 2,    /* device allocation failed */
  SK_CUDA_ERUNTIME = 3,  /* a CUDA runtime call or a kernel launch failed */
  SK_CUDA_ENODRIVER = 4, /* no usable driver (sk_cuda_query) */
  SK_CUDA_ENODEVICE = 5, /* no GPU (sk_cuda_query) */
  SK_CUDA_EUNSUPPORTED = 6 /* the GPU or the requested variant is not supported */
};

typedef enum { SK_F32 = 0, SK_BF16 = 1, SK_I32 = 2 } sk_dtype;

/* Same values as sparsekit::Activation (native/include/sparsekit/common.h). */
typedef enum { SK_ACT_NONE = 0, SK_ACT_RELU = 1, SK_ACT_GELU = 2, SK_ACT_GELU_TANH = 3, SK_ACT_SILU = 4 } sk_activation;

typedef struct {
  int status;               /* SK_CUDA_OK when a usable GPU is there, else ENODRIVER / ENODEVICE / EUNSUPPORTED */
  int runtime_version;      /* cudaRuntimeGetVersion of the statically linked runtime, e.g. 13000 */
  int driver_version;       /* cudaDriverGetVersion; 0 when no driver could be loaded */
  int device_count;
  int device;               /* the device the plugin uses (0) */
  int sm_major, sm_minor;
  int multiprocessors;
  int has_sm90a;            /* Hopper-only (sm_90a) kernels can run on this device */
  uint64_t total_memory;    /* bytes */
  char name[256];
  char message[512];        /* why status is not OK, in words */
} sk_cuda_device_info;

/* ---- runtime ---------------------------------------------------------------- */

SK_CUDA_API int sk_cuda_abi_version(void);
/* Fills *out. Never crashes without a driver: returns out->status. */
SK_CUDA_API int sk_cuda_query(sk_cuda_device_info* out);
/* Message of the last failure on this thread ("" if none). */
SK_CUDA_API const char* sk_cuda_last_error(void);
/* Names of the kernel variants the plugin will use for this device, e.g.
 * "bf16 linear: mma.sync m16n8k16 128x128x32 4-stage cp.async". */
SK_CUDA_API const char* sk_cuda_kernel_names(void);
/* Tuning and test switches, by name: "wgmma" (1: use the sm_90a warpgroup GEMM where the
 * device has it, the default; 0: always the mma.sync kernels). EINVAL for an unknown name. */
SK_CUDA_API int sk_cuda_set_option(const char* name, int64_t value);

SK_CUDA_API int sk_cuda_stream_create(sk_cuda_stream* out);
SK_CUDA_API int sk_cuda_stream_destroy(sk_cuda_stream s);
SK_CUDA_API int sk_cuda_stream_synchronize(sk_cuda_stream s);
/* Work enqueued on `waiter` after this call starts only once the work enqueued
 * on `producer` before it has finished (an event recorded and waited on). */
SK_CUDA_API int sk_cuda_stream_wait(sk_cuda_stream waiter, sk_cuda_stream producer);

/* Stream-ordered allocation: the memory may be used by work enqueued on `s`
 * after this call (or on other streams after sk_cuda_stream_wait on s). */
SK_CUDA_API int sk_cuda_malloc(void** d_out, size_t bytes, sk_cuda_stream s);
/* Frees once the work enqueued on `s` so far has finished. */
SK_CUDA_API int sk_cuda_free(void* d_ptr, sk_cuda_stream s);
SK_CUDA_API int sk_cuda_memcpy_h2d(void* d_dst, const void* h_src, size_t bytes, sk_cuda_stream s);
/* Returns when the bytes are in h_dst (pageable host memory: the copy is synchronous). */
SK_CUDA_API int sk_cuda_memcpy_d2h(void* h_dst, const void* d_src, size_t bytes, sk_cuda_stream s);
SK_CUDA_API int sk_cuda_memcpy_d2d(void* d_dst, const void* d_src, size_t bytes, sk_cuda_stream s);
SK_CUDA_API int sk_cuda_memset(void* d_dst, int byte, size_t bytes, sk_cuda_stream s);
/* dst[i] = src[i] converted (f32 <-> bf16, round to nearest even; same dtype copies). */
SK_CUDA_API int sk_cuda_convert(void* d_dst, sk_dtype dst_dtype, const void* d_src, sk_dtype src_dtype, int64_t n,
                                sk_cuda_stream s);

/* dst[i] = scale · u_i with u_i uniform in [−1, 1), a pure function of (seed, i): device-side
 * data for benchmarks and tests without a host upload. f32 or bf16. */
SK_CUDA_API int sk_cuda_fill_random(void* d_dst, sk_dtype dtype, int64_t n, uint64_t seed, float scale,
                                    sk_cuda_stream s);

/* ---- dense ------------------------------------------------------------------ */

/* y[m, n] = act(x[m, k] · w[n, k]ᵀ + bias[n]). */
SK_CUDA_API int sk_cuda_linear(sk_dtype dtype, const void* d_x, const void* d_w, const float* d_bias, void* d_y,
                               sk_dtype y_dtype, int64_t m, int64_t n, int64_t k, int act, sk_cuda_stream s);

/* ---- experts ---------------------------------------------------------------- */

/* For each expert e, rows offsets[e] .. offsets[e+1] of xs [rows, k]:
 *   plain (d_w3 null): y = act(xs · W_eᵀ + bias_e)     W: [E, n, k], bias [E, n] or null
 *   gated:             y = act(xs · W_eᵀ) ⊙ (xs · W3_eᵀ)  (bias must be null)
 * offsets: device int32 [E + 1], 0 = o[0] ≤ … ≤ o[E] = rows. */
SK_CUDA_API int sk_cuda_grouped_linear(sk_dtype dtype, const void* d_xs, const int32_t* d_offsets, int64_t experts,
                                       const void* d_w, const void* d_w3, const float* d_bias, void* d_y,
                                       sk_dtype y_dtype, int64_t rows, int64_t n, int64_t k, int act, sk_cuda_stream s);

/* xs[i] = x[sorted_slots[i] / k] for i < rows; x: [tokens, d]. */
SK_CUDA_API int sk_cuda_permute(sk_dtype dtype, const void* d_x, int64_t tokens, int64_t d, const int32_t* d_sorted_slots,
                                int64_t rows, int64_t k, void* d_xs, sk_cuda_stream s);

/* row_of_slot[s] = i where sorted_slots[i] = s, −1 for slots not listed; row_of_slot: [n_slots]. */
SK_CUDA_API int sk_cuda_invert_slots(const int32_t* d_sorted_slots, int64_t rows, int32_t* d_row_of_slot,
                                     int64_t n_slots, sk_cuda_stream s);

/* y[t] = Σ_j weights[t·k + j] · ys[row_of_slot[t·k + j]] (j = 0 … k−1 in order, −1 skipped);
 * ys: [rows, d] in dtype, weights f32 [tokens·k], y: [tokens, d] in y_dtype. */
SK_CUDA_API int sk_cuda_combine(sk_dtype dtype, const void* d_ys, int64_t rows, int64_t d, const int32_t* d_row_of_slot,
                                const float* d_weights, int64_t tokens, int64_t k, void* d_y, sk_dtype y_dtype,
                                sk_cuda_stream s);

/* y[t, :] += g_t · s[t, :] for t < rows, where g_t = 1 (d_gate null) or σ(gate[t]) (gate f32 [rows]);
 * y and s [rows, d] in dtype. Shared experts of an MoE block (Qwen2-MoE gates them). */
SK_CUDA_API int sk_cuda_add_rows(sk_dtype dtype, void* d_y, const void* d_s, const float* d_gate, int64_t rows, int64_t d,
                                 sk_cuda_stream s);

/* ---- block-sparse (BSR) ----------------------------------------------------------- */

/* A [rows, cols] matrix in blocks [br, bc]: row_ptr [rows/br + 1], col_idx [nnz], block_row [nnz]
 * (the block row of each kept block, redundant with row_ptr, for kernels that walk blocks),
 * values [nnz, br, bc] (each block row-major). */
typedef struct {
  int64_t rows, cols, br, bc, nnz;
  const int32_t* d_row_ptr;
  const int32_t* d_col_idx;
  const int32_t* d_block_row;
  const void* d_values; /* may be null for a pattern (sddmm's mask) */
} sk_cuda_bsr;

/* y[m, w.rows] = act(x[m, w.cols] · Wᵀ + bias). */
SK_CUDA_API int sk_cuda_bsr_linear(sk_dtype dtype, const void* d_x, int64_t m, const sk_cuda_bsr* w, const float* d_bias,
                                   void* d_y, sk_dtype y_dtype, int act, sk_cuda_stream s);

/* out[nnz, br, bc] = blocks of a[m, k] · b[n, k]ᵀ on mask's pattern (mask: [m, n]). */
SK_CUDA_API int sk_cuda_sddmm(sk_dtype dtype, const void* d_a, const void* d_b, int64_t k, const sk_cuda_bsr* mask,
                              void* d_out, sk_dtype out_dtype, sk_cuda_stream s);

/* ---- N:M sparsity ------------------------------------------------------------------ */

/* 2:4 bf16 on sparse tensor cores (mma.sp). W [n, k] as PyTorch / CUTLASS store it:
 * values bf16 [n, k/2] (the two kept values of each group of four, in column order) and
 * meta int16 [n, k/16] in CUTLASS's reordered layout (torch.sparse's
 * _sparse_semi_structured_from_dense_cutlass). Needs n % 32 == 0, k % 64 == 0. */
SK_CUDA_API int sk_cuda_nm24_linear(const void* d_x, const void* d_values, const uint16_t* d_meta, const float* d_bias,
                                    void* d_y, sk_dtype y_dtype, int64_t m, int64_t n, int64_t k, int act,
                                    sk_cuda_stream s);

/* General N:M on CUDA cores: values [n, k·N/M] (dtype) and idx uint8 [n, k·N/M], the position
 * 0 … M−1 inside its group of each kept value (unused slots hold value 0). k % M == 0. */
SK_CUDA_API int sk_cuda_nm_linear(sk_dtype dtype, const void* d_x, const void* d_values, const uint8_t* d_idx,
                                  const float* d_bias, void* d_y, sk_dtype y_dtype, int64_t m, int64_t n, int64_t k,
                                  int nm_n, int nm_m, int act, sk_cuda_stream s);

/* ---- routing ---------------------------------------------------------------------- */

enum { SK_SCORE_SOFTMAX = 0, SK_SCORE_SIGMOID = 1, SK_SCORE_NONE = 2 };
enum { SK_GROUP_MAX = 0, SK_GROUP_SUM_TOP2 = 1 };

typedef struct {
  int score;              /* SK_SCORE_* */
  int score_before_topk;  /* 1: scores over all experts, then top-k; 0: top-k on logits, score the k */
  int64_t k;
  int renormalize;
  float scaling_factor;
  const float* d_selection_bias; /* [E] added for selection only, or null */
  int64_t groups;                /* 0 or 1: no group-limited selection */
  int64_t topk_groups;
  int group_score;               /* SK_GROUP_* */
} sk_cuda_route_options;

/* Top-k routing of logits [T, E] (f32), dropless. Writes expert_ids [T, k] (descending by
 * selection key, ties to the lower expert), weights [T, k], tokens_per_expert [E],
 * expert_offsets [E + 1], sorted_slots [T·k] (slots t·k + j grouped by expert, stable in slot
 * order) and row_of_slot [T·k] (its inverse). Same semantics as the CPU route(). */
SK_CUDA_API int sk_cuda_route(const float* d_logits, int64_t tokens, int64_t experts, const sk_cuda_route_options* o,
                              int32_t* d_expert_ids, float* d_weights, int32_t* d_tokens_per_expert,
                              int32_t* d_expert_offsets, int32_t* d_sorted_slots, int32_t* d_row_of_slot,
                              sk_cuda_stream s);

#ifdef __cplusplus
}
#endif

#endif /* SPARSEKIT_CUDA_H_ */
