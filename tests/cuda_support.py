"""Shared helpers of the CUDA-kernel tests (tests/test_cuda_*.py, tests/test_mc_tables.py): paths,
the C return codes, the host-side library's ctypes calls, the marching-cubes tables and a NumPy
model of the kernels' algorithm, test fields. Not a test file."""

from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from sdk.kernels.cuda import KERNEL_SIZES, block_sparse_attention_cuda, cuda_kernels_available, cuda_kernels_unavailable_reason
from sdk.generation.mcubes import WorldBox, grid_to_world, marching_cubes
from sdk.sparse import blocked_block_sparse_attention, reference_block_sparse_attention
from sdk.sparse.pattern import SparsePattern


ROOT = Path(__file__).resolve().parent.parent

CPP = ROOT / "cpp_ext"

CUDA_DIR = CPP / "cuda"

INCLUDE = CPP / "include"

ARCHS = ("80", "86", "89", "90")

# ---- return codes (s4d/block_sparse_attention.h, s4d/*_cuda.h) ------------------------------
BSA_OK, BSA_NULL, BSA_SHAPE, BSA_HEAD_DIM, BSA_BLOCK_SIZE, BSA_CSR, BSA_DTYPE, BSA_SCALE = 0, 1, 2, 3, 4, 5, 6, 7

DT_F32, DT_BF16, DT_F16 = 0, 1, 2

MC_OK, MC_NULL, MC_SHAPE, MC_ARG, MC_INDEX_DTYPE = 0, 1, 2, 3, 4

def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_mc_tables", CUDA_DIR / "gen_mc_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_mc_tables"] = module
    spec.loader.exec_module(module)
    return module

GEN = _load_generator()

TABLES = GEN.build_tables()

def _nvcc() -> str | None:
    return shutil.which("nvcc")

def _nvcc_command(src: Path, obj: Path) -> list[str]:
    cmd = [_nvcc(), "-c", str(src), "-o", str(obj), "-std=c++17", f"-I{INCLUDE}", f"-I{CUDA_DIR}",
           "--Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror"]
    for arch in ARCHS:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    if src.name == "block_sparse_attention.cu":
        # the attention kernel must not spill (ptxas reports it as an error under -Werror)
        cmd += ["-Xptxas", "-warn-spills,-warn-lmem-usage"]
    return cmd

def _torch_include_dirs() -> list[str]:
    try:
        from torch.utils.cpp_extension import include_paths
        return list(include_paths())
    except Exception:  # pragma: no cover
        return []

def _cuda_include_dir() -> str | None:
    nvcc = _nvcc()
    if nvcc is None:
        return None
    inc = Path(nvcc).resolve().parent.parent / "include"
    if not (inc / "cuda_runtime_api.h").is_file():
        real = subprocess.run(["sh", "-c", "readlink -f $(command -v nvcc)"], capture_output=True, text=True)
        inc = Path(real.stdout.strip()).parent.parent / "include"
    if not (inc / "cuda_runtime_api.h").is_file():
        for candidate in (Path("/usr/local/cuda/include"), Path(os.environ.get("CUDA_HOME", "/nonexistent")) / "include"):
            if (candidate / "cuda_runtime_api.h").is_file():
                return str(candidate)
        return None
    return str(inc)

def _ptr(a: np.ndarray | None):
    return None if a is None else a.ctypes.data

def bsa_check(lib, bh=2, n=512, d=64, bs=64, nb=None, scale=0.125, dtype=DT_F16, offsets=None, indices=None,
              nnz=None):
    nb = n // bs if nb is None else nb
    if offsets is not None:
        offsets = np.ascontiguousarray(offsets, dtype=np.int32)
    if indices is not None:
        indices = np.ascontiguousarray(indices, dtype=np.int32)
    if nnz is None:
        nnz = 0 if indices is None else len(indices)
    rc = lib.s4d_bsa_check_args_cuda(bh, n, d, bs, nb, scale, dtype, _ptr(offsets),
                                     _ptr(indices) if indices is not None and len(indices) else None, nnz)
    return rc, lib.s4d_bsa_cuda_last_error().decode()

