"""Every block-sparse attention backend against the dense-mask reference."""

import math

import pytest
import torch

from sdk.sparse import (PRESETS, PatternError, SparsePattern, block_sparse_attention,
                        blocked_block_sparse_attention, reference_block_sparse_attention)
from sdk.sparse.attention import _cpu_kernel_ready


def plain_masked_attention(q, k, v, pattern, block_size):
    """Independent oracle: per-row softmax over the allowed keys, float64."""
    mask = pattern.block_mask().repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    s = torch.einsum("bhnd,bhmd->bhnm", q.double(), k.double()) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~mask, -math.inf)
    return torch.einsum("bhnm,bhmd->bhnd", s.softmax(-1), v.double())


def rand_qkv(T, G, bs, D, dtype, B=1, H=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, H, T * G * bs, D)
    return [torch.randn(shape, generator=g).to(dtype) for _ in range(3)]


def test_reference_matches_independent_oracle():
    p = SparsePattern(5, 3, "sculpt4d", True)
    q, k, v = rand_qkv(5, 3, 16, 32, torch.float32, B=2)
    torch.testing.assert_close(reference_block_sparse_attention(q, k, v, p, 16).double(),
                               plain_masked_attention(q, k, v, p, 16), atol=1e-5, rtol=1e-5)


BACKENDS = ["torch", "auto"] + (["cpu"] if _cpu_kernel_ready() else [])
GRID = [
    (T, G, bs, name, anchor)
    for (T, G, bs) in [(1, 2, 16), (2, 3, 32), (5, 2, 16), (8, 2, 64), (16, 1, 128), (16, 4, 16)]
    for name in PRESETS
    for anchor in (True, False)
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T,G,bs,name,anchor", GRID)
def test_backends_match_reference_fp32(backend, T, G, bs, name, anchor):
    p = SparsePattern(T, G, PRESETS[name], anchor)
    q, k, v = rand_qkv(T, G, bs, 32, torch.float32, seed=T * 7 + G)
    ref = reference_block_sparse_attention(q, k, v, p, bs)
    out = block_sparse_attention(q, k, v, p, bs, backend=backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T,G,bs,name,anchor", GRID[::5])
def test_backends_match_reference_bf16(backend, T, G, bs, name, anchor):
    p = SparsePattern(T, G, PRESETS[name], anchor)
    q, k, v = rand_qkv(T, G, bs, 64, torch.bfloat16, seed=T + G)
    ref = reference_block_sparse_attention(q.float(), k.float(), v.float(), p, bs)
    out = block_sparse_attention(q, k, v, p, bs, backend=backend)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_custom_scale_and_full_pattern_equals_sdpa():
    p = SparsePattern(3, 2, "full", False)
    q, k, v = rand_qkv(3, 2, 16, 16, torch.float32, B=2, H=3)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    for backend in BACKENDS + ["reference"]:
        torch.testing.assert_close(block_sparse_attention(q, k, v, p, 16, scale=0.3, backend=backend), sdpa,
                                   atol=2e-5, rtol=2e-5)


def test_blocked_backend_chunks_rows(monkeypatch):
    import sdk.sparse.attention as attn

    monkeypatch.setattr(attn, "_BLOCKED_SCORE_BUDGET", 1)  # one query block per chunk
    p = SparsePattern(4, 3, "aggressive", True)
    q, k, v = rand_qkv(4, 3, 16, 16, torch.float32)
    torch.testing.assert_close(blocked_block_sparse_attention(q, k, v, p, 16),
                               reference_block_sparse_attention(q, k, v, p, 16), atol=2e-5, rtol=2e-5)


def test_op_gradients_match_reference():
    p = SparsePattern(3, 2, "sculpt4d", True)
    base = rand_qkv(3, 2, 16, 16, torch.float64)
    grads = []
    for fn in (lambda q, k, v: block_sparse_attention(q, k, v, p, 16, backend="auto"),
               lambda q, k, v: reference_block_sparse_attention(q, k, v, p, 16)):
        leaves = [t.clone().requires_grad_(True) for t in base]
        (fn(*leaves) * torch.arange(leaves[0].numel()).view_as(leaves[0]).sin()).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)  # reference computes in fp32


def test_op_is_one_node_under_torch_compile():
    """torch.compile traces the attention as ONE s4d::block_sparse_attention node (dynamo
    propagates fake tensors through the op's fake implementation while tracing), and the
    compiled function computes what eager does."""
    p = SparsePattern(2, 2, "sculpt4d", True)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(lambda q, k, v: block_sparse_attention(q, k, v, p, 16), backend=record, fullgraph=True)
    q, k, v = rand_qkv(2, 2, 16, 16, torch.float32)
    torch.testing.assert_close(compiled(q, k, v), block_sparse_attention(q, k, v, p, 16))
    assert len(graphs) == 1
    calls = [n for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert [str(n.target) for n in calls] == ["s4d.block_sparse_attention"]


def test_op_runs_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    p = SparsePattern(2, 2, "sculpt4d", True)
    with FakeTensorMode():
        q = torch.empty(1, 2, 64, 16)
        out = block_sparse_attention(q, q, q, p, 16)
    assert isinstance(out, FakeTensor) and out.shape == q.shape


def test_input_errors():
    p = SparsePattern(2, 2)
    q, k, v = rand_qkv(2, 2, 16, 16, torch.float32)
    with pytest.raises(PatternError, match="does not match the pattern"):
        block_sparse_attention(q, k, v, p, 32)
    with pytest.raises(ValueError, match="same shape"):
        block_sparse_attention(q, k[:, :, :32], v, p, 16)
    with pytest.raises(ValueError, match=r"\[B, H, T\*P, D\]"):
        block_sparse_attention(q[0], k[0], v[0], p, 16)
    with pytest.raises(ValueError, match="unknown attention backend"):
        block_sparse_attention(q, k, v, p, 16, backend="magic")
