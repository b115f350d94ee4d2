"""Lazy public names for a package (PEP 562).

A package lists each public name with the module that defines it; the module is imported the
first time the name is used. This keeps ``import sdk`` and the command-line tools' ``--help`` free
of torch, transformers and trimesh, while ``from sdk import Generator`` still works.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any, Callable, Mapping


def lazy_exports(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps a public name to the absolute
    name of the module that defines it. A name is looked up once, then cached in the package; any
    other name that is a submodule is imported."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            # a submodule not imported yet (``import sdk.models; sdk.models.dit``), as an eager
            # package would have had it
            if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
                return importlib.import_module(f"{package}.{name}")
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