def host_mc(lib, field: np.ndarray, level=0.0, box=WorldBox(), cells: np.ndarray | None = None):
    f = np.ascontiguousarray(field, dtype=np.float32)
    R = f.shape[0] - 1
    res, V, F = ctypes.c_void_p(), ctypes.c_int64(), ctypes.c_int64()
    if cells is None:
        rc = lib.s4d_mc_extract_host(f.ctypes.data, R, level, box.min, box.max, None, -1, 1,
                                     ctypes.byref(res), ctypes.byref(V), ctypes.byref(F))
    else:
        cells = np.ascontiguousarray(cells)
        dtype_code = {np.dtype(np.int32): 0, np.dtype(np.int64): 1}[cells.dtype]
        rc = lib.s4d_mc_extract_host(f.ctypes.data, R, level, box.min, box.max, _ptr(cells) if len(cells) else None,
                                     len(cells), dtype_code, ctypes.byref(res), ctypes.byref(V), ctypes.byref(F))
    assert rc == MC_OK, lib.s4d_mc_last_error().decode()
    verts = np.empty((V.value, 3), dtype=np.float64)
    faces = np.empty((F.value, 3), dtype=np.int64)
    try:
        assert lib.s4d_mc_host_copy(res, _ptr(verts) if V.value else None, _ptr(faces) if F.value else None) == MC_OK
    finally:
        lib.s4d_mc_host_free(res)
    return verts, faces

def _canonical(tri):
    i = tri.index(min(tri))
    return tuple(tri[i:] + tri[:i])

def _ambiguous_faces(case):
    count = 0
    for face in GEN.FACES:
        signs = [case >> c & 1 for c in face]
        if signs in ([1, 0, 1, 0], [0, 1, 0, 1]):
            count += 1
    return count

_TRI = np.array([[e for t in tris for e in t] + [-1] * (3 * TABLES["max_triangles"] + 1 - 3 * len(tris))
                 for tris in TABLES["triangles"]], dtype=np.int64)

_TRI_COUNT = np.array([len(t) for t in TABLES["triangles"]], dtype=np.int64)

_EDGE_MASK = np.array(TABLES["edge_mask"], dtype=np.int64)

_EDGE_OFF = np.array([GEN.edge_geometry(e)[0] for e in range(12)], dtype=np.int64)

_EDGE_AXIS = np.array([GEN.edge_geometry(e)[1] for e in range(12)], dtype=np.int64)

def numpy_mc(field: np.ndarray, level: float = 0.0, box: WorldBox = WorldBox(), cells: np.ndarray | None = None):
    f = np.asarray(field, dtype=np.float32)
    R = f.shape[0] - 1
    n1 = R + 1
    finite = np.isfinite(f)
    inside = finite & (f.astype(np.float64) > level)
    outside = level - 1.0
    if finite.any():
        outside = min(outside, float(f[finite].min()))
    values = np.where(finite, f, np.float32(outside)).astype(np.float64)
    case = np.zeros((R, R, R), dtype=np.int64)
    for c, (dx, dy, dz) in enumerate(GEN.CORNERS):
        case |= inside[dx:dx + R, dy:dy + R, dz:dz + R].astype(np.int64) << c
    case = case.reshape(-1)
    if cells is None:
        surf = np.nonzero((case != 0) & (case != 255))[0]
    else:
        ids = np.asarray(cells, dtype=np.int64).reshape(-1)
        ids = np.unique(ids[(ids >= 0) & (ids < R ** 3)])
        surf = ids[(case[ids] != 0) & (case[ids] != 255)]
    cs = case[surf]
    ci, cj, ck = np.unravel_index(surf, (R, R, R))

    def gid(local):  # [M, k] local edge numbers -> global edge ids
        o = _EDGE_OFF[local]
        return (((ci[:, None] + o[..., 0]) * n1 + (cj[:, None] + o[..., 1])) * n1 + (ck[:, None] + o[..., 2])) * 3 \
            + _EDGE_AXIS[local]

    all_edges = gid(np.broadcast_to(np.arange(12), (len(surf), 12)))
    crossed = (_EDGE_MASK[cs][:, None] >> np.arange(12)) & 1
    edges = np.unique(all_edges[crossed.astype(bool)])
    p, axis = edges // 3, edges % 3
    idx = np.stack(np.unravel_index(p, (n1, n1, n1)), axis=1).astype(np.float64)
    stride = np.array([n1 * n1, n1, 1])[axis]
    v0, v1 = values.reshape(-1)[p], values.reshape(-1)[p + stride]
    t = (level - v0) / (v1 - v0)
    idx[np.arange(len(edges)), axis] += t
    verts = idx / R * (box.max - box.min) + box.min
    tri = _TRI[cs]
    valid = np.arange(tri.shape[1])[None, :] < 3 * _TRI_COUNT[cs][:, None]
    face_edges = gid(np.where(valid, tri, 0))[valid]
    faces = np.searchsorted(edges, face_edges).reshape(-1, 3)
    assert np.array_equal(edges[faces.reshape(-1)], face_edges)
    return verts, faces

