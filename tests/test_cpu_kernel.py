"""The C++ CPU block-sparse attention kernel against a dense-mask reference written here."""

from __future__ import annotations

import ctypes
import itertools
import math
import platform
import threading

import pytest
import torch

from sdk.kernels import cpu as cpu_mod
from sdk.kernels.cpu import (
    block_sparse_attention_cpu,
    build_log,
    cpu_kernel_available,
    cpu_kernel_unavailable_reason,
)
from sdk.sparse.pattern import PRESETS, SparsePattern

_AVAILABLE = cpu_kernel_available()
needs_kernel = pytest.mark.skipif(
    not _AVAILABLE, reason=f"CPU kernel unavailable: {cpu_kernel_unavailable_reason()}")


# ------------------------------------------------------------------------------------------
# reference (float64, dense token mask)
# ------------------------------------------------------------------------------------------
def dense_reference(q, k, v, pattern: SparsePattern, block_size: int, scale: float,
                    block_mask: torch.Tensor | None = None):
    """out float64 [B,H,N,D], lse float64 [B,H,N] via a dense token-level mask."""
    mask = pattern.block_mask() if block_mask is None else block_mask
    mask = mask.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    scores = torch.matmul(q.double(), k.double().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None])
    probs = torch.nan_to_num(probs, nan=0.0)  # rows with no key at all
    return torch.matmul(probs, v.double()), lse


def make_qkv(shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g) * scale).to(dtype) for _ in range(3)]


def run_case(T, G, bs, D, schedule, anchor, dtype=torch.float32, B=1, H=None, seed=0, scale=None):
    pattern = SparsePattern(T, G, PRESETS[schedule] if isinstance(schedule, str) else schedule, anchor)
    N = T * G * bs
    if H is None:
        H = 2 if N <= 1024 else 1  # keep the float64 reference cheap
    q, k, v = make_qkv((B, H, N, D), dtype, seed)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    offsets, indices = pattern.kv_block_lists()
    out, lse = block_sparse_attention_cpu(q, k, v, offsets, indices, bs, scale, return_lse=True)
    ref, ref_lse = dense_reference(q, k, v, pattern, bs, scale)
    assert out.dtype == dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == (B, H, N)
    return out, lse, ref, ref_lse


# A deterministic walk over the grid: every (preset, anchor, T) with block size, blocks per
# frame and head dim rotating so each value meets many schedules and frame counts.
_BLOCK_SIZES = (16, 32, 64, 128)
_HEAD_DIMS = (16, 64, 128)
_FRAMES = (1, 2, 5, 8, 16)


