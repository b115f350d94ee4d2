"""What the native attention kernels accept: the one home of their size rules and of the CSR
key-block-list checks both wrappers run before calling into C++.

No torch at import (the checks use it lazily), so the sparse-attention dispatcher can ask
:func:`cuda_kernel_supports` without loading the CUDA build machinery.
"""

from __future__ import annotations

from typing import Any

# Head dims and block sizes with a compiled CUDA kernel: mirrors s4d_bsa_cuda_size_supported in
# cpp_ext/include/s4d/block_sparse_attention_cuda.h (tests/test_cuda_host.py proves them equal).
KERNEL_SIZES = (16, 32, 64, 128)
# The CPU kernel takes any multiple of 8 up to these.
CPU_MAX_HEAD_DIM = 256
CPU_MAX_BLOCK_SIZE = 256


def cuda_kernel_supports(head_dim: int, block_size: int) -> bool:
    """Whether the CUDA kernel has a compiled variant for this head dim and block size."""
    return head_dim in KERNEL_SIZES and block_size in KERNEL_SIZES


def check_cuda_sizes(head_dim: int, block_size: Any) -> None:
    """``ValueError`` unless head dim and block size are sizes the CUDA kernel supports (16/32/64/128)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size not in KERNEL_SIZES:
        raise ValueError(f"block_size must be one of {KERNEL_SIZES}, got {block_size!r}")
    if head_dim not in KERNEL_SIZES:
        raise ValueError(f"head dim D must be one of {KERNEL_SIZES}, got {head_dim}")


def check_cpu_sizes(head_dim: int, block_size: Any) -> None:
    """``ValueError`` unless head dim and block size suit the C++ CPU kernel (multiples of 8 up to its limits)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if block_size % 8 != 0 or block_size > CPU_MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be a multiple of 8 in [8, {CPU_MAX_BLOCK_SIZE}], got {block_size}")
    if head_dim % 8 != 0 or not 8 <= head_dim <= CPU_MAX_HEAD_DIM:
        raise ValueError(f"head dim D (last axis of q) must be a multiple of 8 in [8, {CPU_MAX_HEAD_DIM}], "
                         f"got {head_dim}")


def check_csr_tensor(name: str, t: object, device_type: str | None = None):
    """``t`` as a contiguous 1-D int32 tensor (``kv_offsets`` / ``kv_indices``), on
    ``device_type`` when given; ``ValueError`` naming what is wrong otherwise."""
    import torch

    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of dtype int32, got {type(t).__name__}")
    if device_type is not None and t.device.type != device_type:
        raise ValueError(f"{name} must be a {device_type.upper()} tensor, got device {t.device}")
    if t.dtype != torch.int32:
        raise ValueError(f"{name} must have dtype torch.int32, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.contiguous()
