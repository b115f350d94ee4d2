"""The SDK's one video writer: previews, sample clips and test clips all go through it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.errors import InputError

__all__ = ["write_video"]

# write_video's container per file suffix (mp4 for anything else)
_CONTAINER_FORMATS = {".webm": "webm", ".gif": "gif", ".mkv": "matroska", ".mov": "mov", ".avi": "avi"}


def write_video(frames: list[np.ndarray], path: str | os.PathLike, fps: int = 12, crf: int = 18,
                codec: str = "libx264", pix_fmt: str = "yuv420p", options: dict[str, str] | None = None,
                container: str | None = "mp4") -> Path:
    """Encode RGB uint8 frames ``[H, W, 3]`` as a video, atomically: by default an H.264 mp4
    whatever ``path``'s suffix (``crf``: x264's quality, lower is better; yuv420p needs even H and
    W). ``container=None`` follows the suffix (``.webm``, ``.gif``, ``.mkv``, ... ; mp4 otherwise)
    for codecs those containers take; ``codec``,
    ``pix_fmt`` and the container ``options`` (e.g. ``{"movflags": "faststart"}``) are PyAV's.
    The SDK's one video writer: previews, sample clips and test clips all go through it."""
    import av

    from ..core.atomic import atomic_file

    frames = [np.ascontiguousarray(np.asarray(f)[..., :3], dtype=np.uint8) for f in frames]
    if not frames:
        raise InputError("write_video needs at least one frame")
    h, w = frames[0].shape[:2]
    odd = pix_fmt == "yuv420p" and (h % 2 or w % 2)  # 4:2:0 chroma covers 2x2 pixel blocks
    if odd or any(f.shape[:2] != (h, w) for f in frames):
        raise InputError(f"write_video needs frames of one even size; got {sorted({f.shape[:2] for f in frames})}")
    path = Path(path)
    container_format = container or _CONTAINER_FORMATS.get(path.suffix.lower(), "mp4")
    with atomic_file(path, overwrite=True) as tmp:
        with av.open(str(tmp), "w", format=container_format, options=options or {}) as container:
            stream = container.add_stream(codec, rate=fps, options={"crf": str(crf)} if codec == "libx264" else {})
            stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path