def _grid():
    cases = []
    for i, (schedule, anchor, T) in enumerate(itertools.product(sorted(PRESETS), (True, False), _FRAMES)):
        bs = _BLOCK_SIZES[i % len(_BLOCK_SIZES)]
        D = _HEAD_DIMS[(i // 2) % len(_HEAD_DIMS)]
        G = 1 + (i // 3) % 3
        while T * G * bs > 1024 and G > 1:  # keep the dense reference cheap
            G -= 1
        cases.append(pytest.param(T, G, bs, D, schedule, anchor,
                                  id=f"{schedule}-anchor{int(anchor)}-T{T}-G{G}-bs{bs}-D{D}"))
    return cases


@needs_kernel
@pytest.mark.parametrize("T,G,bs,D,schedule,anchor", _grid())
def test_fp32_matches_dense_reference(T, G, bs, D, schedule, anchor):
    out, lse, ref, ref_lse = run_case(T, G, bs, D, schedule, anchor)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("schedule", sorted(PRESETS))
@pytest.mark.parametrize("anchor", (True, False))
@pytest.mark.parametrize("T,G,bs,D", [(2, 3, 32, 64), (8, 2, 16, 128), (5, 1, 64, 16), (16, 1, 128, 64)])
def test_bf16_matches_reference_of_rounded_inputs(T, G, bs, D, schedule, anchor):
    # the reference sees exactly the bf16-rounded inputs, in float64
    out, lse, ref, ref_lse = run_case(T, G, bs, D, schedule, anchor, dtype=torch.bfloat16, seed=1)
    torch.testing.assert_close(out.double(), ref, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-4, rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("D", [8, 24, 40, 136, 256])
@pytest.mark.parametrize("bs", [8, 24, 136, 256])
def test_odd_head_dims_and_block_sizes(D, bs):
    T, G = (3, 2) if bs <= 24 else (2, 1)
    out, lse, ref, ref_lse = run_case(T, G, bs, D, "sculpt4d", True, H=1, seed=D + bs)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_batch_heads_noncontiguous_and_custom_scale():
    T, G, bs, D = 4, 2, 32, 64
    pattern = SparsePattern.preset("aggressive", T, G)
    N = T * G * bs
    # [B, N, H, D] storage transposed to [B, H, N, D]: the wrapper must make it contiguous
    q, k, v = (t.transpose(1, 2) for t in make_qkv((3, N, 2, D), seed=5))
    assert not q.is_contiguous()
    offsets, indices = pattern.kv_block_lists()
    for scale in (0.37, -0.2, 0.0):
        out, lse = block_sparse_attention_cpu(q, k, v, offsets, indices, bs, scale, return_lse=True)
        ref, ref_lse = dense_reference(q, k, v, pattern, bs, scale)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)
    out_only = block_sparse_attention_cpu(q, k, v, offsets, indices, bs, 0.37)
    assert isinstance(out_only, torch.Tensor)


@needs_kernel
def test_large_scores_are_stable():
    T, G, bs, D = 4, 2, 32, 64
    pattern = SparsePattern.preset("sculpt4d", T, G)
    q, k, v = make_qkv((1, 2, T * G * bs, D), seed=7)
    q, k = q * 6, k * 6  # scores spread over hundreds: needs the running max
    offsets, indices = pattern.kv_block_lists()
    out, lse = block_sparse_attention_cpu(q, k, v, offsets, indices, bs, 1 / 8, return_lse=True)
    ref, ref_lse = dense_reference(q, k, v, pattern, bs, 1 / 8)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_custom_csr_order_and_empty_rows():
    # 4 blocks; row 1 is empty, rows list blocks in non-ascending order
    bs, D, nb = 16, 32, 4
    rows = [[3, 0, 2], [], [1], [0, 1, 2, 3][::-1]]
    offsets = torch.tensor([0] + list(itertools.accumulate(len(r) for r in rows)), dtype=torch.int32)
    indices = torch.tensor([c for r in rows for c in r], dtype=torch.int32)
    mask = torch.zeros(nb, nb, dtype=torch.bool)
    for r, cols in enumerate(rows):
        mask[r, cols] = True
    q, k, v = make_qkv((1, 2, nb * bs, D), seed=3)
    out, lse = block_sparse_attention_cpu(q, k, v, offsets, indices, bs, 0.2, return_lse=True)
    ref, ref_lse = dense_reference(q, k, v, SparsePattern(1, nb), bs, 0.2, block_mask=mask)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    empty = slice(bs, 2 * bs)
    assert (out[:, :, empty] == 0).all()
    assert torch.isneginf(lse[:, :, empty]).all()
    keep = torch.ones(nb * bs, dtype=torch.bool)
    keep[empty] = False
    torch.testing.assert_close(lse[:, :, keep].double(), ref_lse[:, :, keep], atol=1e-5, rtol=1e-5)


@needs_kernel
def test_thread_count_does_not_change_results():
    pattern = SparsePattern.preset("sculpt4d", 6, 2)
    q, k, v = make_qkv((1, 3, 6 * 2 * 32, 64), seed=11)
    offsets, indices = pattern.kv_block_lists()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = block_sparse_attention_cpu(q, k, v, offsets, indices, 32, 0.125)
        torch.set_num_threads(max(2, before))
        many = block_sparse_attention_cpu(q, k, v, offsets, indices, 32, 0.125)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)


@needs_kernel
def test_callable_from_python_threads():
    pattern = SparsePattern.preset("fixed4", 4, 2)
    offsets, indices = pattern.kv_block_lists()
    inputs = [make_qkv((1, 1, 4 * 2 * 16, 32), seed=s) for s in range(4)]
    results = [None] * len(inputs)

    def work(i):
        results[i] = block_sparse_attention_cpu(*inputs[i], offsets, indices, 16, 0.3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (q, k, v), out in zip(inputs, results):
        ref, _ = dense_reference(q, k, v, pattern, 16, 0.3)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# argument errors
# ------------------------------------------------------------------------------------------
def _args(T=2, G=2, bs=16, D=32, dtype=torch.float32):
    pattern = SparsePattern.preset("sculpt4d", T, G)
    q, k, v = make_qkv((1, 2, T * G * bs, D), dtype)
    offsets, indices = pattern.kv_block_lists()
    return q, k, v, offsets, indices, bs


@needs_kernel
def test_bad_csr_is_reported_by_the_kernel():
    q, k, v, offsets, indices, bs = _args()
    bad = offsets.clone()
    bad[2] = int(offsets[1]) - 1  # row 1 ends before it starts
    with pytest.raises(RuntimeError, match="non-decreasing"):
        block_sparse_attention_cpu(q, k, v, bad, indices, bs, 0.1)
    bad_idx = indices.clone()
    bad_idx[3] = 4
    with pytest.raises(RuntimeError, match=r"kv_indices\[3\] = 4 .*out of range \[0, 4\)"):
        block_sparse_attention_cpu(q, k, v, offsets, bad_idx, bs, 0.1)
    bad_idx[3] = -1
    with pytest.raises(RuntimeError, match="out of range"):
        block_sparse_attention_cpu(q, k, v, offsets, bad_idx, bs, 0.1)
    dup = indices.clone()
    dup[1] = dup[0]
    with pytest.raises(RuntimeError, match="more than once"):
        block_sparse_attention_cpu(q, k, v, offsets, dup, bs, 0.1)
    shifted = offsets + 1
    with pytest.raises((RuntimeError, ValueError), match=r"kv_offsets\[0\] must be 0|kv_indices must have"):
        block_sparse_attention_cpu(q, k, v, shifted, indices, bs, 0.1)
    with pytest.raises(RuntimeError, match="scale must be finite"):
        block_sparse_attention_cpu(q, k, v, offsets, indices, bs, float("nan"))


@needs_kernel
def test_bad_arguments_raise_value_errors():
    q, k, v, offsets, indices, bs = _args()
    with pytest.raises(ValueError, match="kv_offsets must have N / block_size \\+ 1 = 5 entries"):
        block_sparse_attention_cpu(q, k, v, offsets[:-1], indices, bs, 0.1)
    with pytest.raises(ValueError, match="kv_indices must have kv_offsets\\[-1\\]"):
        block_sparse_attention_cpu(q, k, v, offsets, indices[:-1], bs, 0.1)
    with pytest.raises(ValueError, match="kv_offsets must have dtype torch.int32"):
        block_sparse_attention_cpu(q, k, v, offsets.long(), indices, bs, 0.1)
    with pytest.raises(ValueError, match="kv_indices must be 1-D"):
        block_sparse_attention_cpu(q, k, v, offsets, indices[None], bs, 0.1)
    with pytest.raises(ValueError, match="same shape"):
        block_sparse_attention_cpu(q, k[:, :1], v, offsets, indices, bs, 0.1)
    with pytest.raises(ValueError, match="share one dtype"):
        block_sparse_attention_cpu(q, k.bfloat16(), v, offsets, indices, bs, 0.1)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        block_sparse_attention_cpu(q.half(), k.half(), v.half(), offsets, indices, bs, 0.1)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        block_sparse_attention_cpu(q.double(), k.double(), v.double(), offsets, indices, bs, 0.1)
    with pytest.raises(ValueError, match="4-D"):
        block_sparse_attention_cpu(q[0], k[0], v[0], offsets, indices, bs, 0.1)
    with pytest.raises(ValueError, match="positive multiple of block_size"):
        block_sparse_attention_cpu(q[:, :, :-8], k[:, :, :-8], v[:, :, :-8], offsets, indices, bs, 0.1)
    with pytest.raises(ValueError, match="block_size must be a multiple of 8"):
        block_sparse_attention_cpu(q, k, v, offsets, indices, 12, 0.1)
    with pytest.raises(ValueError, match="head dim D"):
        block_sparse_attention_cpu(q[..., :20], k[..., :20], v[..., :20], offsets, indices, bs, 0.1)
    with pytest.raises(ValueError, match="q must be a torch.Tensor"):
        block_sparse_attention_cpu(q.numpy(), k, v, offsets, indices, bs, 0.1)


@needs_kernel
def test_c_abi_checks():
    lib = cpu_mod.load_cpu_kernel()
    q, k, v, offsets, indices, bs = _args()
    out = torch.empty_like(q)
    N, D = q.shape[2], q.shape[3]
    ptrs = [q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr()]

    def call(qp=ptrs[0], kp=ptrs[1], vp=ptrs[2], op=ptrs[3], n=N, d=D, b=bs, nb=N // bs,
             dtype=0, off=offsets.data_ptr(), idx=indices.data_ptr()):
        rc = lib.s4d_bsa_forward_cpu(qp, kp, vp, op, None, 2, n, d, b, off, idx, nb, 0.1, dtype, 0)
        return rc, lib.s4d_bsa_last_error().decode()

    assert call() == (0, "")
    assert call(kp=None)[1].endswith("k is NULL")
    assert "kv_offsets is NULL" in call(off=None)[1]
    assert "kv_indices is NULL" in call(idx=None)[1]
    assert "seq_len (64) must equal block_size (16) * num_query_blocks (3)" in call(nb=3)[1]
    assert "unsupported dtype code 7" in call(dtype=7)[1]
    assert "unsupported head_dim 20" in call(d=20)[1]
    assert "unsupported block_size 512" in call(b=512, nb=1, n=512)[1]
    codes = {call(kp=None)[0], call(nb=3)[0], call(dtype=7)[0], call(d=20)[0]}
    assert 0 not in codes and len(codes) == 4
    assert lib.s4d_bsa_abi_version() == 1
    assert lib.s4d_bsa_cpu_isa().decode() in ("avx512", "avx2", "generic")
    assert lib.s4d_bsa_cpu_has_openmp() in (0, 1)
    assert ctypes.c_int(call()[0]).value == 0  # a good call clears the error
    assert lib.s4d_bsa_last_error().decode() == ""


# ------------------------------------------------------------------------------------------
# build machinery
# ------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_loader(fresh_cpu_loader, tmp_path):
    """A clean loader state (restored afterwards) with a private cache dir."""
    return tmp_path


def test_missing_compiler_is_reported_not_raised(fresh_loader, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert cpu_kernel_available() is False
    assert "no C++ compiler" in cpu_kernel_unavailable_reason()
    assert "no C++ compiler" in build_log()
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        block_sparse_attention_cpu(*make_qkv((1, 1, 16, 8)), torch.tensor([0, 1], dtype=torch.int32),
                                   torch.tensor([0], dtype=torch.int32), 16, 1.0)


@needs_kernel
def test_compile_error_carries_compiler_output(fresh_loader, monkeypatch):
    ext = fresh_loader / "cpp_ext"
    (ext / "cpu").mkdir(parents=True)
    (ext / "include" / "s4d").mkdir(parents=True)
    real = cpu_mod.cpp_ext_dir()
    (ext / "include" / "s4d" / "block_sparse_attention.h").write_bytes(
        (real / "include" / "s4d" / "block_sparse_attention.h").read_bytes())
    (ext / "cpu" / "block_sparse_attention_cpu.cpp").write_text("int main( { this is not C++ }\n")
    monkeypatch.setenv("S4D_CPP_EXT_DIR", str(ext))
    assert cpu_kernel_available() is False
    reason = cpu_kernel_unavailable_reason()
    assert "compiling the CPU kernel failed" in reason and "compiler stderr" in reason
    assert "error" in reason.split("compiler stderr", 1)[1]
    assert not list((fresh_loader / "cache").glob("*.so"))  # no partial library left behind


@needs_kernel
@pytest.mark.parametrize("variant", ["portable", "avx2"])
def test_portable_builds_match_reference(fresh_loader, monkeypatch, variant):
    if variant == "portable":
        monkeypatch.setenv("S4D_CPU_KERNEL_NATIVE", "0")  # plain -O3, no -march=native
    else:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            pytest.skip("the AVX2 variant is an x86-64 build")
        monkeypatch.setenv("S4D_CPU_KERNEL_EXTRA_FLAGS", "-mno-avx512f")
    # two concurrent builds into one cache: atomic replace, one library
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(cpu_mod._build())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 2 and paths[0] == paths[1] and paths[0].is_file()
    assert [p.name for p in (fresh_loader / "cache").iterdir()] == [paths[0].name]
    info = cpu_mod.cpu_kernel_info()
    assert info["path"] == str(paths[0])
    assert info["openmp"] is True
    if variant == "portable":
        assert info["isa"] in ("generic", "avx2")
    for T, G, bs, D in [(3, 2, 16, 40), (2, 1, 128, 64)]:
        out, lse, ref, ref_lse = run_case(T, G, bs, D, "sculpt4d", True, seed=T)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)
    out, lse, ref, ref_lse = run_case(2, 2, 32, 64, "fixed4", False, dtype=torch.bfloat16)
    torch.testing.assert_close(out.double(), ref, atol=1e-2, rtol=1e-2)