def world_points(R: int, box: WorldBox = WorldBox()) -> np.ndarray:
    axis = grid_to_world(np.arange(R + 1), R, box)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)

def sphere_field(R, center=(0.05, -0.03, 0.02), radius=0.6):
    return (radius - np.linalg.norm(world_points(R) - np.asarray(center), axis=-1)).astype(np.float32)

def torus_field(R, major=0.55, minor=0.22):
    p = world_points(R)
    ring = np.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2) - major
    return (minor - np.sqrt(ring ** 2 + p[..., 2] ** 2)).astype(np.float32)

def blob_field(R, seed=0, n=12):
    """Random smooth 'decoded-like' field: a sum of Gaussian bumps minus a threshold."""
    rng = np.random.default_rng(seed)
    p = world_points(R)
    centers = rng.uniform(-0.6, 0.6, (n, 3))
    widths = rng.uniform(0.1, 0.3, n)
    out = np.zeros(p.shape[:-1])
    for c, w in zip(centers, widths):
        out += np.exp(-((p - c) ** 2).sum(-1) / (2 * w * w))
    return (out - 0.5).astype(np.float32)

def random_noise_field(R, seed):
    """Worst case for topology: i.i.d. noise (every ambiguous configuration), closed by an
    outside border so the surface must be closed."""
    f = np.random.default_rng(seed).standard_normal((R + 1,) * 3).astype(np.float32)
    f[0], f[-1], f[:, 0], f[:, -1], f[:, :, 0], f[:, :, -1] = -1, -1, -1, -1, -1, -1
    return f

FIELDS = {"sphere": sphere_field, "torus": torus_field, "blob": blob_field}

def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    return float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())

