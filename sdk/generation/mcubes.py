"""Surface extraction: the one marching-cubes entry point of the SDK (SPEC section 4).

Conventions shared by every decoder and every backend:

* The field is sampled on ONE fixed world box for every frame (:class:`WorldBox`, default
  ``[-1.01, 1.01]^3``). There is no per-frame re-centring or re-scaling: that makes mesh
  sequences jitter.
* A field of resolution ``R`` has ``R + 1`` samples per axis, in x, y, z axis order:
  ``field[i, j, k]`` is the sample at ``box.min + (i, j, k) / R * box.size``.
* The field is positive INSIDE; the surface is its ``level`` set (0 by default).
* Grid index -> world coordinate is :func:`grid_to_world` (``sdk.core.grid``) and nothing else, both for the
  query points (``sdk.generation.decode``) and for the mesh vertices, on CPU and on GPU.

Backends live in a small registry (:data:`BACKENDS`): ``"cpu"`` (scikit-image, Lewiner) and
``"cuda"`` (the kernel in ``cpp_ext/cuda/marching_cubes.cu``, via ``sdk.kernels.cuda``; it raises
a clear error where the CUDA kernels cannot be built). ``"auto"`` picks ``cuda`` for a CUDA
tensor when the kernels are available, else ``cpu``.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np
import torch
import trimesh

from ..core.grid import WorldBox, check_resolution, grid_to_world  # noqa: F401 (re-exported: the box and the mapping)

FieldLike = Union[np.ndarray, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------

# A backend takes (field [R+1]^3 as given by the caller, level, box) and returns
# (vertices [V, 3] float64 world coordinates, faces [F, 3] int64) with outward winding.
Backend = Callable[[FieldLike, float, WorldBox], "tuple[np.ndarray, np.ndarray]"]


def _cpu_backend(field: FieldLike, level: float, box: WorldBox) -> tuple[np.ndarray, np.ndarray]:
    from skimage import measure

    if isinstance(field, torch.Tensor):
        volume = field.detach().to("cpu", torch.float32).numpy()
    else:
        volume = np.asarray(field, dtype=np.float32)
    resolution = volume.shape[0] - 1

    # Non-finite samples (NaN, +inf, -inf) count as OUTSIDE: they are replaced by a finite value
    # below the level (the smallest finite sample, or level - 1 if that is not below the level),
    # so marching cubes sees a regular field and never emits a non-finite vertex from them.
    finite = np.isfinite(volume)
    if not finite.all():
        volume = volume.copy()
        outside = level - 1.0
        if finite.any():
            outside = min(outside, float(volume[finite].min()))
        volume[~finite] = outside

    inside = volume > level
    if not inside.any() or inside.all():
        return _empty_arrays()

    try:
        # Lewiner's tables with gradient_direction="ascent" give counter-clockwise faces seen
        # from the side where the field is BELOW the level, i.e. outward normals for a
        # positive-inside field (checked by the signed-volume tests).
        verts, faces, _normals, _values = measure.marching_cubes(
            volume, level=level, method="lewiner", gradient_direction="ascent",
            allow_degenerate=True,
        )
    except RuntimeError:  # "No surface found at the given iso value."
        return _empty_arrays()

    # skimage returns vertices in array-index order, which is our x, y, z order.
    vertices = grid_to_world(verts, resolution, box)
    return vertices, faces.astype(np.int64)


def _cuda_backend(field: FieldLike, level: float, box: WorldBox) -> tuple[np.ndarray, np.ndarray]:
    from ..kernels.cuda import cuda_kernels_available, cuda_kernels_unavailable_reason, mcubes_backend

    if not cuda_kernels_available():
        raise RuntimeError(f"GPU marching cubes is unavailable: {cuda_kernels_unavailable_reason()}; "
                           "use backend='cpu' (or 'auto')")
    return mcubes_backend(field, level, box)


BACKENDS: dict[str, Backend] = {"cpu": _cpu_backend, "cuda": _cuda_backend}


def register_backend(name: str, backend: Backend) -> None:
    """Install (or replace) a backend.

    A backend must follow :func:`grid_to_world` for its vertices and return outward faces; the
    cleanup (duplicate merge, non-finite drop) in :func:`marching_cubes` is applied on top.
    """
    if name == "auto":
        raise ValueError("'auto' is a selection rule, not a backend name")
    BACKENDS[name] = backend


def resolve_backend_name(backend: str, field: FieldLike) -> str:
    """The backend ``marching_cubes(field, backend=backend)`` runs; a GPU field that has to
    come back to the CPU because the CUDA kernel is unavailable warns once."""
    if backend == "auto":
        if isinstance(field, torch.Tensor) and field.is_cuda:
            from ..kernels.cuda import cuda_kernels_available, cuda_kernels_unavailable_reason

            if cuda_kernels_available():  # the field never leaves the GPU
                return "cuda"
            from ..core.notices import one_line, warn_once

            warn_once("mcubes-cuda", "marching cubes falls back from the GPU kernel to the CPU (skimage; each field "
                                     f"is copied to the host): {one_line(cuda_kernels_unavailable_reason())}; fix: "
                                     "nvcc on PATH (or $CUDA_HOME) matching torch's CUDA; details: "
                                     "sdk.kernels.cuda.build_log()")
        return "cpu"
    if backend not in BACKENDS:
        raise ValueError(f"unknown marching-cubes backend {backend!r}; "
                         f"choose 'auto' or one of {sorted(BACKENDS)}")
    return backend


def _resolve_backend(backend: str, field: FieldLike) -> Backend:
    return BACKENDS[resolve_backend_name(backend, field)]


# --------------------------------------------------------------------------------------------
# Mesh cleanup
# --------------------------------------------------------------------------------------------

def _empty_arrays() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 3), dtype=np.float64), np.zeros((0, 3), dtype=np.int64)


def _merge_duplicate_vertices(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge bit-identical vertices, keeping first-occurrence order (deterministic), then drop
    faces that became degenerate (two corners on one vertex: zero area).

    Lewiner already shares vertices between cells; duplicates only appear where the field is
    exactly at the level on a grid point (several edges then yield the same position).
    """
    if len(vertices) == 0:
        return vertices, faces
    _, first, inverse = np.unique(vertices, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(first) == len(vertices):
        return vertices, faces
    # Renumber unique vertices by first occurrence so the output order follows skimage's.
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    vertices = vertices[first[order]]
    faces = rank[inverse][faces]
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    return vertices, faces[keep]


def _drop_nonfinite(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop faces touching a non-finite vertex, then the vertices no face uses any more."""
    bad = ~np.isfinite(vertices).all(axis=1)
    if not bad.any():
        return vertices, faces
    faces = faces[~bad[faces].any(axis=1)]
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.reshape(-1)] = True
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(int(used.sum()))
    return vertices[used], remap[faces]


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def marching_cubes(field: FieldLike, level: float = 0.0, box: WorldBox = WorldBox(),
                   backend: str = "auto") -> trimesh.Trimesh:
    """Extract the ``level`` surface of a positive-inside field on the fixed world box.

    ``field``: NumPy array or torch tensor ``[R+1, R+1, R+1]`` in x, y, z order. Returns a
    ``trimesh.Trimesh`` (built with ``process=False``: vertex order is the backend's, after
    merging exact duplicates) with outward normals. NaN/inf samples count as outside. A field
    with no crossing gives an empty mesh.
    """
    shape = tuple(field.shape)
    if len(shape) != 3 or len(set(shape)) != 1 or shape[0] < 2:
        raise ValueError(f"field must be [R+1, R+1, R+1] with R >= 1, got shape {shape}")
    if isinstance(field, np.ndarray) and not np.issubdtype(field.dtype, np.number):
        raise ValueError(f"field must be numeric, got dtype {field.dtype}")
    if isinstance(field, torch.Tensor) and (field.is_complex() or field.dtype == torch.bool):
        raise ValueError(f"field must be real floating point, got dtype {field.dtype}")
    level = float(level)
    if not math.isfinite(level):
        raise ValueError(f"level must be finite, got {level}")

    vertices, faces = _resolve_backend(backend, field)(field, level, box)
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    vertices, faces = _drop_nonfinite(vertices, faces)
    vertices, faces = _merge_duplicate_vertices(vertices, faces)
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
