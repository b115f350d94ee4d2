"""The Python API of the CUDA kernels: without them it says why and validates arguments first; on a
CUDA device (marker ``gpu``) the kernels match the fp32 references and the host marching cubes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sdk.kernels import cuda as cuda_mod
from sdk.kernels.cuda import KERNEL_SIZES, block_sparse_attention_cuda, marching_cubes_cuda
from sdk.generation.mcubes import marching_cubes
from sdk.sparse import reference_block_sparse_attention
from sdk.sparse.pattern import PRESETS, SparsePattern

from cuda_support import (
    CPP,
    CUDA_DIR,
    FIELDS,
    TOL,
    CUDA_KERNELS_AVAILABLE,
    CUDA_KERNELS_REASON,
    _active_cells,
    _attention_case,
    assert_same_surface_as_cpu,
    blob_field,
    host_mc,
    needs_gpu,
    needs_sm80,
)


@pytest.mark.skipif(CUDA_KERNELS_AVAILABLE, reason="CUDA kernels are available here")
def test_python_api_reports_why_unavailable():
    assert isinstance(CUDA_KERNELS_REASON, str) and CUDA_KERNELS_REASON
    if torch.version.cuda is None:
        assert CUDA_KERNELS_REASON == "torch was built without CUDA (torch.version.cuda is None)"
    elif not torch.cuda.is_available():
        assert CUDA_KERNELS_REASON == "no CUDA device"
    with pytest.raises(RuntimeError, match="CUDA kernels unavailable"):
        marching_cubes_cuda(np.zeros((5, 5, 5), np.float32))

def test_python_api_validates_arguments_first():
    q = torch.zeros(1, 1, 128, 64, dtype=torch.float16)
    offsets, indices = SparsePattern(1, 2).kv_block_lists()
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        block_sparse_attention_cuda(q, q, q, offsets, indices, 64, 0.125)
    with pytest.raises(ValueError, match="field must be"):
        marching_cubes_cuda(np.zeros((4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="level must be finite"):
        marching_cubes_cuda(np.zeros((5, 5, 5), np.float32), level=float("nan"))

def test_python_module_lists_every_source():
    for rel in cuda_mod._HASHED:
        assert (CPP / rel).is_file(), rel
    assert {p.name for p in CUDA_DIR.glob("*.cu")} <= {Path(s).name for s in cuda_mod.CUDA_SOURCES}

@pytest.fixture
def fp32_matmul():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old

@needs_sm80
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("D", KERNEL_SIZES)
@pytest.mark.parametrize("P", [256, 4096])
def test_gpu_attention_matches_reference(fp32_matmul, P, D, dtype):
    failures = []
    for T in (1, 2, 8, 16):
        for H in (1, 4):
            if P == 4096 and T * H > 32:  # keep the fp32 reference's time bounded
                continue
            for bs in (KERNEL_SIZES if P == 256 else (128,)):
                for preset in sorted(PRESETS):
                    for anchor in (True, False):
                        err = _attention_case(T, P, H, D, dtype, preset, anchor, bs, seed=T * 7 + H)
                        if not err <= TOL[dtype]:
                            failures.append(f"T={T} P={P} H={H} D={D} bs={bs} {preset} anchor={anchor}: {err:.2e}")
    assert not failures, "\n".join(failures)

@needs_sm80
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("D, bs", [(16, 16), (32, 32), (16, 128), (64, 64), (128, 128), (64, 128), (128, 16)])
def test_gpu_attention_lse(fp32_matmul, D, bs, dtype):
    pattern = SparsePattern.for_tokens(4, 512, bs, "sculpt4d", True)
    N = pattern.num_blocks * bs
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(2, 3, N, D, device="cuda", generator=g).to(dtype) for _ in range(3))
    scale = 0.9 / math.sqrt(D)
    offsets, indices = pattern.kv_block_lists()
    out, lse = block_sparse_attention_cuda(q, k, v, offsets.cuda(), indices.cuda(), bs, scale, return_lse=True)
    mask = pattern.block_mask().cuda().repeat_interleave(bs, 0).repeat_interleave(bs, 1)
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    ref_lse = torch.logsumexp(scores.masked_fill(~mask, float("-inf")), dim=-1)
    assert lse.dtype == torch.float32 and lse.shape == (2, 3, N)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-4, atol=1e-3)
    ref = reference_block_sparse_attention(q.float(), k.float(), v.float(), pattern, bs, scale)
    assert ((out.float() - ref).norm() / ref.norm()).item() <= TOL[dtype]

@needs_sm80
def test_gpu_attention_empty_rows_unordered_lists_and_views(fp32_matmul):
    bs, D, nb = 64, 64, 4
    N = nb * bs
    offsets = torch.tensor([0, 2, 2, 5, 6], dtype=torch.int32)  # query block 1 attends nothing
    indices = torch.tensor([3, 0, 2, 1, 0, 1], dtype=torch.int32)  # not sorted within rows
    g = torch.Generator(device="cuda").manual_seed(2)
    base = torch.randn(1, N, 2, D, device="cuda", generator=g, dtype=torch.float16)
    q = base.transpose(1, 2)  # a non-contiguous view [1, 2, N, D]
    k = torch.randn(1, 2, N, D, device="cuda", generator=g, dtype=torch.float16)
    v = torch.randn(1, 2, N, D, device="cuda", generator=g, dtype=torch.float16)
    out, lse = block_sparse_attention_cuda(q, k, v, offsets, indices, bs, 0.125, return_lse=True)
    mask = torch.zeros(nb, nb, dtype=torch.bool)
    for r in range(nb):
        mask[r, indices[offsets[r]:offsets[r + 1]].long()] = True
    tok = mask.cuda().repeat_interleave(bs, 0).repeat_interleave(bs, 1)
    scores = (q.float() @ k.float().transpose(-1, -2)) * 0.125
    scores = scores.masked_fill(~tok, float("-inf"))
    probs = torch.nan_to_num(torch.softmax(scores, -1), nan=0.0)
    ref = probs @ v.float()
    assert torch.equal(out[:, :, bs:2 * bs], torch.zeros_like(out[:, :, bs:2 * bs]))
    assert torch.isneginf(lse[:, :, bs:2 * bs]).all()
    assert ((out.float() - ref).norm() / ref.norm()).item() <= TOL[torch.float16]

@needs_sm80
def test_gpu_attention_rejects_bad_csr():
    q = torch.zeros(1, 1, 128, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="out of range"):
        block_sparse_attention_cuda(q, q, q, torch.tensor([0, 1, 2], dtype=torch.int32),
                                    torch.tensor([0, 5], dtype=torch.int32), 64, 0.1)

@needs_gpu
@pytest.mark.parametrize("name", sorted(FIELDS))
def test_gpu_mc_bit_identical_to_host_reference(host_lib, name):
    field = FIELDS[name](96)
    field[40:44, 40:44, 40:44] = np.nan
    verts, faces = marching_cubes_cuda(torch.from_numpy(field).cuda())
    ref_v, ref_f = host_mc(host_lib, field)
    assert np.array_equal(verts.cpu().numpy(), ref_v)
    assert np.array_equal(faces.cpu().numpy(), ref_f)
    # deterministic across runs
    verts2, faces2 = marching_cubes_cuda(torch.from_numpy(field).cuda())
    assert torch.equal(verts, verts2) and torch.equal(faces, faces2)

@needs_gpu
@pytest.mark.parametrize("name", sorted(FIELDS))
def test_gpu_mc_agrees_with_cpu_backend(name):
    R = 128
    field = FIELDS[name](R)
    verts, faces = marching_cubes_cuda(torch.from_numpy(field).cuda())
    verts, faces = verts.cpu().numpy(), faces.cpu().numpy()
    assert_same_surface_as_cpu(field, verts, faces)

@needs_gpu
def test_gpu_mc_sparse_and_backend_seam(host_lib, monkeypatch):
    from sdk.generation import mcubes

    R = 80
    field = blob_field(R, seed=5)
    cells = _active_cells(field)
    dense_v, dense_f = marching_cubes_cuda(field)
    for ids in (torch.from_numpy(cells), torch.from_numpy(cells.astype(np.int32)).cuda()):
        v, f = marching_cubes_cuda(field, active_cells=ids)
        assert torch.equal(v, dense_v) and torch.equal(f, dense_f)
    subset = cells[::3]
    v, f = marching_cubes_cuda(field, active_cells=subset)
    rv, rf = host_mc(host_lib, field, cells=subset)
    assert np.array_equal(v.cpu().numpy(), rv) and np.array_equal(f.cpu().numpy(), rf)
    monkeypatch.setitem(mcubes.BACKENDS, "cuda", cuda_mod.mcubes_backend)
    mesh = marching_cubes(torch.from_numpy(field).cuda(), backend="cuda")
    assert mesh.is_watertight and len(mesh.vertices) == len(dense_v)
    empty_v, empty_f = marching_cubes_cuda(np.full((17, 17, 17), -1.0, np.float32))
    assert empty_v.shape == (0, 3) and empty_f.shape == (0, 3)