def assert_same_surface_as_cpu(field: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> None:
    """Our marching cubes vs the scikit-image CPU backend on the same field."""
    cpu = marching_cubes(field, backend="cpu")
    ours = trimesh.Trimesh(verts, faces, process=False)
    assert ours.is_watertight and ours.is_winding_consistent
    assert abs(len(verts) - len(cpu.vertices)) <= 0.001 * len(cpu.vertices)
    assert chamfer(verts, cpu.vertices) < 1e-5
    # same vertices; triangulations differ on some cells (diagonal choice), hence not exact
    assert ours.volume == pytest.approx(cpu.volume, rel=1e-3)
    assert np.allclose(ours.bounds, cpu.bounds, atol=1e-5)  # same world-box placement

def _active_cells(field: np.ndarray, dilate: int = 1) -> np.ndarray:
    """Cells with a sign change, dilated - what hierarchical decoding marks active."""
    R = field.shape[0] - 1
    inside = np.isfinite(field) & (field > 0)
    any_in = np.zeros((R, R, R), bool)
    all_in = np.ones((R, R, R), bool)
    for dx, dy, dz in GEN.CORNERS:
        corner = inside[dx:dx + R, dy:dy + R, dz:dz + R]
        any_in |= corner
        all_in &= corner
    active = any_in & ~all_in
    for _ in range(dilate):
        grown = active.copy()
        for ax in range(3):
            grown |= np.roll(active, 1, ax) | np.roll(active, -1, ax)
        active = grown
    return np.flatnonzero(active)

def _swz(D, row, ch):
    C = D // 8
    rows_per_line, mask = (1, 7) if C >= 8 else (8 // C, C - 1)
    return row * D + ((ch ^ ((row // rows_per_line) & mask)) << 3)

def _load_tile(smem, gmem, D, rows, NT):
    C = D // 8
    assert rows * C % NT == 0
    for i in range(rows * C):  # i = it * NT + tid
        row, ch = divmod(i, C)
        smem[_swz(D, row, ch):_swz(D, row, ch) + 8] = gmem[row * D + ch * 8:row * D + ch * 8 + 8]

def _ldmatrix_x4(smem, addrs, trans=False, num=4):
    """regs[lane][m] = the (lo, hi) pair lane receives from 8x8 matrix m (rows from lanes 8m..8m+7);
    num=2 is ldmatrix .x2 (lanes 16..31 give no address)."""
    regs = [[None] * num for _ in range(32)]
    for m in range(num):
        M = np.stack([smem[addrs[8 * m + r]:addrs[8 * m + r] + 8] for r in range(8)])
        for t in range(32):
            g, q = t // 4, t % 4
            regs[t][m] = (M[2 * q, g], M[2 * q + 1, g]) if trans else (M[g, 2 * q], M[g, 2 * q + 1])
    return regs

def _mma(c, a, b0, b1):
    """c[lane] += A(16x16, from a[lane][0..3]) @ B(16x8, from b0/b1[lane]) in fragment layout."""
    A, B = np.zeros((16, 16)), np.zeros((16, 8))
    for t in range(32):
        g, q = t // 4, t % 4
        for r, (row, colm) in enumerate(((g, 2 * q), (g + 8, 2 * q), (g, 2 * q + 8), (g + 8, 2 * q + 8))):
            A[row, colm], A[row, colm + 1] = a[t][r]
        B[2 * q, g], B[2 * q + 1, g] = b0[t]
        B[2 * q + 8, g], B[2 * q + 9, g] = b1[t]
    prod = A @ B
    for t in range(32):
        g, q = t // 4, t % 4
        c[t][0] += prod[g, 2 * q]
        c[t][1] += prod[g, 2 * q + 1]
        c[t][2] += prod[g + 8, 2 * q]
        c[t][3] += prod[g + 8, 2 * q + 1]

def _reg(regs, m):
    return [regs[t][m] for t in range(32)]

def _model_cta(q, k, v, out, lse, offsets, indices, nb, seq_len, scale_log2, D, BS, MT, BN, bh, qblock):
    """One CTA of bsa_fwd_body<D, BS, MT, BN> on flat float64 arrays."""
    WARPS, TPB, C, KC, NS, ND = BS // (16 * MT), BS // BN, D // 8, D // 16, BN // 8, D // 8
    NT, q_in_regs, nnz = WARPS * 32, MT == 1, len(indices)
    e0 = min(max(offsets[qblock], 0), nnz)
    e1 = min(max(offsets[qblock + 1], e0), nnz)
    ntiles = (e1 - e0) * TPB
    head_off, q_off, lse_row0 = bh * seq_len * D, qblock * BS * D, bh * seq_len + qblock * BS
    if ntiles == 0:
        out[head_off + q_off:head_off + q_off + BS * D] = 0.0
        lse[lse_row0:lse_row0 + BS] = -np.inf
        return
    kv_off = lambda j, c: (c * BS + (j % TPB) * BN) * D  # noqa: E731
    block_of = lambda j: min(max(indices[e0 + j // TPB], 0), nb - 1)  # noqa: E731
    sQ, sK, sV = np.zeros(BS * D), np.zeros(2 * BN * D), np.zeros(2 * BN * D)
    _load_tile(sQ, q[head_off + q_off:], D, BS, NT)
    off = kv_off(0, block_of(0))
    _load_tile(sK, k[head_off + off:], D, BN, NT)
    _load_tile(sV, v[head_off + off:], D, BN, NT)
    next_block = block_of(1) if ntiles > 1 else 0
    q_row = lambda lane: (lane & 7) + ((lane >> 3) & 1) * 8  # noqa: E731
    m = {(w, mt, t, h): -np.inf for w in range(WARPS) for mt in range(MT) for t in range(32) for h in range(2)}
    l_sum = dict.fromkeys(m, 0.0)
    o = {(w, mt, n): [[0.0] * 4 for _ in range(32)] for w in range(WARPS) for mt in range(MT) for n in range(ND)}
    qf = {}
    for j in range(ntiles):
        pending = None
        if j + 1 < ntiles:  # the cp.async of tile j+1 lands in the other stage
            off = kv_off(j + 1, next_block)
            k_next, v_next = np.zeros(BN * D), np.zeros(BN * D)
            _load_tile(k_next, k[head_off + off:], D, BN, NT)
            _load_tile(v_next, v[head_off + off:], D, BN, NT)
            pending = ((j + 1) & 1, k_next, v_next)
            if j + 2 < ntiles:
                next_block = block_of(j + 2)
        tK = sK[(j & 1) * BN * D:((j & 1) + 1) * BN * D]
        tV = sV[(j & 1) * BN * D:((j & 1) + 1) * BN * D]
        for w in range(WARPS):
            if q_in_regs and j == 0:
                for kc in range(KC):
                    qf[w, kc] = _ldmatrix_x4(sQ, [_swz(D, w * 16 + q_row(L), 2 * kc + (L >> 4)) for L in range(32)])
            s = {(mt, n): [[0.0] * 4 for _ in range(32)] for mt in range(MT) for n in range(NS)}
            if KC == 1:  # D = 16: one k-step, B fragments from ldmatrix .x2
                qa1 = {mt: qf[w, 0] if q_in_regs else _ldmatrix_x4(
                    sQ, [_swz(D, (w * MT + mt) * 16 + q_row(L), L >> 4) for L in range(32)]) for mt in range(MT)}
                for n in range(NS):
                    b = _ldmatrix_x4(tK, [_swz(D, n * 8 + (L & 7), (L >> 3) & 1) for L in range(16)], num=2)
                    for mt in range(MT):
                        _mma(s[mt, n], qa1[mt], _reg(b, 0), _reg(b, 1))
            for kc in range(0, KC if KC >= 2 else 0, 2):
                qa = {}
                for mt in range(MT):
                    if q_in_regs:
                        qa[mt, 0], qa[mt, 1] = qf[w, kc], qf[w, kc + 1]
                    else:
                        rows = [(w * MT + mt) * 16 + q_row(L) for L in range(32)]
                        qa[mt, 0] = _ldmatrix_x4(sQ, [_swz(D, rows[L], 2 * kc + (L >> 4)) for L in range(32)])
                        qa[mt, 1] = _ldmatrix_x4(sQ, [_swz(D, rows[L], 2 * kc + 2 + (L >> 4)) for L in range(32)])
                for n in range(NS):
                    b = _ldmatrix_x4(tK, [_swz(D, n * 8 + (L & 7), 2 * kc + (L >> 3)) for L in range(32)])
                    for mt in range(MT):
                        _mma(s[mt, n], qa[mt, 0], _reg(b, 0), _reg(b, 1))
                        _mma(s[mt, n], qa[mt, 1], _reg(b, 2), _reg(b, 3))
            for mt in range(MT):  # online softmax, quad-wide row maxima
                mx = [[max(max(s[mt, n][t][2 * h], s[mt, n][t][2 * h + 1]) * scale_log2 for n in range(NS))
                       for h in range(2)] for t in range(32)]
                for t in range(32):
                    for h in range(2):
                        new = max(m[w, mt, t, h], max(mx[t ^ x][h] for x in range(4)))
                        ref = 0.0 if new == -np.inf else new
                        alpha = 2.0 ** (m[w, mt, t, h] - ref)
                        m[w, mt, t, h] = new
                        total = 0.0
                        for n in range(NS):
                            for e in (2 * h, 2 * h + 1):
                                s[mt, n][t][e] = 2.0 ** (s[mt, n][t][e] * scale_log2 - ref)
                                total += s[mt, n][t][e]
                        l_sum[w, mt, t, h] = l_sum[w, mt, t, h] * alpha + total
                        for n in range(ND):
                            o[w, mt, n][t][2 * h] *= alpha
                            o[w, mt, n][t][2 * h + 1] *= alpha
            for kk in range(BN // 16):  # O += P V with P re-packed as A fragments
                a = {mt: [[(s[mt, 2 * kk][t][0], s[mt, 2 * kk][t][1]), (s[mt, 2 * kk][t][2], s[mt, 2 * kk][t][3]),
                           (s[mt, 2 * kk + 1][t][0], s[mt, 2 * kk + 1][t][1]),
                           (s[mt, 2 * kk + 1][t][2], s[mt, 2 * kk + 1][t][3])] for t in range(32)]
                     for mt in range(MT)}
                for dd in range(ND // 2):
                    b = _ldmatrix_x4(tV, [_swz(D, kk * 16 + q_row(L), 2 * dd + (L >> 4)) for L in range(32)],
                                     trans=True)
                    for mt in range(MT):
                        _mma(o[w, mt, 2 * dd], a[mt], _reg(b, 0), _reg(b, 1))
                        _mma(o[w, mt, 2 * dd + 1], a[mt], _reg(b, 2), _reg(b, 3))
        if pending is not None:
            stage, k_next, v_next = pending
            sK[stage * BN * D:(stage + 1) * BN * D] = k_next
            sV[stage * BN * D:(stage + 1) * BN * D] = v_next
    for w in range(WARPS):  # epilogue through the warp's own Q rows
        for mt in range(MT):
            for t in range(32):
                g, tig = t // 4, t % 4
                l0 = sum(l_sum[w, mt, t ^ x, 0] for x in range(4))
                l1 = sum(l_sum[w, mt, t ^ x, 1] for x in range(4))
                r0 = (w * MT + mt) * 16 + g
                for n in range(ND):
                    sQ[_swz(D, r0, n) + 2 * tig:_swz(D, r0, n) + 2 * tig + 2] = np.array(o[w, mt, n][t][:2]) / l0
                    sQ[_swz(D, r0 + 8, n) + 2 * tig:_swz(D, r0 + 8, n) + 2 * tig + 2] = np.array(o[w, mt, n][t][2:]) / l1
                if tig == 0:
                    lse[lse_row0 + r0] = (m[w, mt, t, 0] + np.log2(l0)) * np.log(2)
                    lse[lse_row0 + r0 + 8] = (m[w, mt, t, 1] + np.log2(l1)) * np.log(2)
        for i in range(MT * 16 * C):
            row, ch = w * MT * 16 + i // C, i % C
            dst = head_off + q_off + row * D + ch * 8
            out[dst:dst + 8] = sQ[_swz(D, row, ch):_swz(D, row, ch) + 8]

# (head dim, block size, m-tiles per warp, keys per tile): every configuration dispatch() uses
KERNEL_CONFIGS = [(D, 16, 1, 16) for D in KERNEL_SIZES] + [(D, 32, 1, 32) for D in KERNEL_SIZES] + \
    [(D, 64, 1, 64) for D in KERNEL_SIZES] + [(16, 128, 2, 64), (32, 128, 2, 64), (64, 128, 2, 64),
                                              (128, 128, 2, 32), (128, 128, 1, 64)]

CUDA_KERNELS_AVAILABLE = cuda_kernels_available()

CUDA_KERNELS_REASON = cuda_kernels_unavailable_reason()

_GPU_SKIP = ("no CUDA device" if (torch.version.cuda is None or not torch.cuda.is_available())
             else "CUDA kernels unavailable") + f" ({CUDA_KERNELS_REASON})"

needs_gpu = pytest.mark.gpu  # tests/conftest.py skips these without usable CUDA kernels

_SM80 = CUDA_KERNELS_AVAILABLE and torch.cuda.get_device_capability()[0] >= 8

needs_sm80 = pytest.mark.skipif(not _SM80, reason=_GPU_SKIP if not CUDA_KERNELS_AVAILABLE else "attention needs sm_80+")

TOL = {torch.bfloat16: 1e-2, torch.float16: 3e-3}

def _attention_case(T, P, H, D, dtype, preset, anchor, bs, seed=0, B=1):
    pattern = SparsePattern.for_tokens(T, P, bs, preset, anchor)
    N = T * P
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", generator=g).to(dtype) for _ in range(3))
    scale = 1.0 / math.sqrt(D)
    offsets, indices = pattern.kv_block_lists()
    out = block_sparse_attention_cuda(q, k, v, offsets, indices, bs, scale)
    if N <= 4096:
        ref = reference_block_sparse_attention(q.float(), k.float(), v.float(), pattern, bs, scale)
    else:
        ref = blocked_block_sparse_attention(q.float(), k.float(), v.float(), pattern, bs, scale)
    assert out.dtype == dtype and out.shape == q.shape
    err = ((out.float() - ref).norm() / ref.norm()).item()
    return err


def build_host_lib(out_dir: Path):
    """The host-side C++ (argument checks, marching-cubes host reference) built with g++ into
    ``out_dir``; skips the test without a C++ compiler."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler")
    out = out_dir / "libs4d_host.so"
    cmd = [cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}",
           f"-I{CUDA_DIR}", str(CUDA_DIR / "block_sparse_attention_host.cpp"),
           str(CUDA_DIR / "marching_cubes_host.cpp"), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lib = ctypes.CDLL(str(out))
    i64, vp, i32p = ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p
    lib.s4d_bsa_check_args_cuda.restype = ctypes.c_int
    lib.s4d_bsa_check_args_cuda.argtypes = [i64, i64, i64, i64, i64, ctypes.c_float, ctypes.c_int, i32p, i32p, i64]
    lib.s4d_bsa_cuda_last_error.restype = ctypes.c_char_p
    lib.s4d_bsa_cuda_supported.restype = ctypes.c_int
    lib.s4d_bsa_cuda_supported.argtypes = [i64, i64, ctypes.c_int]
    lib.s4d_mc_check_args.restype = ctypes.c_int
    lib.s4d_mc_check_args.argtypes = [i64, ctypes.c_double, ctypes.c_double, ctypes.c_double, i64, ctypes.c_int]
    lib.s4d_mc_last_error.restype = ctypes.c_char_p
    lib.s4d_mc_extract_host.restype = ctypes.c_int
    lib.s4d_mc_extract_host.argtypes = [vp, i64, ctypes.c_double, ctypes.c_double, ctypes.c_double, vp, i64,
                                        ctypes.c_int, ctypes.POINTER(vp), ctypes.POINTER(i64), ctypes.POINTER(i64)]
    lib.s4d_mc_host_copy.restype = ctypes.c_int
    lib.s4d_mc_host_copy.argtypes = [vp, vp, vp]
    lib.s4d_mc_host_free.restype = None
    lib.s4d_mc_host_free.argtypes = [vp]
    return lib
