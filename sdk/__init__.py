"""Sculpt4D SDK: run video -> 4D mesh diffusion transformers fast and faithfully.

The package follows the data flow (``docs/architecture.md``): ``core`` (contract, file safety,
notices) <- ``kernels`` <- ``sparse`` <- ``models``; ``inputs`` (frames, matting, conditioning) and
``outputs`` (mesh sequences and their files) beside them; ``generation`` (run settings, runtimes,
sampler, decoding, ``Generator``) on top of those; ``batch`` (s4d-convert's per-clip work, storage,
Ray), ``data``, ``evaluation`` and ``cli`` above. ``tests/test_structure.py`` enforces the layers.

``import sdk`` is cheap: the public names below are imported on first access (PEP 562), so the
command-line tools answer ``--help`` and usage errors without loading torch or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .core import moved as _moved
from .core.lazy import lazy_exports
from .core.version import __version__

# public name -> the module that defines it
_LAZY = {"ConditionerConfig": "sdk.models.config", "DiTConfig": "sdk.models.config",
         "TemporalConfig": "sdk.models.config", "VAEConfig": "sdk.models.config",
         "MeshSequence": "sdk.outputs.meshseq", "Generator": "sdk.generation.pipeline",
         "GeneratorError": "sdk.core.errors"}

__all__ = sorted([*_LAZY, "__version__"])

if TYPE_CHECKING:  # static tools see the real names
    from .generation.pipeline import Generator
    from .core.errors import GeneratorError
    from .models.config import ConditionerConfig, DiTConfig, TemporalConfig, VAEConfig
    from .outputs.meshseq import MeshSequence

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

_moved.install()  # old module paths (sdk.frames, sdk.pipeline, ...) keep working, with a warning
