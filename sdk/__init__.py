"""Sculpt4D SDK: run video -> 4D mesh diffusion transformers fast and faithfully.

``import sdk`` is cheap: the public names below are imported on first access (PEP 562), so the
command-line tools answer ``--help`` and usage errors without loading torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

# public name -> the submodule that defines it
_LAZY = {"ConditionerConfig": "config", "DiTConfig": "config", "TemporalConfig": "config", "VAEConfig": "config",
         "MeshSequence": "meshseq", "Generator": "pipeline", "GeneratorError": "pipeline"}

__all__ = sorted([*_LAZY, "__version__"])

if TYPE_CHECKING:  # static tools see the real names
    from .config import ConditionerConfig, DiTConfig, TemporalConfig, VAEConfig
    from .meshseq import MeshSequence
    from .pipeline import Generator, GeneratorError


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
