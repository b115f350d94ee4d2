"""The CUDA kernels (``cpp_ext/cuda``): JIT-built PyTorch ops over the kernels' C ABI.

``cpp_ext/cuda/torch_bindings.cpp`` (the only file including torch headers) is compiled together
with the kernel sources by :func:`torch.utils.cpp_extension.load` on first use - and only when
torch has CUDA, a device of compute capability >= 7.5 is visible and ``nvcc`` exists - into a
cache directory (``$S4D_CACHE_DIR`` or ``~/.cache/sculpt4d/kernels``) under a name keyed by a hash
of every source and header, the torch / CUDA versions, the target architectures and the flags.
Loading registers ``torch.ops.s4d_cuda.*``:

* ``block_sparse_attention_fwd(q, k, v, kv_offsets, kv_indices, block_size, scale,
  return_lse=False, check_csr=True) -> (out, lse)``
* ``marching_cubes(field, level, box_min, box_max) -> (vertices, faces)``
* ``marching_cubes_sparse(field, cells, level, box_min, box_max) -> (vertices, faces)``

The attention kernel needs compute capability >= 8.0 (sm_80 tensor-core instructions); marching
cubes runs on 7.5 too. Nothing here raises at import. :func:`cuda_kernels_available` says whether
the ops work here and :func:`cuda_kernels_unavailable_reason` why not; the wrappers raise
``RuntimeError`` with that reason when called without them. ``sdk.generation.mcubes``'s ``"cuda"`` backend
is :func:`mcubes_backend`.

Environment:
    S4D_CPP_EXT_DIR            where ``cpp_ext`` lives (default: ``sdk/_native/cpp_ext`` in a wheel
                               install, else the checkout's ``cpp_ext``; see ``sdk.kernels.cpu.native_dir``)
    S4D_CACHE_DIR              build cache directory
    TORCH_CUDA_ARCH_LIST       target architectures (torch's variable; default: the visible GPUs)
    S4D_CUDA_EXTRA_FLAGS       extra nvcc flags (part of the hash)
"""

from __future__ import annotations

import hashlib
import math
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import torch

from ..core.grid import WorldBox
from .limits import KERNEL_SIZES, check_csr_tensor, check_cuda_sizes, cuda_kernel_supports  # noqa: F401 (re-exported)
from .native import LazyNative, cache_dir, cpp_ext_dir

__all__ = [
    "CUDA_SOURCES",
    "block_sparse_attention_cuda",
    "build_log",
    "cuda_kernels_available",
    "cuda_kernels_unavailable_reason",
    "load_cuda_kernels",
    "marching_cubes_cuda",
    "mcubes_backend",
]

# Compiled sources (relative to cpp_ext) and every file whose content shapes the build.
CUDA_SOURCES = (
    "cuda/torch_bindings.cpp",
    "cuda/block_sparse_attention.cu",
    "cuda/block_sparse_attention_host.cpp",
    "cuda/marching_cubes.cu",
    "cuda/marching_cubes_host.cpp",
)
_HASHED = CUDA_SOURCES + (
    "cuda/bsa_internal.h",
    "cuda/mc_common.h",
    "cuda/mc_internal.h",
    "cuda/mc_tables.h",
    "include/s4d/block_sparse_attention.h",
    "include/s4d/block_sparse_attention_cuda.h",
    "include/s4d/marching_cubes_cuda.h",
)
_CFLAGS = ["-O3"]
_CUDA_CFLAGS = ["-O3"]

_MAX_RESOLUTION = 1024

kernel_supports = cuda_kernel_supports  # the rule lives in sdk.kernels.limits (with KERNEL_SIZES)


class CudaKernelsUnavailable(RuntimeError):
    """The CUDA kernels cannot be used here (no CUDA torch / device / nvcc, or the build failed)."""


def build_log() -> str:
    """What the last availability check / build did."""
    return LOADER.log()


def _nvcc() -> str | None:
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:  # pragma: no cover - torch without cpp_extension
        CUDA_HOME = None
    if CUDA_HOME:
        candidate = Path(CUDA_HOME) / "bin" / "nvcc"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("nvcc")


