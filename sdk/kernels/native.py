"""Where the native code lives and how it is loaded: the source trees, the build cache, the
TensorRT plugin library, the GPU an engine targets, and :class:`LazyNative`, the build-once /
availability state the CPU kernel (``sdk.kernels.cpu``) and the CUDA kernels
(``sdk.kernels.cuda``) share.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Generic, TypeVar

_SDK_ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


def native_dir(name: str) -> Path:
    """A native source tree (``cpp_ext`` or ``plugins_trt``): the copy a wheel / ``pip install .``
    ships as ``sdk/_native/<name>``, else the checkout's top-level ``<name>`` (editable installs)."""
    packaged = _SDK_ROOT / "_native" / name
    if packaged.is_dir():
        return packaged
    return _SDK_ROOT.parent / name


def cpp_ext_dir() -> Path:
    """Where the kernel sources are: ``$S4D_CPP_EXT_DIR``, else the checkout's or the wheel's ``cpp_ext``."""
    env = os.environ.get("S4D_CPP_EXT_DIR")
    if env:
        return Path(env)
    return native_dir("cpp_ext")


def cache_dir() -> Path:
    """Where built kernels are cached: ``$S4D_CACHE_DIR``, else ``~/.cache/sculpt4d/kernels``."""
    env = os.environ.get("S4D_CACHE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "sculpt4d" / "kernels"


def find_plugin_library() -> Path | None:
    """The BlockSparseAttention TensorRT plugin: ``$S4D_TRT_PLUGIN``, else a CMake build in the
    repository checkout (``build/plugins_trt/`` as plugins_trt/README.md builds it, or
    ``plugins_trt/build*``), else a build inside the installed package's copy of the plugin sources
    (``sdk/_native/plugins_trt/build*``). The builder and the runtime both use this lookup."""
    env = os.environ.get("S4D_TRT_PLUGIN")
    if env:
        return Path(env)
    searches = [(_SDK_ROOT / "_native", ("plugins_trt/build*/**/libs4d_trt_plugin.so",))]
    repo = _SDK_ROOT.parent
    if (repo / "plugins_trt").is_dir():  # a source checkout (editable install), not site-packages
        searches.insert(0, (repo, ("build/**/libs4d_trt_plugin.so", "plugins_trt/build*/**/libs4d_trt_plugin.so")))
    for root, patterns in searches:
        for pattern in patterns:
            for candidate in sorted(root.glob(pattern)):
                return candidate
    return None


def gpu_description() -> str | None:
    """``"<name> (sm_XY)"`` of the current CUDA device, or None without one. Engines record it
    when built and the runtime compares it, so both sides use this one function."""
    import torch

    try:
        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability()
        return f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
    except Exception:  # a broken CUDA runtime counts as no GPU
        return None


class LazyNative(Generic[T]):
    """Build-once state of a native library: the first :meth:`load` builds it (under a lock);
    later calls return it, or raise the first failure's reason again without retrying.

    ``build`` returns the loaded library or raises; ``error`` is the exception type callers see
    (its instances from ``build`` pass through with their message). ``unexpected`` phrases any
    other exception of ``build`` as a reason.
    """

    def __init__(self, build: Callable[[], T], error: type[Exception],
                 unexpected: str = "unexpected error while building the kernel") -> None:
        self._build, self.error, self._unexpected = build, error, unexpected
        self._lock = threading.Lock()
        self.value: T | None = None
        self.reason: str | None = None
        self._attempted = False
        self._log: list[str] = []

    def note(self, message: str) -> None:
        """Add a line to the build log (what was tried, and why it failed)."""
        self._log.append(message)

    def log(self) -> str:
        """What the last build / load attempt did (commands, compiler output, errors)."""
        return "\n".join(self._log)

    def load(self) -> T:
        """The library; raises ``self.error`` with the reason when it cannot be built here."""
        with self._lock:
            if self.value is not None:
                return self.value
            if self._attempted and self.reason is not None:
                raise self.error(self.reason)
            self._attempted = True
            try:
                value = self._build()
            except self.error as exc:
                self._fail(str(exc))
                raise
            except Exception as exc:  # compiler errors, loader errors, odd environments
                self._fail(f"{self._unexpected}: {type(exc).__name__}: {exc}")
                raise self.error(self.reason) from exc
            self.value = value
            self.note("loaded")
            return value

    def _fail(self, reason: str) -> None:
        self.reason = reason
        self.note("unavailable: " + reason)

    def available(self) -> bool:
        """True if the library builds and loads here (builds it on the first call)."""
        try:
            self.load()
        except Exception:  # never let an odd environment break an availability check
            return False
        return True

    def unavailable_reason(self) -> str | None:
        """None if the library is usable, else why not."""
        return None if self.available() else self.reason
