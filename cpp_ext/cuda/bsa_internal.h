// Internal (non-ABI) helpers shared by block_sparse_attention.cu and
// block_sparse_attention_host.cpp.
#ifndef S4D_BSA_INTERNAL_H_
#define S4D_BSA_INTERNAL_H_

// Sets the thread's CUDA-attention error message; returns `code`.
int s4d_bsa_cuda_set_error(int code, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void s4d_bsa_cuda_clear_error();

#endif  // S4D_BSA_INTERNAL_H_
