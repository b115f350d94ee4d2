// Host side of the CUDA block-sparse attention: argument / CSR validation and the error
// channel. Plain C++17 (no CUDA headers), so CI builds and tests it without a GPU.
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <new>
#include <vector>

#include "bsa_internal.h"
#include "s4d/block_sparse_attention_cuda.h"

namespace {
thread_local char g_bsa_error[1024] = "";
}  // namespace

int s4d_bsa_cuda_set_error(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(g_bsa_error, sizeof(g_bsa_error), fmt, ap);
  va_end(ap);
  return code;
}

void s4d_bsa_cuda_clear_error() { g_bsa_error[0] = '\0'; }

extern "C" {

const char* s4d_bsa_cuda_last_error(void) { return g_bsa_error; }

int s4d_bsa_cuda_abi_version(void) { return S4D_BSA_CUDA_ABI_VERSION; }

int s4d_bsa_cuda_supported(int64_t head_dim, int64_t block_size, int dtype) {
  return s4d_bsa_cuda_size_supported(head_dim) && s4d_bsa_cuda_size_supported(block_size) &&
         (dtype == S4D_BSA_DTYPE_F16 || dtype == S4D_BSA_DTYPE_BF16);
}

int s4d_bsa_check_args_cuda(int64_t batch_heads, int64_t seq_len, int64_t head_dim, int64_t block_size,
                            int64_t num_query_blocks, float scale, int dtype, const int32_t* kv_offsets,
                            const int32_t* kv_indices, int64_t nnz) {
  s4d_bsa_cuda_clear_error();
  const char* fn = "s4d_bsa_forward_cuda";
  if (dtype != S4D_BSA_DTYPE_F16 && dtype != S4D_BSA_DTYPE_BF16)
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_DTYPE,
                                  "%s: unsupported dtype code %d (expected %d = float16 or %d = bfloat16; "
                                  "float32 is CPU-only)",
                                  fn, dtype, S4D_BSA_DTYPE_F16, S4D_BSA_DTYPE_BF16);
  if (batch_heads < 0)
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_SHAPE, "%s: batch_heads must be >= 0, got %lld", fn,
                                  static_cast<long long>(batch_heads));
  if (!s4d_bsa_cuda_size_supported(head_dim))
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_HEAD_DIM,
                                  "%s: unsupported head_dim %lld (the CUDA kernel supports " S4D_BSA_CUDA_SIZES_TEXT ")",
                                  fn, static_cast<long long>(head_dim));
  if (!s4d_bsa_cuda_size_supported(block_size))
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_BLOCK_SIZE,
                                  "%s: unsupported block_size %lld (the CUDA kernel supports " S4D_BSA_CUDA_SIZES_TEXT ")",
                                  fn, static_cast<long long>(block_size));
  if (num_query_blocks < 1)
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_SHAPE, "%s: num_query_blocks must be >= 1, got %lld", fn,
                                  static_cast<long long>(num_query_blocks));
  if (num_query_blocks > INT32_MAX / 256 || seq_len != block_size * num_query_blocks)
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_SHAPE,
                                  "%s: seq_len (%lld) must equal block_size (%lld) * num_query_blocks (%lld) = %lld",
                                  fn, static_cast<long long>(seq_len), static_cast<long long>(block_size),
                                  static_cast<long long>(num_query_blocks),
                                  static_cast<long long>(block_size * num_query_blocks));
  if (seq_len * head_dim > INT32_MAX)
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_SHAPE,
                                  "%s: seq_len (%lld) * head_dim (%lld) must be below 2^31 (elements of one head)", fn,
                                  static_cast<long long>(seq_len), static_cast<long long>(head_dim));
  if (batch_heads * num_query_blocks > INT32_MAX)
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_SHAPE,
                                  "%s: batch_heads (%lld) x query blocks (%lld) exceeds the launch grid limit", fn,
                                  static_cast<long long>(batch_heads), static_cast<long long>(num_query_blocks));
  if (!std::isfinite(scale))
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_SCALE, "%s: scale must be finite, got %g", fn, static_cast<double>(scale));
  if (nnz < 0 || nnz > INT32_MAX)
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_CSR, "%s: nnz (length of kv_indices) must be in [0, 2^31), got %lld", fn,
                                  static_cast<long long>(nnz));
  if (!kv_offsets) return S4D_BSA_OK;  // scalar checks only

  const int64_t nb = num_query_blocks;
  if (kv_offsets[0] != 0)
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_CSR, "%s: kv_offsets[0] must be 0, got %d", fn, kv_offsets[0]);
  for (int64_t r = 0; r < nb; ++r) {
    const int64_t len = static_cast<int64_t>(kv_offsets[r + 1]) - kv_offsets[r];
    if (len < 0)
      return s4d_bsa_cuda_set_error(S4D_BSA_ERR_CSR,
                                    "%s: kv_offsets must be non-decreasing, but kv_offsets[%lld] = %d > kv_offsets[%lld] = %d",
                                    fn, static_cast<long long>(r), kv_offsets[r], static_cast<long long>(r + 1),
                                    kv_offsets[r + 1]);
    if (len > nb)
      return s4d_bsa_cuda_set_error(S4D_BSA_ERR_CSR,
                                    "%s: query block %lld lists %lld key blocks but there are only %lld", fn,
                                    static_cast<long long>(r), static_cast<long long>(len), static_cast<long long>(nb));
  }
  if (kv_offsets[nb] != nnz)
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_CSR,
                                  "%s: kv_offsets[%lld] = %d must equal the number of kv_indices (%lld)", fn,
                                  static_cast<long long>(nb), kv_offsets[nb], static_cast<long long>(nnz));
  if (nnz > 0 && !kv_indices)
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_NULL_POINTER, "%s: kv_indices is NULL but nnz = %lld", fn,
                                  static_cast<long long>(nnz));
  std::vector<int64_t> seen;
  try {
    seen.assign(static_cast<size_t>(nb), -1);
  } catch (const std::bad_alloc&) {
    return s4d_bsa_cuda_set_error(S4D_BSA_ERR_ALLOC, "%s: out of host memory while checking the CSR lists", fn);
  }
  for (int64_t r = 0; r < nb; ++r) {
    for (int32_t e = kv_offsets[r]; e < kv_offsets[r + 1]; ++e) {
      const int32_t c = kv_indices[e];
      if (c < 0 || c >= nb)
        return s4d_bsa_cuda_set_error(S4D_BSA_ERR_CSR,
                                      "%s: kv_indices[%d] = %d (query block %lld) is out of range [0, %lld)", fn, e, c,
                                      static_cast<long long>(r), static_cast<long long>(nb));
      if (seen[static_cast<size_t>(c)] == r)
        return s4d_bsa_cuda_set_error(S4D_BSA_ERR_CSR, "%s: query block %lld lists key block %d more than once", fn,
                                      static_cast<long long>(r), c);
      seen[static_cast<size_t>(c)] = r;
    }
  }
  return S4D_BSA_OK;
}

}  // extern "C"