def _precheck() -> str | None:
    """Why the kernels cannot even be built here (None: try to build)."""
    if torch.version.cuda is None:
        return "torch was built without CUDA (torch.version.cuda is None)"
    try:
        if not torch.cuda.is_available():
            return "no CUDA device"
        major, minor = torch.cuda.get_device_capability()
    except Exception as exc:  # a broken driver reports here
        return f"no usable CUDA device ({exc})"
    if (major, minor) < (7, 5):
        return (f"the CUDA kernels need compute capability >= 7.5 (the attention kernel >= 8.0); "
                f"{torch.cuda.get_device_name()} is {major}.{minor}")
    if _nvcc() is None:
        return "nvcc not found (install the CUDA toolkit or set CUDA_HOME)"
    return None


def _build_name(root: Path) -> tuple[str, list[str]]:
    extra = shlex.split(os.environ.get("S4D_CUDA_EXTRA_FLAGS", ""))
    digest = hashlib.sha256()
    for rel in _HASHED:
        digest.update(rel.encode())
        digest.update((root / rel).read_bytes())
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST") or ",".join(
        "%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))
    for part in (torch.__version__, str(torch.version.cuda), arch, " ".join(_CFLAGS + _CUDA_CFLAGS + extra)):
        digest.update(b"\0" + part.encode())
    return f"s4d_cuda_{digest.hexdigest()[:16]}", extra


def _load() -> bool:
    reason = _precheck()
    if reason is not None:
        raise CudaKernelsUnavailable(reason)
    root = cpp_ext_dir()
    missing = [rel for rel in _HASHED if not (root / rel).is_file()]
    if missing:
        raise CudaKernelsUnavailable(f"CUDA kernel sources not found under {root}: {missing} (set $S4D_CPP_EXT_DIR)")
    name, extra = _build_name(root)
    build_dir = cache_dir() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    from torch.utils.cpp_extension import load

    LOADER.note(f"building/loading {name} in {build_dir}")
    load(name=name, sources=[str(root / rel) for rel in CUDA_SOURCES],
         extra_include_paths=[str(root / "include"), str(root / "cuda")],
         extra_cflags=list(_CFLAGS), extra_cuda_cflags=list(_CUDA_CFLAGS) + extra,
         build_directory=str(build_dir), is_python_module=False, verbose=False)
    if not hasattr(torch.ops.s4d_cuda, "block_sparse_attention_fwd"):
        raise CudaKernelsUnavailable(f"{name} loaded but registered no s4d_cuda ops")
    return True


def make_loader() -> LazyNative[bool]:
    """A fresh build-once state for the CUDA kernels (tests swap one in for ``LOADER``)."""
    # compiler errors, ninja missing and loader errors become the reason
    return LazyNative(_load, CudaKernelsUnavailable, "building the CUDA kernels failed")


LOADER = make_loader()


def load_cuda_kernels() -> None:
    """Build (if needed) and load the ops; raises :class:`CudaKernelsUnavailable` with the reason."""
    LOADER.load()


def cuda_kernels_available() -> bool:
    """True if the CUDA ops work here (builds them on the first call where a build can work)."""
    return LOADER.available()


def cuda_kernels_unavailable_reason() -> str | None:
    """None if the CUDA kernels are usable, else why not."""
    return LOADER.unavailable_reason()


def _require() -> None:
    if not cuda_kernels_available():
        raise CudaKernelsUnavailable(f"CUDA kernels unavailable: {LOADER.reason}")


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------

