"""PyTorch models and what builds them: the Sculpt4D DiT, the ShapeVAE and the DINOv2 image
conditioner (``dit``, ``vae``, ``conditioner``, ``rope``), their config dataclasses (``config``),
checkpoint layouts and model factories (``checkpoint``) and the compute model (``flops``).

The model classes are imported on first use, so ``sdk.models.config`` stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

_LAZY = {"ImageConditioner": "sdk.models.conditioner", "Sculpt4DDiT": "sdk.models.dit", "ShapeVAE": "sdk.models.vae"}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from .conditioner import ImageConditioner
    from .dit import Sculpt4DDiT
    from .vae import ShapeVAE

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
