"""The CPU block-sparse attention kernel (``cpp_ext/cpu``): build on first use, load with ctypes.

The C++ source is compiled into a shared library with the system C++ compiler (``$CXX`` or
``g++``) the first time it is needed, into a cache directory (``$S4D_CACHE_DIR`` or
``~/.cache/sculpt4d/kernels``) under a name keyed by a hash of the source, the header, the
flags, the compiler version and the machine. The build writes a temporary file and
``os.replace``-s it into place, so concurrent processes are safe. The library is loaded with
ctypes, which releases the GIL for the duration of the call.

Environment:
    S4D_CPP_EXT_DIR              where ``cpp_ext`` lives (default: ``sdk/_native/cpp_ext`` in a
                                 wheel install, else the checkout's ``cpp_ext``)
    S4D_CACHE_DIR                build cache directory
    CXX                          the C++ compiler (default ``g++``)
    S4D_CPU_KERNEL_EXTRA_FLAGS   extra compiler flags (tuning / debugging), part of the hash
    S4D_CPU_KERNEL_NATIVE=0      do not pass ``-march=native``
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .limits import check_cpu_sizes, check_csr_tensor
from .native import LazyNative, cache_dir, cpp_ext_dir, native_dir  # noqa: F401 (native_dir, cpp_ext_dir re-exported)

__all__ = [
    "block_sparse_attention_cpu",
    "build_log",
    "cpu_kernel_available",
    "cpu_kernel_info",
    "cpu_kernel_unavailable_reason",
    "load_cpu_kernel",
    "native_dir",
]

_SOURCE_REL = Path("cpu") / "block_sparse_attention_cpu.cpp"
_HEADER_REL = Path("include") / "s4d" / "block_sparse_attention.h"
_BASE_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared"]
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}


class KernelBuildError(RuntimeError):
    """The CPU kernel could not be compiled or loaded."""


class _CompileFailed(KernelBuildError):
    """The compiler ran and rejected the source or the flags."""


def _note(msg: str) -> None:
    LOADER.note(msg)


def build_log() -> str:
    """What the last build/load attempt did (commands, compiler output, errors)."""
    return LOADER.log()


def _run(cmd: list[str], timeout: float = 300.0) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, check=False)


def _compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    parts = shlex.split(cxx)
    path = shutil.which(parts[0]) if parts else None
    if path is None:
        raise KernelBuildError(f"no C++ compiler found (looked for {cxx!r} on PATH; set $CXX)")
    return path


def _compiler_version(cxx: str) -> str:
    try:
        res = _run([cxx, "--version"], timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelBuildError(f"cannot run the C++ compiler {cxx!r}: {exc}") from exc
    if res.returncode != 0:
        raise KernelBuildError(f"{cxx} --version failed: {res.stderr.strip()}")
    return res.stdout.strip()


def _accepts_flag(cxx: str, flag: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="s4d_flag_") as tmp:
        src = Path(tmp) / "t.cpp"
        src.write_text("int main() { return 0; }\n")
        try:
            res = _run([cxx, flag, "-c", str(src), "-o", str(Path(tmp) / "t.o")], timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return res.returncode == 0


def _machine_key() -> str:
    parts = [platform.machine(), platform.system()]
    try:  # CPU model and feature flags: -march=native output depends on them
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            seen = set()
            for line in fh:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part") and key not in seen:
                    seen.add(key)
                    parts.append(line.strip())
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def _flag_sets(cxx: str) -> list[list[str]]:
    """Flag sets to try in order: with OpenMP, then (if that fails to build) without it."""
    extra = ["-march=native"] if (os.environ.get("S4D_CPU_KERNEL_NATIVE", "1") != "0"
                                  and _accepts_flag(cxx, "-march=native")) else []
    extra += shlex.split(os.environ.get("S4D_CPU_KERNEL_EXTRA_FLAGS", ""))
    with_omp = [*_BASE_FLAGS, "-fopenmp", *extra]
    return [with_omp, [*_BASE_FLAGS, *extra]]


def _build_one(cxx: str, version: str, flags: list[str], root: Path, src: Path, hdr: Path) -> Path:
    digest = hashlib.sha256()
    for chunk in (src.read_bytes(), hdr.read_bytes(), " ".join(flags).encode(), cxx.encode(),
                  version.encode(), _machine_key().encode()):
        digest.update(chunk)
        digest.update(b"\0")
    target = cache_dir() / f"s4d_bsa_cpu_{digest.hexdigest()[:20]}.so"
    if target.is_file():
        _note(f"using cached {target}")
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    except OSError as exc:
        raise KernelBuildError(f"cannot write the kernel cache directory {target.parent}: {exc} "
                               "(set $S4D_CACHE_DIR to a writable directory)") from exc
    os.close(fd)
    cmd = [cxx, *flags, f"-I{root / 'include'}", str(src), "-o", tmp_name]
    _note("building: " + " ".join(shlex.quote(c) for c in cmd))
    try:
        try:
            res = _run(cmd)
        except (OSError, subprocess.SubprocessError) as exc:
            raise KernelBuildError(f"running the compiler failed: {exc}\ncommand: {' '.join(cmd)}") from exc
        if res.stderr.strip():
            _note("compiler stderr:\n" + res.stderr.strip())
        if res.returncode != 0:
            raise _CompileFailed(
                f"compiling the CPU kernel failed (exit {res.returncode})\ncommand: {' '.join(cmd)}\n"
                f"compiler stderr:\n{res.stderr.strip()}")
        os.replace(tmp_name, target)  # atomic: concurrent builders race harmlessly
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    _note(f"built {target}")
    return target


def _build() -> Path:
    root = cpp_ext_dir()
    src, hdr = root / _SOURCE_REL, root / _HEADER_REL
    for path in (src, hdr):
        if not path.is_file():
            raise KernelBuildError(f"kernel source not found: {path} (set $S4D_CPP_EXT_DIR)")
    cxx = _compiler()
    version = _compiler_version(cxx)
    flag_sets = _flag_sets(cxx)
    errors = []
    for i, flags in enumerate(flag_sets):
        try:
            return _build_one(cxx, version, flags, root, src, hdr)
        except _CompileFailed as exc:
            errors.append(str(exc))
            if i + 1 < len(flag_sets):
                _note("retrying without OpenMP (the kernel will run single-threaded)")
    raise KernelBuildError(errors[0] if len(errors) == 1 else
                           errors[0] + "\n\nwithout OpenMP as well:\n" + errors[-1])


def _declare(lib: ctypes.CDLL) -> None:
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    lib.s4d_bsa_forward_cpu.restype = ctypes.c_int
    lib.s4d_bsa_forward_cpu.argtypes = [vp, vp, vp, vp, vp, i64, i64, i64, i64, vp, vp, i64,
                                        ctypes.c_float, ctypes.c_int, ctypes.c_int]
    lib.s4d_bsa_last_error.restype = ctypes.c_char_p
    lib.s4d_bsa_last_error.argtypes = []
    lib.s4d_bsa_abi_version.restype = ctypes.c_int
    lib.s4d_bsa_abi_version.argtypes = []
    lib.s4d_bsa_cpu_isa.restype = ctypes.c_char_p
    lib.s4d_bsa_cpu_isa.argtypes = []
    lib.s4d_bsa_cpu_has_openmp.restype = ctypes.c_int
    lib.s4d_bsa_cpu_has_openmp.argtypes = []


def _load() -> ctypes.CDLL:
    path = _build()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise KernelBuildError(f"loading {path} failed: {exc}") from exc
    _declare(lib)
    return lib


def make_loader() -> LazyNative[ctypes.CDLL]:
    """A fresh build-once state for the CPU kernel (tests swap one in for ``LOADER``)."""
    return LazyNative(_load, KernelBuildError, "unexpected error while building the CPU kernel")


LOADER = make_loader()


def load_cpu_kernel() -> ctypes.CDLL:
    """Build (if needed) and load the library; raises ``KernelBuildError`` with the reason."""
    lib = LOADER.load()
    if not lib.s4d_bsa_cpu_has_openmp():
        from ..core.notices import warn_once

        warn_once("cpu-kernel-openmp", "the C++ CPU attention kernel was built without OpenMP and runs on ONE "
                                       f"thread (-fopenmp failed with {Path(_compiler_name()).name}); fix: install "
                                       "the compiler's OpenMP runtime (libgomp for g++, libomp for clang) and "
                                       f"delete {lib._name} to rebuild; details: sdk.kernels.build_log()")
    return lib


def _compiler_name() -> str:
    return shlex.split(os.environ.get("CXX", "g++") or "g++")[0]


def cpu_kernel_available() -> bool:
    """True if the kernel builds and loads here (builds it on the first call)."""
    return LOADER.available()


def cpu_kernel_unavailable_reason() -> str | None:
    """None if the kernel is usable, else why not (compiler missing, build error, ...)."""
    return LOADER.unavailable_reason()


def cpu_kernel_info() -> dict:
    """ISA, OpenMP, ABI version and the library path (for logs and benchmark headers)."""
    lib = load_cpu_kernel()
    return {"isa": lib.s4d_bsa_cpu_isa().decode(), "openmp": bool(lib.s4d_bsa_cpu_has_openmp()),
            "abi_version": lib.s4d_bsa_abi_version(), "path": lib._name}


def block_sparse_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               kv_offsets: torch.Tensor, kv_indices: torch.Tensor,
                               block_size: int, scale: float, return_lse: bool = False):
    """Block-sparse attention forward with the C++ CPU kernel.

    q, k, v: CPU tensors ``[B, H, N, D]`` of one dtype (float32 or bfloat16), N a multiple of
    ``block_size``. ``kv_offsets`` (int32 ``[N / block_size + 1]``) and ``kv_indices`` (int32)
    are the CSR key-block lists of ``SparsePattern.kv_block_lists()``. Returns ``out`` (same
    dtype and shape as q) or ``(out, lse)`` with ``lse`` float32 ``[B, H, N]``: the natural
    log-sum-exp of the scaled scores of each query row. Threads: ``torch.get_num_threads()``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU tensor, got device {t.device}")
        if t.dtype not in _DTYPE_CODES:
            raise ValueError(f"{name} must be float32 or bfloat16, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, H, N, D], got shape {tuple(t.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k and v must have the same shape [B, H, N, D], got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    B, H, N, D = q.shape
    check_cpu_sizes(D, block_size)
    if N == 0 or N % block_size != 0:
        raise ValueError(f"sequence length N (axis 2 of q) must be a positive multiple of block_size "
                         f"({block_size}), got {N}")
    nb = N // block_size
    kv_offsets = check_csr_tensor("kv_offsets", kv_offsets, "cpu")
    kv_indices = check_csr_tensor("kv_indices", kv_indices, "cpu")
    if kv_offsets.numel() != nb + 1:
        raise ValueError(f"kv_offsets must have N / block_size + 1 = {nb + 1} entries, got {kv_offsets.numel()}")
    nnz = int(kv_offsets[-1])
    if kv_indices.numel() != nnz:
        raise ValueError(f"kv_indices must have kv_offsets[-1] = {nnz} entries, got {kv_indices.numel()}")
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a float, got {scale!r}") from None

    lib = load_cpu_kernel()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    lse = torch.empty((B, H, N), dtype=torch.float32) if return_lse else None
    rc = lib.s4d_bsa_forward_cpu(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
        lse.data_ptr() if lse is not None else None,
        B * H, N, D, block_size, kv_offsets.data_ptr(),
        kv_indices.data_ptr() if nnz > 0 else None, nb, scale, _DTYPE_CODES[q.dtype],
        torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"CPU block-sparse attention kernel failed (code {rc}): "
                           f"{lib.s4d_bsa_last_error().decode(errors='replace')}")
    return (out, lse) if return_lse else out
