"""The conditioning images: :func:`prepare_sequence` crops every frame with ONE box (the union
of the per-frame object boxes), scales the box's long side to ``fill * size``, composites over
white and centres on a white ``size x size`` square. Scale and offset are shared by all frames,
so the object's size and position stay consistent through the sequence (per-frame re-centring
makes 4D sequences jitter). The result is ``[T, 3, size, size]`` in [-1, 1], what the image
conditioner's ``prepare`` expects.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .frames import InputError
from .matting import remove_background

if TYPE_CHECKING:  # torch is imported where tensors are made, so the CLIs' checks stay light
    import torch

__all__ = ["PreparedSequence", "object_box", "prepare_sequence", "save_conditioning_images"]

# --------------------------------------------------------------------------------------------
# One crop box, white background, [-1, 1]
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedSequence:
    """Conditioning images for a sequence.

    ``images``: ``[T, 3, size, size]`` float32 in [-1, 1], object on white, one crop for all
    frames. ``rgba``: the matted source-resolution frames. ``crop_box``: ``(x0, y0, x1, y1)`` in
    source pixels, ``x1`` / ``y1`` exclusive (PIL's crop convention), the union of the per-frame
    object boxes. ``matting``: the method :func:`remove_background` used.
    """

    images: torch.Tensor
    rgba: list[np.ndarray]
    crop_box: tuple[int, int, int, int]
    matting: str


def object_box(alpha: np.ndarray, threshold: int = 127) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` (exclusive ends) of ``alpha > threshold``; ``None`` when empty."""
    mask = np.asarray(alpha) > threshold
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def prepare_sequence(frames: list[np.ndarray], matting: str = "auto", size: int = 512,
                     fill: float = 0.85) -> PreparedSequence:
    """Matte, crop with ONE box, scale, composite over white: the conditioning images.

    The box is the union of the per-frame boxes of ``alpha > 127`` (frames with no object are
    ignored). Every frame is composited over white at source resolution
    (``rgb * a + 255 * (1 - a)``) and resampled (PIL bilinear, antialiased when shrinking) with
    one shared transform: scale ``fill * size / max(box width, box height)``, the box centred on
    a white ``size x size`` square (sub-pixel exact; white beyond the frame). The box is not
    made square, and the shared scale and offset keep the object's size and position
    consistent across frames.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise InputError(f"size must be an integer >= 8, got {size!r}")
    size = int(size)
    if isinstance(fill, bool) or not isinstance(fill, Real) or not 0.0 < float(fill) <= 1.0:
        raise InputError(f"fill must be in (0, 1], got {fill!r}")
    import torch

    rgba, method = remove_background(frames, matting)

    boxes = [b for b in (object_box(f[..., 3]) for f in rgba) if b is not None]
    if not boxes:
        raise InputError(f"no object found in any frame (matting={method}); expected a "
                         "foreground object (alpha > 127) in at least one frame")
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[2] for b in boxes)
    y1 = max(b[3] for b in boxes)
    bw, bh = x1 - x0, y1 - y0
    scale = float(fill) * size / max(bw, bh)  # output pixels per source pixel
    # The whole output square seen in source coordinates: the box centred, size/scale wide.
    span = size / scale
    sx0 = x0 + bw / 2.0 - span / 2.0
    sy0 = y0 + bh / 2.0 - span / 2.0
    # Integer source region holding that square plus the resampling filter's support
    # (1 source pixel when enlarging, 1/scale when shrinking), white outside the frame.
    margin = int(math.ceil(max(1.0, 1.0 / scale))) + 1
    ix0, iy0 = int(math.floor(sx0)) - margin, int(math.floor(sy0)) - margin
    ix1, iy1 = int(math.ceil(sx0 + span)) + margin, int(math.ceil(sy0 + span)) + margin
    box = (sx0 - ix0, sy0 - iy0, sx0 + span - ix0, sy0 + span - iy0)
    h, w = rgba[0].shape[:2]
    cx0, cy0, cx1, cy1 = max(ix0, 0), max(iy0, 0), min(ix1, w), min(iy1, h)

    images = torch.empty(len(rgba), 3, size, size, dtype=torch.float32)
    for t, frame in enumerate(rgba):
        region = np.full((iy1 - iy0, ix1 - ix0, 3), 255, np.uint8)
        if cx1 > cx0 and cy1 > cy0:
            crop = frame[cy0:cy1, cx0:cx1].astype(np.float32)
            a = crop[..., 3:4] / 255.0
            composite = crop[..., :3] * a + 255.0 * (1.0 - a)  # premultiplied over white
            region[cy0 - iy0:cy1 - iy0, cx0 - ix0:cx1 - ix0] = np.clip(
                np.round(composite), 0, 255).astype(np.uint8)
        # One resampling step from the shared source square to size x size: same scale and
        # offset for every frame, filter taps read real neighbours (no clipped edges), and
        # PIL's bilinear widens its support when shrinking (antialiased, area-like).
        canvas = Image.fromarray(region).resize((size, size), Image.BILINEAR, box=box)
        arr = torch.from_numpy(np.asarray(canvas).astype(np.float32))
        images[t] = (arr / 127.5 - 1.0).permute(2, 0, 1)
    return PreparedSequence(images=images, rgba=rgba, crop_box=(x0, y0, x1, y1), matting=method)


def save_conditioning_images(prepared: PreparedSequence | torch.Tensor,
                             directory: str | os.PathLike) -> list[Path]:
    """Write ``cond_0000.png``, ``cond_0001.png``, ... (RGB) and return their paths."""
    import torch

    images = prepared.images if isinstance(prepared, PreparedSequence) else prepared
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise InputError("expected a PreparedSequence or a [T, 3, H, W] tensor in [-1, 1]")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pixels = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255)
    pixels = pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    paths = []
    for t, arr in enumerate(pixels):
        p = directory / f"cond_{t:04d}.png"
        Image.fromarray(np.ascontiguousarray(arr)).save(p)
        paths.append(p)
    return paths
