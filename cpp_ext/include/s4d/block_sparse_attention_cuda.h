/*
 * Sculpt4D block-sparse attention, CUDA backend: C ABI (no PyTorch / TensorRT types), shared by
 * the PyTorch op (cpp_ext/cuda/torch_bindings.cpp) and the TensorRT plugin, which launch the
 * same kernel through s4d_bsa_forward_cuda.
 *
 * Semantics, layout and CSR format are those of s4d/block_sparse_attention.h (the CPU kernel):
 *   q, k, v, out   device memory, contiguous [batch_heads, seq_len, head_dim] (= [B, H, N, D]
 *                  with batch_heads = B*H), one dtype: S4D_BSA_DTYPE_F16 or S4D_BSA_DTYPE_BF16;
 *                  16-byte aligned (any tensor allocator's base pointer is).
 *   lse            nullable, device float32 [batch_heads, seq_len]: natural log-sum-exp of the
 *                  scaled scores of each query row; -inf for a row whose key-block list is
 *                  empty (its output row is zero).
 *   kv_offsets     device int32 [num_query_blocks + 1];
 *   kv_indices     device int32 [nnz] (nullable when nnz == 0): key blocks of query block r are
 *                  kv_indices[kv_offsets[r] .. kv_offsets[r+1]), visited in that order.
 *   seq_len == block_size * num_query_blocks; query block r = tokens [r*bs, (r+1)*bs), key block
 *   c = tokens [c*bs, (c+1)*bs).
 *
 * Supported here: head_dim and block_size each 16, 32, 64 or 128 (s4d_bsa_cuda_size_supported);
 * dtype fp16 / bf16 (fp32 softmax and
 * accumulation inside); compute capability >= 8.0 (sm_80 tensor-core path, also used on sm_90);
 * seq_len * head_dim < 2^31 (one head's elements) and batch_heads * num_query_blocks < 2^31.
 *
 * The CSR lists live on the device, so s4d_bsa_forward_cuda cannot validate their CONTENTS
 * without a copy: validate a host copy once with s4d_bsa_check_args_cuda (the PyTorch op does
 * unless told not to; an engine validates when it bakes the lists in). On malformed device
 * lists the kernel stays memory-safe (offsets are clamped into [0, nnz], indices into
 * [0, num_query_blocks)) but the result is unspecified.
 *
 * Return codes are the shared S4D_BSA_OK / S4D_BSA_ERR_* of s4d/block_sparse_attention.h plus
 * S4D_BSA_ERR_ALIGNMENT below; s4d_bsa_cuda_last_error() gives the message (per thread).
 */
#ifndef S4D_BLOCK_SPARSE_ATTENTION_CUDA_H_
#define S4D_BLOCK_SPARSE_ATTENTION_CUDA_H_

#include <stdint.h>

#include "s4d/block_sparse_attention.h"

#ifdef __cplusplus
extern "C" {
#endif

#define S4D_BSA_CUDA_ABI_VERSION 1

/* dtype codes: S4D_BSA_DTYPE_F32 (0, not supported on CUDA) and S4D_BSA_DTYPE_BF16 (1) come
 * from the shared header. */
#define S4D_BSA_DTYPE_F16 2

/* CUDA-only return code: a tensor pointer is not 16-byte aligned. */
#define S4D_BSA_ERR_ALIGNMENT 32

/* Head dims and block sizes with a compiled kernel. The one home of this rule in C/C++: the host
 * checks, the PyTorch binding and the TensorRT plugin core call it, the kernel's dispatch
 * instantiates exactly these, and sdk.kernels.cuda mirrors them (a test proves the sets equal). */
#define S4D_BSA_CUDA_SIZES_TEXT "16, 32, 64, 128"
static inline int s4d_bsa_cuda_size_supported(int64_t v) { return v == 16 || v == 32 || v == 64 || v == 128; }

/* Host-only validation (no CUDA call): scalar arguments, and - when kv_offsets_host is not
 * NULL - the CSR lists in HOST memory: kv_offsets[0] == 0, non-decreasing, every row at most
 * num_query_blocks long, kv_offsets[num_query_blocks] == nnz, every index in
 * [0, num_query_blocks), no index twice in one row. Returns S4D_BSA_OK or S4D_BSA_ERR_*. */
int s4d_bsa_check_args_cuda(int64_t batch_heads, int64_t seq_len, int64_t head_dim,
                            int64_t block_size, int64_t num_query_blocks, float scale, int dtype,
                            const int32_t* kv_offsets_host /* nullable */,
                            const int32_t* kv_indices_host /* nullable if nnz == 0 */,
                            int64_t nnz);

/* 1 if (head_dim, block_size, dtype) has a compiled CUDA kernel, else 0. */
int s4d_bsa_cuda_supported(int64_t head_dim, int64_t block_size, int dtype);

/* Forward pass, asynchronous on `stream` (a cudaStream_t; NULL = legacy default stream), on
 * the current CUDA device. Validates scalars, pointers and alignment (not CSR contents, see
 * above), launches, and reports launch errors. */
int s4d_bsa_forward_cuda(const void* q, const void* k, const void* v, void* out,
                         float* lse /* nullable */, int64_t batch_heads, int64_t seq_len,
                         int64_t head_dim, int64_t block_size,
                         const int32_t* kv_offsets /* device */,
                         const int32_t* kv_indices /* device */, int64_t nnz,
                         int64_t num_query_blocks, float scale, int dtype, void* stream);

/* Message of the last failure on the calling thread ("" if none). */
const char* s4d_bsa_cuda_last_error(void);

int s4d_bsa_cuda_abi_version(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* S4D_BLOCK_SPARSE_ATTENTION_CUDA_H_ */
