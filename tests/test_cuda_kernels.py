"""The CUDA kernels (cpp_ext/cuda): compilation, host-side logic and - on a GPU - results.

Without a GPU (CI) this checks:
  * every .cu file compiles warning-free with nvcc for sm_80, sm_86, sm_89 and sm_90 (and the
    attention kernel without register spills); the torch bindings parse; CMake configures;
  * the host-side C++ (argument / CSR validation, and the host reference of the GPU marching
    cubes, which shares mc_common.h with the kernels) built with g++ and called via ctypes;
  * the marching-cubes tables: regenerated and compared with the committed header, sanity
    checks, watertight meshes on random fields, agreement with scikit-image;
  * the Python wrappers report why the kernels are unavailable instead of failing at import.
With a CUDA device the GPU tests compare the kernels with the fp32 references and the host
reference (marching cubes: bit-identical).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from sdk.kernels import cuda as cuda_mod
from sdk.kernels.cuda import (
    KERNEL_SIZES,
    block_sparse_attention_cuda,
    cuda_kernels_available,
    cuda_kernels_unavailable_reason,
    marching_cubes_cuda,
)
from sdk.mcubes import WorldBox, grid_to_world, marching_cubes
from sdk.sparse import blocked_block_sparse_attention, reference_block_sparse_attention
from sdk.sparse.pattern import PRESETS, SparsePattern

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


# =============================================================================================
# 1. compilation
# =============================================================================================

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


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found on PATH")
def test_nvcc_compiles_every_cu_file_without_warnings(tmp_path):
    sources = sorted(CPP.rglob("*.cu"))
    assert {p.name for p in sources} >= {"block_sparse_attention.cu", "marching_cubes.cu"}

    def compile_one(src: Path):
        res = subprocess.run(_nvcc_command(src, tmp_path / (src.stem + ".o")), capture_output=True,
                             text=True, timeout=600)
        return src, res

    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for src, res in pool.map(compile_one, sources):
            output = (res.stdout + res.stderr).strip()
            if res.returncode != 0 or "warning" in output.lower():
                failures.append(f"{src.relative_to(ROOT)} (exit {res.returncode}):\n{output}")
    assert not failures, "\n\n".join(failures)


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


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
def test_torch_bindings_parse(tmp_path):
    """torch_bindings.cpp against the installed torch headers (syntax and types only)."""
    incs = _torch_include_dirs()
    cuda_inc = _cuda_include_dir()
    if not incs or not Path(incs[0], "c10", "cuda", "CUDAStream.h").is_file():
        pytest.skip("torch C++ headers with c10/cuda not installed")
    if cuda_inc is None:
        pytest.skip("CUDA runtime headers not found")
    # CPU-only torch wheels ship c10/cuda headers but not this generated one.
    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = ["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}"]
    cmd += [f"-isystem{p}" for p in incs] + [f"-isystem{tmp_path / 'stub'}", f"-isystem{cuda_inc}"]
    res = subprocess.run(cmd + [str(CUDA_DIR / "torch_bindings.cpp")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(shutil.which("cmake") is None or _nvcc() is None, reason="cmake or nvcc not found")
def test_cmake_configures(tmp_path):
    """The standalone s4d_kernels project configures (the full build is checked by hand / CI
    jobs with time for it: cmake --build takes ~40 s on 2 cores)."""
    res = subprocess.run(["cmake", "-S", str(CPP), "-B", str(tmp_path / "build"),
                          f"-DCMAKE_CUDA_COMPILER={shutil.which('nvcc')}"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    assert "CMAKE_CUDA_ARCHITECTURES:STRING=80;86;89;90" in cache


# =============================================================================================
# 2. host-side library (argument checks + marching-cubes host reference) via ctypes
# =============================================================================================

@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler")
    out = tmp_path_factory.mktemp("s4d_host") / "libs4d_host.so"
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


# ---- attention argument / CSR validation ----------------------------------------------------

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


# ---- marching-cubes argument checks ---------------------------------------------------------

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


# =============================================================================================
# 3. marching-cubes tables
# =============================================================================================

def test_table_generator_matches_committed_header(tmp_path):
    out = tmp_path / "mc_tables.h"
    assert GEN.main(["--output", str(out)]) == 0
    assert out.read_text() == (CUDA_DIR / "mc_tables.h").read_text(), \
        "cpp_ext/cuda/mc_tables.h differs from gen_mc_tables.py output; rerun the generator"
    assert GEN.main(["--check"]) == 0


def test_table_geometry_codes():
    for e, (a, b) in enumerate(GEN.EDGES):
        code = (TABLES["edge_codes"] >> (5 * e)) & 31
        lower, axis = GEN.edge_geometry(e)
        assert code == lower[0] | (lower[1] << 1) | (lower[2] << 2) | (axis << 3)
        pa, pb = np.array(GEN.CORNERS[a]), np.array(GEN.CORNERS[b])
        assert np.abs(pa - pb).sum() == 1  # edges join neighbouring corners
        assert tuple(np.minimum(pa, pb)) == lower
    for d in range(3):
        assert all(((TABLES["corner_bits"][d] >> c) & 1) == GEN.CORNERS[c][d] for c in range(8))
    # every face is a 4-cycle of cube edges, counter-clockwise seen from outside
    for face in GEN.FACES:
        pts = np.array([GEN.CORNERS[c] for c in face], dtype=float)
        normal = np.cross(pts[1] - pts[0], pts[2] - pts[1])
        outward = pts.mean(axis=0) - 0.5
        assert np.dot(normal, outward) > 0
        for t in range(4):
            GEN.edge_of(face[t], face[(t + 1) % 4])


def test_tables_sanity():
    tris, masks = TABLES["triangles"], TABLES["edge_mask"]
    assert len(tris) == 256 and len(masks) == 256
    assert tris[0] == [] and tris[255] == []
    assert TABLES["max_triangles"] <= 5
    for case in range(256):
        crossed = {e for e in range(12) if masks[case] >> e & 1}
        assert crossed == {e for e, (a, b) in enumerate(GEN.EDGES) if (case >> a & 1) != (case >> b & 1)}
        used = {e for t in tris[case] for e in t}
        assert used == crossed, f"case {case}: triangles use {sorted(used)}, crossed {sorted(crossed)}"
        for t in tris[case]:
            assert len(set(t)) == 3
        # inside one cell, every triangle edge is shared by two triangles (in opposite
        # directions) or lies on a cube face (the cell's boundary loop)
        directed = {}
        for t in tris[case]:
            for i in range(3):
                directed[(t[i], t[(i + 1) % 3])] = directed.get((t[i], t[(i + 1) % 3]), 0) + 1
        for (a, b), count in directed.items():
            assert count == 1, f"case {case}: edge {a}->{b} used twice in one direction"
            if (b, a) not in directed:
                assert GEN._faces_of_edge(a) & GEN._faces_of_edge(b), f"case {case}: open edge {a}-{b} inside the cube"


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


def test_tables_complementary_cases():
    tris = TABLES["triangles"]
    for case in range(256):
        comp = 255 - case
        assert TABLES["edge_mask"][case] == TABLES["edge_mask"][comp]
        if _ambiguous_faces(case) == 0:
            # the complement is the same surface, every triangle reversed
            mine = sorted(_canonical(list(t)) for t in tris[case])
            flipped = sorted(_canonical([t[0], t[2], t[1]]) for t in tris[comp])
            assert mine == flipped, f"case {case} vs {comp}"


def test_tables_orientation_single_corner():
    """Case 'only corner c inside': one triangle whose normal points away from corner c."""
    for c in range(8):
        (tri,) = TABLES["triangles"][1 << c]
        pts = []
        for e in tri:
            a, b = GEN.EDGES[e]
            pts.append((np.array(GEN.CORNERS[a]) + np.array(GEN.CORNERS[b])) / 2)
        normal = np.cross(pts[1] - pts[0], pts[2] - pts[0])
        assert np.dot(normal, np.mean(pts, axis=0) - np.array(GEN.CORNERS[c])) > 0


# ---- a vectorised NumPy model of the kernels' algorithm (same tables, order and arithmetic) --

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


@pytest.mark.parametrize("seed", range(4))
def test_tables_watertight_on_random_noise(seed):
    verts, faces = numpy_mc(random_noise_field(12, seed))
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert len(faces) > 500
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward normals


# ---- the host reference (C++, shares mc_common.h with the kernels) ---------------------------

@pytest.mark.parametrize("name", sorted(FIELDS))
def test_host_mc_matches_numpy_model(host_lib, name):
    field = FIELDS[name](40)
    verts, faces = host_mc(host_lib, field)
    ref_v, ref_f = numpy_mc(field)
    assert np.array_equal(verts, ref_v)  # bit-identical world coordinates
    assert np.array_equal(faces, ref_f)


def test_host_mc_matches_numpy_model_level_box_and_noise(host_lib):
    box = WorldBox(-0.7, 1.3)
    for seed in range(3):
        field = random_noise_field(10, seed)
        for level in (0.0, 0.37, -0.2):
            v, f = host_mc(host_lib, field, level, box)
            rv, rf = numpy_mc(field, level, box)
            assert np.array_equal(v, rv) and np.array_equal(f, rf)


def test_host_mc_vertices_follow_grid_to_world_exactly(host_lib):
    R = 32
    verts, _ = host_mc(host_lib, sphere_field(R))
    axis = grid_to_world(np.arange(R + 1), R)
    on_grid = np.isin(verts, axis)
    # every vertex lies on a grid edge: at least two coordinates are exact grid coordinates
    assert (on_grid.sum(axis=1) >= 2).all()


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_host_mc_agrees_with_scikit_image(host_lib, name):
    R = 64
    field = FIELDS[name](R)
    verts, faces = host_mc(host_lib, field)
    assert_same_surface_as_cpu(field, verts, faces)


def test_host_mc_nonfinite_samples_are_outside(host_lib):
    R = 32
    field = sphere_field(R)
    field[10:14, 12:20, 5:25] = np.nan
    field[20, 20, 20] = np.inf
    field[18, 15, 16] = -np.inf
    verts, faces = host_mc(host_lib, field)
    assert np.isfinite(verts).all()
    ref_v, ref_f = numpy_mc(field)
    assert np.array_equal(verts, ref_v) and np.array_equal(faces, ref_f)
    cpu = marching_cubes(field, backend="cpu")
    assert abs(len(verts) - len(cpu.vertices)) <= 0.001 * len(cpu.vertices) + 2
    assert chamfer(verts, cpu.vertices) < 1e-5
    assert trimesh.Trimesh(verts, faces, process=False).is_watertight


def test_host_mc_empty_fields(host_lib):
    for value in (-1.0, 1.0, np.nan):
        v, f = host_mc(host_lib, np.full((9, 9, 9), value, dtype=np.float32))
        assert v.shape == (0, 3) and f.shape == (0, 3)


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


def test_host_mc_sparse_equals_dense(host_lib):
    R = 40
    field = blob_field(R, seed=3)
    dense_v, dense_f = host_mc(host_lib, field)
    rng = np.random.default_rng(0)
    cells = _active_cells(field)
    noisy = np.concatenate([cells, cells[:100], [-5, R ** 3, R ** 3 + 7]])  # duplicates, invalid ids
    rng.shuffle(noisy)
    for ids in (cells.astype(np.int64), noisy.astype(np.int64), cells.astype(np.int32)):
        v, f = host_mc(host_lib, field, cells=ids)
        assert np.array_equal(v, dense_v) and np.array_equal(f, dense_f)
    # every cell listed also gives the dense result
    v, f = host_mc(host_lib, field, cells=np.arange(R ** 3, dtype=np.int64))
    assert np.array_equal(v, dense_v) and np.array_equal(f, dense_f)


def test_host_mc_sparse_subset(host_lib):
    R = 24
    field = sphere_field(R)
    cells = _active_cells(field, dilate=0)
    subset = cells[: len(cells) // 3]
    v, f = host_mc(host_lib, field, cells=subset)
    rv, rf = numpy_mc(field, cells=subset)
    assert np.array_equal(v, rv) and np.array_equal(f, rf)
    assert 0 < len(f) < len(host_mc(host_lib, field)[1])
    v, f = host_mc(host_lib, field, cells=np.zeros(0, dtype=np.int64))
    assert len(v) == 0 and len(f) == 0


# =============================================================================================
# 3b. a NumPy model of the attention kernel's index arithmetic
# =============================================================================================
# Mirrors bsa_fwd_body in block_sparse_attention.cu step by step - swizzled shared-memory tiles,
# ldmatrix (.trans) and mma.m16n8k16 register fragments as the PTX ISA defines them, the CSR
# tile schedule, the online softmax and the epilogue - in float64, for every tile configuration
# the host dispatch uses. It checks the kernel's layout reasoning without a GPU; it does not run
# the compiled code (the GPU tests do). Keep it in step with the kernel.

def _swz(D, row, ch):
    C = D // 8
    rows_per_line, mask = (1, 7) if C >= 8 else (8 // C, C - 1)
    return row * D + ((ch ^ ((row // rows_per_line) & mask)) << 3)


@pytest.mark.parametrize("D", KERNEL_SIZES)
def test_swizzle_stays_in_row_and_is_bank_conflict_free(D):
    C = D // 8
    for row in range(64):  # a permutation of the row's own chunks
        assert sorted((_swz(D, row, ch) - row * D) >> 3 for ch in range(C)) == list(range(C))
    for row0 in range(0, 64, 8):  # one ldmatrix 8x8 matrix: one chunk of 8 consecutive rows
        for ch in range(C):
            slots = {(_swz(D, row0 + r, ch) * 2 // 16) % 8 for r in range(8)}  # 16-byte bank slots
            assert len(slots) == 8, (D, row0, ch)


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


# =============================================================================================
# 4. Python API without the kernels
# =============================================================================================

_AVAILABLE = cuda_kernels_available()
_REASON = cuda_kernels_unavailable_reason()


@pytest.mark.skipif(_AVAILABLE, reason="CUDA kernels are available here")
def test_python_api_reports_why_unavailable():
    assert isinstance(_REASON, str) and _REASON
    if torch.version.cuda is None:
        assert _REASON == "torch was built without CUDA (torch.version.cuda is None)"
    elif not torch.cuda.is_available():
        assert _REASON == "no CUDA device"
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


# =============================================================================================
# 5. GPU tests
# =============================================================================================

_GPU_SKIP = ("no CUDA device" if (torch.version.cuda is None or not torch.cuda.is_available())
             else "CUDA kernels unavailable") + f" ({_REASON})"
needs_gpu = pytest.mark.skipif(not _AVAILABLE, reason=_GPU_SKIP)
_SM80 = _AVAILABLE and torch.cuda.get_device_capability()[0] >= 8
needs_sm80 = pytest.mark.skipif(not _SM80, reason=_GPU_SKIP if not _AVAILABLE else "attention needs sm_80+")


@pytest.fixture
def fp32_matmul():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


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
    from sdk import mcubes

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
