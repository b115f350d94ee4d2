"""The host-side C++ of the CUDA kernels, built with g++ and called via ctypes: attention argument and
CSR validation, marching-cubes argument checks, and the marching-cubes host reference (which shares
mc_common.h with the kernels) against the NumPy model and scikit-image.
"""

from __future__ import annotations



import numpy as np
import pytest

from sdk.kernels.cuda import KERNEL_SIZES
from sdk.sparse.pattern import PRESETS, SparsePattern

from cuda_support import (
    BSA_BLOCK_SIZE,
    BSA_CSR,
    BSA_DTYPE,
    BSA_HEAD_DIM,
    BSA_NULL,
    BSA_OK,
    BSA_SCALE,
    BSA_SHAPE,
    DT_BF16,
    DT_F16,
    DT_F32,
    MC_ARG,
    MC_INDEX_DTYPE,
    MC_OK,
    MC_SHAPE,
    bsa_check,
)


def test_bsa_check_args_accepts_valid(host_lib):
    assert bsa_check(host_lib) == (BSA_OK, "")
    for d in KERNEL_SIZES:
        for bs in KERNEL_SIZES:
            for dt in (DT_F16, DT_BF16):
                assert bsa_check(host_lib, d=d, bs=bs, n=4 * bs, dtype=dt)[0] == BSA_OK
                assert host_lib.s4d_bsa_cuda_supported(d, bs, dt) == 1
    assert bsa_check(host_lib, bh=0)[0] == BSA_OK  # empty batch is fine

def test_supported_sizes_have_one_definition(host_lib):
    # sdk.kernels.cuda.KERNEL_SIZES mirrors s4d_bsa_cuda_size_supported (the C header)
    for size in range(0, 300):
        for other in (16, 128):
            expect = int(size in KERNEL_SIZES)
            assert host_lib.s4d_bsa_cuda_supported(size, other, DT_F16) == expect, size
            assert host_lib.s4d_bsa_cuda_supported(other, size, DT_BF16) == expect, size
    assert host_lib.s4d_bsa_cuda_supported(96, 64, DT_F16) == 0
    assert host_lib.s4d_bsa_cuda_supported(64, 64, DT_F32) == 0

@pytest.mark.parametrize("kwargs, code, words", [
    (dict(dtype=DT_F32), BSA_DTYPE, "float32 is CPU-only"),
    (dict(dtype=7), BSA_DTYPE, "unsupported dtype code 7"),
    (dict(d=8), BSA_HEAD_DIM, "unsupported head_dim 8"),
    (dict(d=48), BSA_HEAD_DIM, "unsupported head_dim 48"),
    (dict(d=96), BSA_HEAD_DIM, "unsupported head_dim 96"),
    (dict(d=256), BSA_HEAD_DIM, "unsupported head_dim 256"),
    (dict(bs=8, n=512), BSA_BLOCK_SIZE, "unsupported block_size 8"),
    (dict(bs=96, n=576), BSA_BLOCK_SIZE, "unsupported block_size 96"),
    (dict(bs=256, n=512), BSA_BLOCK_SIZE, "unsupported block_size 256"),
    (dict(n=512, nb=7), BSA_SHAPE, "seq_len (512) must equal block_size (64) * num_query_blocks (7)"),
    (dict(nb=0, n=0), BSA_SHAPE, "num_query_blocks must be >= 1"),
    (dict(bh=-1), BSA_SHAPE, "batch_heads must be >= 0"),
    (dict(scale=float("nan")), BSA_SCALE, "scale must be finite"),
    (dict(scale=float("inf")), BSA_SCALE, "scale must be finite"),
    (dict(nnz=-1), BSA_CSR, "nnz"),
    (dict(n=64 * (1 << 18), d=128, bs=64), BSA_SHAPE, "must be below 2^31"),
])
def test_bsa_check_args_rejects(host_lib, kwargs, code, words):
    rc, msg = bsa_check(host_lib, **kwargs)
    assert rc == code, msg
    assert words in msg

@pytest.mark.parametrize("offsets, indices, words", [
    ([1, 2, 3], [0, 1, 0], "kv_offsets[0] must be 0"),
    ([0, 2, 1], [0, 1], "non-decreasing"),
    ([0, 3, 3], [0, 1, 0], "lists 3 key blocks but there are only 2"),
    ([0, 1, 2], [0, 2], "kv_indices[1] = 2 (query block 1) is out of range [0, 2)"),
    ([0, 1, 2], [-1, 0], "kv_indices[0] = -1"),
    ([0, 2, 3], [1, 1, 0], "query block 0 lists key block 1 more than once"),
    ([0, 1, 3], [0, 1], "kv_offsets[2] = 3 must equal the number of kv_indices (2)"),
])
def test_bsa_check_args_rejects_malformed_csr(host_lib, offsets, indices, words):
    rc, msg = bsa_check(host_lib, n=128, bs=64, offsets=offsets, indices=indices)
    assert rc == BSA_CSR, msg
    assert words in msg

def test_bsa_check_args_null_indices(host_lib):
    offsets = np.array([0, 1, 2], dtype=np.int32)
    rc = host_lib.s4d_bsa_check_args_cuda(1, 128, 64, 64, 2, 0.1, DT_F16, offsets.ctypes.data, None, 2)
    assert rc == BSA_NULL and "kv_indices is NULL" in host_lib.s4d_bsa_cuda_last_error().decode()

@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("anchor", [True, False])
def test_bsa_check_args_accepts_every_preset(host_lib, preset, anchor):
    for T, bs in ((1, 64), (8, 128), (16, 128), (5, 64)):
        pattern = SparsePattern.for_tokens(T, 4096 if bs == 128 else 256, bs, preset, anchor)
        offsets, indices = pattern.kv_block_lists()
        n = pattern.num_blocks * bs
        rc, msg = bsa_check(host_lib, n=n, bs=bs, d=128, offsets=offsets.numpy(), indices=indices.numpy())
        assert rc == BSA_OK, msg

def test_bsa_check_args_empty_rows_are_valid(host_lib):
    rc, msg = bsa_check(host_lib, n=192, bs=64, offsets=[0, 0, 2, 2], indices=[2, 0])
    assert rc == BSA_OK, msg

@pytest.mark.parametrize("args, code, words", [
    ((64, 0.0, -1.0, 1.0, -1, 0), MC_OK, ""),
    ((64, 0.0, -1.0, 1.0, 10, 1), MC_OK, ""),
    ((0, 0.0, -1.0, 1.0, -1, 0), MC_SHAPE, "resolution R must be in [1, 1024]"),
    ((1025, 0.0, -1.0, 1.0, -1, 0), MC_SHAPE, "got 1025"),
    ((64, float("nan"), -1.0, 1.0, -1, 0), MC_ARG, "level must be finite"),
    ((64, 0.0, 1.0, 1.0, -1, 0), MC_ARG, "box_min < box_max"),
    ((64, 0.0, -float("inf"), 1.0, -1, 0), MC_ARG, "box_min < box_max"),
    ((64, 0.0, -1.0, 1.0, 5, 3), MC_INDEX_DTYPE, "cell-id dtype code 3"),
])
def test_mc_check_args(host_lib, args, code, words):
    assert host_lib.s4d_mc_check_args(*args) == code
    assert words in host_lib.s4d_mc_last_error().decode()
