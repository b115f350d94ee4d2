"""A NumPy model of the CUDA attention kernel's index arithmetic (swizzled shared memory, ldmatrix,
mma fragments, the CSR tile schedule, online softmax) run against the fp32 reference.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from sdk.kernels.cuda import KERNEL_SIZES

from cuda_support import CUDA_DIR, KERNEL_CONFIGS, _model_cta, _swz


@pytest.mark.parametrize("D", KERNEL_SIZES)
def test_swizzle_stays_in_row_and_is_bank_conflict_free(D):
    C = D // 8
    for row in range(64):  # a permutation of the row's own chunks
        assert sorted((_swz(D, row, ch) - row * D) >> 3 for ch in range(C)) == list(range(C))
    for row0 in range(0, 64, 8):  # one ldmatrix 8x8 matrix: one chunk of 8 consecutive rows
        for ch in range(C):
            slots = {(_swz(D, row0 + r, ch) * 2 // 16) % 8 for r in range(8)}  # 16-byte bank slots
            assert len(slots) == 8, (D, row0, ch)

@pytest.mark.parametrize("D, BS, MT, BN", KERNEL_CONFIGS)
def test_attention_kernel_index_model(D, BS, MT, BN):
    rng = np.random.default_rng(D + BS + MT + BN)
    nb, heads = 3, 2
    N = nb * BS
    scale_log2 = 0.1 * math.log2(math.e)
    q, k, v = (rng.standard_normal(heads * N * D) for _ in range(3))
    offsets, indices = [0, 2, 2, 3], [2, 0, 1]  # block 0: unsorted list, block 1: empty
    out, lse = np.full(heads * N * D, np.nan), np.full(heads * N, np.nan)
    for bh in range(heads):
        for qb in range(nb):
            _model_cta(q, k, v, out, lse, offsets, indices, nb, N, scale_log2, D, BS, MT, BN, bh, qb)
    out, lse = out.reshape(heads, N, D), lse.reshape(heads, N)
    Q, K, V = (x.reshape(heads, N, D) for x in (q, k, v))
    for bh in range(heads):
        for qb in range(nb):
            rows = slice(qb * BS, (qb + 1) * BS)
            blocks = indices[offsets[qb]:offsets[qb + 1]]
            if not blocks:
                assert (out[bh, rows] == 0).all() and np.isneginf(lse[bh, rows]).all()
                continue
            keys = np.concatenate([np.arange(c * BS, (c + 1) * BS) for c in blocks])
            scores = Q[bh, rows] @ K[bh, keys].T * (scale_log2 / math.log2(math.e))
            ref_lse = np.log(np.exp(scores - scores.max(1, keepdims=True)).sum(1)) + scores.max(1)
            ref = np.exp(scores - ref_lse[:, None]) @ V[bh, keys]
            np.testing.assert_allclose(out[bh, rows], ref, rtol=0, atol=1e-12)
            np.testing.assert_allclose(lse[bh, rows], ref_lse, rtol=0, atol=1e-12)

def test_attention_model_covers_the_dispatch():
    src = (CUDA_DIR / "block_sparse_attention.cu").read_text()
    dispatch = src[src.index("cudaError_t dispatch("):]
    launched = {tuple(int(x) for x in m.split(", ")) for m in
                re.findall(r"launch<Tag, (\d+, \d+, \d+, \d+)>", dispatch)}
    assert launched == set(KERNEL_CONFIGS)
    # every case label routes to the launch<> of its own (head dim, block size)
    cases = re.findall(r"case (\d+):(.*?)(?=case \d+:|default:)", dispatch, flags=re.S)
    assert len(cases) == len(KERNEL_SIZES) ** 2
    for label, body in cases:
        for d, bs in re.findall(r"launch<Tag, (\d+), (\d+), \d+, \d+>", body):
            assert int(label) == int(d) * 1000 + int(bs), (label, d, bs)
