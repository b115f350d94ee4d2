"""The fixed world box and the grid index -> world mapping (SPEC section 4).

Shared by the field decoders (``sdk.generation.decode``), marching cubes on the CPU (``sdk.generation.mcubes``) and
on the GPU (``sdk.kernels.cuda``), and the metrics: a module of its own, below all of them, so
none imports another for these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class WorldBox:
    """The fixed, cubic world box every frame is decoded in."""

    min: float = -1.01
    max: float = 1.01

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min) and math.isfinite(self.max)) or not self.min < self.max:
            raise ValueError(f"WorldBox needs finite min < max, got min={self.min}, max={self.max}")

    @property
    def size(self) -> float:
        """Edge length of the box."""
        return self.max - self.min


def grid_to_world(indices, resolution: int, box: WorldBox = WorldBox(), dtype=None):
    """Grid indices (integer or fractional, any shape) -> world coordinates.

    ``world = indices / resolution * box.size + box.min``, evaluated in float64 in exactly this
    order, so query points and mesh vertices agree to the last bit. NumPy in -> float64 NumPy out
    (or ``dtype``); torch in -> torch on the same device, in ``dtype`` (default: the input's
    floating dtype, float32 for integer input).
    """
    check_resolution(resolution)
    if isinstance(indices, torch.Tensor):
        if dtype is None:
            dtype = indices.dtype if indices.is_floating_point() else torch.float32
        world = indices.to(torch.float64) / resolution * box.size + box.min
        return world.to(dtype)
    world = np.asarray(indices, dtype=np.float64) / resolution * box.size + box.min
    return world if dtype is None else world.astype(dtype)


def check_resolution(resolution: int) -> None:
    """``ValueError`` unless ``resolution`` (cells per axis) is a positive integer."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
