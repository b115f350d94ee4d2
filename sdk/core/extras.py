"""Optional dependencies: one home for "this needs the [extra] extra".

Every import of an optional package goes through :func:`require`, so a missing one fails with one
line that names the extra to install instead of a traceback ending in ``No module named ...``.
The command-line tools print that line and exit with code 2.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PACKAGE = "sculpt4d-sdk"

# import name -> the extra of pyproject.toml that installs it
EXTRA_OF = {"onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "tensorrt": "trt",
            "tensorrt_rtx": "trt-rtx", "cuda": "gpu", "rembg": "rembg",
            "ray": "ray", "pyarrow": "ray", "fastapi": "serve", "uvicorn": "serve", "prometheus_client": "serve",
            "multipart": "serve"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed (or does not import); the message names the extra."""

    def __init__(self, message: str, module: str, extra: str) -> None:
        super().__init__(message, name=module)
        self.module, self.extra = module, extra


def install_hint(extra: str) -> str:
    """The ``pip install`` command that brings ``extra`` (e.g. ``pip install 'sculpt4d-sdk[onnx]'``)."""
    return f"pip install '{PACKAGE}[{extra}]'"


def require(module: str, feature: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError``: "<feature> needs the [<extra>] extra
    (<why the import failed>): pip install 'sculpt4d-sdk[<extra>]'"."""
    extra = extra or EXTRA_OF[module.split(".", 1)[0]]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        why = f"no module named {exc.name!r}" if isinstance(exc, ModuleNotFoundError) and exc.name else str(exc)
        why = " ".join(why.split())  # one line, whatever the loader said
        raise MissingExtraError(f"{feature} needs the [{extra}] extra ({why}): {install_hint(extra)}",
                                module, extra) from None
