"""Native attention kernels (C++ CPU kernel via ctypes; built on first use)."""

from sdk.kernels.cpu import (  # noqa: F401
    block_sparse_attention_cpu,
    build_log,
    cpu_kernel_available,
    cpu_kernel_info,
    cpu_kernel_unavailable_reason,
)
