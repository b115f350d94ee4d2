"""``preview.mp4``: the conditioning frame and the rendered mesh side by side, one video frame per
sampled frame, at the clip's frame rate.

Left: the conditioning image (what the model saw), right: the mesh rendered by
``sdk.outputs.render`` from the contact sheet's fixed camera, on white. H.264 / yuv420p through
``sdk.outputs.video.write_video`` (PyAV). The frame rate is the sampled clip's (``sdk.outputs.gltf.clip_fps``:
from the frame times, 24 fps when they are unknown). Without conditioning images (or with a
different number of them) the video shows the renders only.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

PREVIEW_TILE = 320  # pixels per side of each half; even, so the video's size is too


def preview_frames(meshes: Sequence, images: Sequence[np.ndarray] = (), tile: int = PREVIEW_TILE):
    """Yield RGB uint8 frames ``[tile, 2 * tile, 3]`` (``[tile, tile, 3]`` without images)."""
    from PIL import Image

    from .render import Camera, over_background, render_rgba

    if tile < 2 or tile % 2:
        raise ValueError(f"tile must be an even size >= 2, got {tile}")
    paired = len(images) == len(meshes)
    for i, mesh in enumerate(meshes):
        render = over_background(render_rgba(mesh.vertices, mesh.faces, Camera(), tile), (255, 255, 255))
        if not paired:
            yield render
            continue
        cond = Image.fromarray(np.asarray(images[i], np.uint8)).convert("RGB").resize((tile, tile), Image.BILINEAR)
        yield np.concatenate([np.asarray(cond), render], axis=1)


def write_preview(meshes: Sequence, path: str | os.PathLike, images: Sequence[np.ndarray] = (),
                  frame_times: Sequence[float | None] = (), tile: int = PREVIEW_TILE, crf: int = 18) -> Path:
    """Render and encode ``preview.mp4``; returns the path."""
    from .gltf import clip_fps
    from .video import write_video

    if not len(meshes):
        raise ValueError("a preview needs at least one frame")
    fps = Fraction(clip_fps(frame_times, len(meshes))).limit_denominator(1001)  # 12, 30000/1001, 7.5 ...
    return write_video(list(preview_frames(meshes, images, tile)), path, fps=fps, crf=crf)