def block_sparse_attention_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                kv_offsets: torch.Tensor, kv_indices: torch.Tensor,
                                block_size: int, scale: float, return_lse: bool = False,
                                check_csr: bool = True):
    """Block-sparse attention forward with the CUDA kernel.

    q, k, v: CUDA tensors ``[B, H, N, D]`` of one dtype (float16 or bfloat16), D in ``KERNEL_SIZES``
    (16, 32, 64, 128), N a multiple of ``block_size`` (one of the same sizes). ``kv_offsets`` (int32 ``[N / block_size + 1]``)
    and ``kv_indices`` (int32) are ``SparsePattern.kv_block_lists()``, on the CPU or the same
    GPU. ``check_csr`` validates the lists on the host first (a device->host copy when they
    live on the GPU; pass False for lists already validated). Returns ``out`` (q's dtype and
    shape) or ``(out, lse)`` with ``lse`` float32 ``[B, H, N]`` (natural log-sum-exp of the
    scaled scores; -inf for rows without keys).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cuda":
            raise ValueError(f"{name} must be a CUDA tensor, got device {t.device}")
        if t.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"{name} must be float16 or bfloat16 (float32 runs on the CPU kernel), got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, H, N, D], got shape {tuple(t.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k and v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    check_cuda_sizes(q.shape[-1], block_size)
    kv_offsets = check_csr_tensor("kv_offsets", kv_offsets)  # CPU or the same GPU
    kv_indices = check_csr_tensor("kv_indices", kv_indices)
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    _require()
    major, minor = torch.cuda.get_device_capability(q.device)
    if major < 8:
        raise RuntimeError(f"the CUDA block-sparse attention kernel needs compute capability >= 8.0; "
                           f"{q.device} is {major}.{minor}")
    out, lse = torch.ops.s4d_cuda.block_sparse_attention_fwd(
        q, k, v, kv_offsets, kv_indices, block_size, scale, bool(return_lse), bool(check_csr))
    return (out, lse) if return_lse else out


# --------------------------------------------------------------------------------------------
# marching cubes
# --------------------------------------------------------------------------------------------

def marching_cubes_cuda(field, level: float = 0.0, box: WorldBox = WorldBox(),
                        active_cells: torch.Tensor | np.ndarray | None = None,
                        device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GPU marching cubes of a positive-inside ``[R+1]^3`` field (x, y, z order).

    Returns ``(vertices float64 [V, 3] world coordinates, faces int64 [F, 3])`` as CUDA tensors:
    one vertex per crossed grid edge ordered by edge id, faces ordered by cell, counter-clockwise
    seen from outside; world mapping bit-identical to :func:`sdk.generation.mcubes.grid_to_world`; NaN/inf
    samples count as outside. ``active_cells`` (int32/int64 linear ids ``(i*R + j)*R + k``)
    restricts extraction to those cells (hierarchical decoding); equal to the dense result when
    it covers every cell with a sign change. A NumPy / CPU field is moved to ``device`` (default:
    the current CUDA device).
    """
    if isinstance(field, np.ndarray):
        field = torch.from_numpy(np.ascontiguousarray(field))
    if not isinstance(field, torch.Tensor):
        raise ValueError(f"field must be a torch.Tensor or numpy array, got {type(field).__name__}")
    shape = tuple(field.shape)
    if len(shape) != 3 or len(set(shape)) != 1 or shape[0] < 2:
        raise ValueError(f"field must be [R+1, R+1, R+1] with R >= 1, got shape {shape}")
    if shape[0] - 1 > _MAX_RESOLUTION:
        raise ValueError(f"resolution R = {shape[0] - 1} exceeds the CUDA kernel's maximum {_MAX_RESOLUTION}")
    if field.is_complex() or field.dtype == torch.bool:
        raise ValueError(f"field must be real floating point, got dtype {field.dtype}")
    level = float(level)
    if not math.isfinite(level):
        raise ValueError(f"level must be finite, got {level}")
    _require()
    if field.device.type != "cuda":
        field = field.to(device if device is not None else torch.device("cuda", torch.cuda.current_device()))
    field = field.to(torch.float32)
    if active_cells is None:
        return torch.ops.s4d_cuda.marching_cubes(field, level, float(box.min), float(box.max))
    if isinstance(active_cells, np.ndarray):
        active_cells = torch.from_numpy(np.ascontiguousarray(active_cells))
    if active_cells.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"active_cells must be int32 or int64 linear cell ids, got {active_cells.dtype}")
    return torch.ops.s4d_cuda.marching_cubes_sparse(field, active_cells.reshape(-1).to(field.device), level,
                                                    float(box.min), float(box.max))


def mcubes_backend(field, level: float, box: WorldBox) -> tuple[np.ndarray, np.ndarray]:
    """An :data:`sdk.generation.mcubes.BACKENDS` entry: (vertices float64, faces int64) as NumPy arrays."""
    vertices, faces = marching_cubes_cuda(field, level, box)
    return vertices.cpu().numpy(), faces.cpu().numpy()


def __getattr__(name: str):
    # Removed names: a clear message instead of a bare AttributeError for code written against them.
    if name == "register_mcubes_backend":
        raise AttributeError("sdk.kernels.cuda.register_mcubes_backend was removed: sdk.generation.mcubes has the CUDA "
                             "backend built in (marching_cubes(field, backend='cuda'))")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
