/*
 * Sculpt4D block-sparse attention: C ABI shared by the CPU kernel and the CUDA kernel.
 *
 * Layout (every backend):
 *   q, k, v, out   contiguous [batch_heads, seq_len, head_dim] (i.e. [B, H, N, D] flattened
 *                  over B*H), all of one dtype (S4D_BSA_DTYPE_*).
 *   lse            optional (may be NULL) float32 [batch_heads, seq_len]: the natural
 *                  log-sum-exp of the scaled scores (scale * q.k) of each query row over
 *                  the keys it attends; -inf for a row whose key-block list is empty.
 *   kv_offsets     int32 [num_query_blocks + 1], kv_offsets[0] == 0, non-decreasing.
 *   kv_indices     int32 [kv_offsets[num_query_blocks]]: the key blocks of query block r
 *                  are kv_indices[kv_offsets[r] .. kv_offsets[r+1]) (CSR, as built by
 *                  sdk.sparse.pattern.SparsePattern.kv_block_lists), each in
 *                  [0, num_query_blocks) and listed at most once per row.
 *
 * Query block r covers query tokens [r*block_size, (r+1)*block_size); key block c covers key
 * tokens [c*block_size, (c+1)*block_size). seq_len must equal block_size * num_query_blocks.
 * Key blocks are visited in CSR order with an online (FlashAttention-style) softmax and float32
 * accumulation; a query row whose list is empty gets a zero output.
 *
 * Supported: head_dim a multiple of 8 in [8, 256]; block_size a multiple of 8 in [8, 256];
 * dtype float32 or bfloat16 (bf16 in and out, float32 inside). out must not alias q, k or v.
 *
 * Every entry point returns S4D_BSA_OK (0) on success or one of the nonzero S4D_BSA_ERR_*
 * codes; s4d_bsa_last_error() then returns a human-readable message (per calling thread).
 */
#ifndef S4D_BLOCK_SPARSE_ATTENTION_H_
#define S4D_BLOCK_SPARSE_ATTENTION_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define S4D_BSA_ABI_VERSION 1

/* dtype codes */
#define S4D_BSA_DTYPE_F32 0
#define S4D_BSA_DTYPE_BF16 1

/* limits */
#define S4D_BSA_MAX_HEAD_DIM 256
#define S4D_BSA_MAX_BLOCK_SIZE 256

/* return codes */
#define S4D_BSA_OK 0
#define S4D_BSA_ERR_NULL_POINTER 1   /* a required pointer is NULL */
#define S4D_BSA_ERR_SHAPE 2          /* bad batch_heads / seq_len / block count */
#define S4D_BSA_ERR_HEAD_DIM 3       /* head_dim unsupported */
#define S4D_BSA_ERR_BLOCK_SIZE 4     /* block_size unsupported */
#define S4D_BSA_ERR_CSR 5            /* kv_offsets / kv_indices malformed */
#define S4D_BSA_ERR_DTYPE 6          /* dtype code unsupported */
#define S4D_BSA_ERR_SCALE 7          /* scale not finite */
#define S4D_BSA_ERR_ALLOC 8          /* scratch allocation failed */
#define S4D_BSA_ERR_DEVICE 9         /* backend/device failure (CUDA) */

/* Block-sparse attention forward on the CPU (OpenMP over (batch_head, query block)).
 * num_threads <= 0 uses the OpenMP default. Returns S4D_BSA_OK or an S4D_BSA_ERR_* code. */
int s4d_bsa_forward_cpu(const void* q, const void* k, const void* v, void* out,
                        float* lse /* nullable, [batch_heads, seq_len] */,
                        int64_t batch_heads, int64_t seq_len, int64_t head_dim,
                        int64_t block_size, const int32_t* kv_offsets,
                        const int32_t* kv_indices, int64_t num_query_blocks, float scale,
                        int dtype /* 0 = fp32, 1 = bf16 */, int num_threads);

/* Message describing the last failure on the calling thread ("" if none). */
const char* s4d_bsa_last_error(void);

/* S4D_BSA_ABI_VERSION of the compiled library. */
int s4d_bsa_abi_version(void);

/* Instruction set the CPU kernel was compiled for: "avx512", "avx2", "generic". */
const char* s4d_bsa_cpu_isa(void);

/* 1 if the CPU kernel was built with OpenMP (multi-threaded), else 0. */
int s4d_bsa_cpu_has_openmp(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* S4D_BLOCK_SPARSE_ATTENTION_H_ */
