"""Frames in: decode a video file, a directory of frame images or an in-memory list of images and
sample ``num_frames`` of them evenly (optionally inside a ``[start, end)`` time window). The SDK's
one video writer lives on the output side, :func:`sdk.outputs.video.write_video`.

Every bad input raises :class:`InputError` (a ``ValueError``) whose message names the input and
says what was expected.
"""

from __future__ import annotations

import errno
import math
import os
import re
import warnings
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.errors import InputError
from ..core.jsonfile import special_file_reason  # noqa: F401 (public here too)
from ..core.moved import forward_moved_names


__all__ = [
    "FrameSequence",
    "IMAGE_EXTENSIONS",
    "InputError",
    "MAX_FRAME_PIXELS",
    "VIDEO_EXTENSIONS",
    "as_frame_list",
    "broken_link_reason",
    "check_time_window",
    "load_frames",
    "max_frame_pixels",
    "natural_sort_key",
    "probe_video",
    "sample_indices",
    "special_file_reason",
]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

#: Most pixels one decoded frame (image or video) may have: 8192 x 8192. A larger frame is refused
#: before its pixels are decoded (decompression bombs); ``$S4D_MAX_FRAME_PIXELS`` overrides it.
MAX_FRAME_PIXELS = 8192 * 8192
MAX_FRAME_PIXELS_ENV = "S4D_MAX_FRAME_PIXELS"


# --------------------------------------------------------------------------------------------
# Loading and sampling
# --------------------------------------------------------------------------------------------


@dataclass
class FrameSequence:
    """Decoded, sampled frames.

    ``frames``: uint8 ``HxWx3`` RGB, or ``HxWx4`` RGBA when the source had alpha.
    ``indices``: index of each sampled frame among the real decoded frames of the whole source
    (0-based; for a time window these are still indices into the whole video).
    ``times``: presentation time in seconds, measured from the stream start (``None`` for image
    lists and image directories).
    ``source``: a human label. ``total_frames``: how many frames were available (for a video:
    decoded inside the time window).
    """

    frames: list[np.ndarray]
    indices: list[int]
    times: list[float | None]
    source: str
    total_frames: int

    def __len__(self) -> int:
        return len(self.frames)


def sample_indices(total: int, num_frames: int) -> list[int]:
    """Evenly spaced indices ``round(linspace(0, total - 1, num_frames))``.

    ``numpy.round`` (half to even) is used. With ``num_frames <= total`` the spacing is at least
    one, so the indices are distinct and increasing, the first is 0 and the last ``total - 1``
    (for ``num_frames == 1`` only index 0).
    """
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1, got {num_frames}")
    if num_frames > total:
        raise InputError(f"cannot sample {num_frames} distinct frames from {total}")
    picked = np.round(np.linspace(0.0, total - 1, num_frames)).astype(np.int64)
    return [int(i) for i in picked]


def natural_sort_key(name: str) -> tuple:
    """Sort key for file names in human order: ``f2`` < ``f10``, case-insensitive.

    ``re.split`` with a capture group alternates text and digit runs starting with text, so the
    keys of two names compare position by position with matching types.
    """
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)) + (name,)


def load_frames(source, num_frames: int, start: float | None = None,
                end: float | None = None) -> FrameSequence:
    """Load ``num_frames`` evenly sampled frames from a video, an image directory or a list.

    ``source`` is one of:

    - a video file (mp4, mov, webm, mkv, avi, gif, ...), decoded with PyAV. Frame counts are
      the frames that really decode, never container metadata (``stream.frames`` is often 0 or
      wrong). Decoding takes two passes so a long video is never held in memory: pass 1 decodes
      every frame only to count it and read its time (stopping at ``end``); pass 2 decodes
      again and keeps only the sampled frames (stopping after the last one). A decode error
      (corrupt or truncated data) is an :class:`InputError`; a stream that simply ends early
      (e.g. a cut Matroska file) counts the frames that did decode.
    - a directory of frames (png, jpg, jpeg, webp), in natural sort order (``f2`` before
      ``f10``). Only headers are read to check sizes; only the sampled files are decoded.
    - a list or tuple of PIL images or uint8 ``HxWx3`` / ``HxWx4`` numpy arrays (a single
      ``[T, H, W, C]`` uint8 array works too).

    Sampling: indices ``round(linspace(0, n - 1, num_frames))`` over the ``n`` frames available
    (see :func:`sample_indices`), so the first and the last available frames are always kept.

    ``start`` / ``end`` (seconds, videos only) keep frames whose presentation time ``t``
    (seconds from the stream start) satisfies ``start <= t < end``; either may be omitted.

    RGBA: directory images and list items with an alpha channel come back RGBA (if any frame has
    alpha, every frame is RGBA, opaque ones with alpha 255). Video frames come back RGBA when the
    decoded pixel format carries alpha (or a palette, as GIF does) and some sampled frame is not
    fully opaque; otherwise RGB.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)):
        raise InputError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    num_frames = int(num_frames)
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1, got {num_frames}")
    start, end = check_time_window(start, end)

    if isinstance(source, (list, tuple)) or (isinstance(source, np.ndarray) and source.ndim == 4):
        if start is not None or end is not None:
            raise InputError("start/end select frames by time and only apply to video files; "
                             "an image list has no timestamps")
        return _load_list(list(source), num_frames)
    if isinstance(source, np.ndarray):
        raise InputError(f"an array source must be [T, H, W, C] uint8, got shape {source.shape}; "
                         "pass a list of HxWx3 / HxWx4 arrays for separate frames")
    if not isinstance(source, (str, os.PathLike)):
        raise InputError("source must be a video path, a directory of images or a list of "
                         f"images, got {type(source).__name__}")

    path = Path(source)
    if not path.exists():
        link = broken_link_reason(path)
        raise InputError(f"input path {str(path)!r} " + (f"is {link}" if link else "does not exist"))
    if path.is_dir():
        if start is not None or end is not None:
            raise InputError(f"start/end select frames by time and only apply to video files; "
                             f"the image directory {str(path)!r} has no timestamps")
        return _load_directory(path, num_frames)
    special = special_file_reason(path)
    if special:  # a FIFO, socket or device would block the decoder or never end
        raise InputError(f"input {str(path)!r} is {special}; expected a video file or a directory of frames")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise InputError(f"{str(path)!r} is a single image; pass a directory of frames, a list "
                         "of images or a video file")
    return _load_video(path, num_frames, start, end)


def check_time_window(start, end, names: tuple[str, str] = ("start", "end")) -> tuple[float | None, float | None]:
    """``(start, end)`` as floats (None = open), or ``InputError``: each must be a finite time in
    seconds >= 0, and start before end. ``names`` label them in messages (e.g. CLI options)."""
    values = []
    for name, value in zip(names, (start, end)):
        if value is not None:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise InputError(f"{name} must be a time in seconds, got {value!r}") from None
            if not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a finite time in seconds >= 0, got {value}")
        values.append(value)
    if values[0] is not None and values[1] is not None and values[0] >= values[1]:
        raise InputError(f"{names[0]} ({values[0]} s) must be before {names[1]} ({values[1]} s)")
    return values[0], values[1]


def broken_link_reason(path: str | os.PathLike) -> str | None:
    """``"a symbolic link loop"`` / ``"a dangling symbolic link (-> target)"`` when ``path`` (or a
    link on the way to it) cannot be resolved; None otherwise (also when it simply does not exist)."""
    try:
        os.stat(path)
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return f"a dangling symbolic link (-> {os.readlink(path)})"
        return None


def max_frame_pixels() -> int:
    """The decoded-pixel cap per frame: ``$S4D_MAX_FRAME_PIXELS`` or :data:`MAX_FRAME_PIXELS`."""
    raw = os.environ.get(MAX_FRAME_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_FRAME_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{MAX_FRAME_PIXELS_ENV} must be a positive integer (pixels per frame), got {raw!r}")
    return value


def _check_frame_pixels(width: int, height: int, what: str) -> None:
    limit = max_frame_pixels()
    if width * height > limit:
        raise InputError(f"{what} has {width}x{height} = {width * height:,} pixels per frame, over the limit of "
                         f"{limit:,} (a guard against decompression bombs); downscale it, or raise the limit "
                         f"with {MAX_FRAME_PIXELS_ENV}=<pixels>")


def _open_image(path: Path, label: str) -> Image.Image:
    """Open an image (header only) with our pixel cap instead of PIL's global one."""
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # PIL's own check would refuse above 2 x 89 MP and warn above 89 MP
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read image {str(path)!r} in {label!r}: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    try:
        _check_frame_pixels(*image.size, f"image {str(path)!r}")
    except InputError:
        image.close()
        raise
    return image


def _too_few(label: str, available: int, requested: int, window: str = "") -> InputError:
    where = f" in the selected range {window}" if window else ""
    return InputError(f"{label} has only {available} frames{where}, {requested} requested")


def _has_alpha_mode(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info)


def _load_list(items: list, num_frames: int) -> FrameSequence:
    label = f"<list of {len(items)} images>"
    if not items:
        raise InputError("the image list is empty; expected PIL images or uint8 HxWx3 / HxWx4 "
                         "arrays")
    arrays: list[np.ndarray] = []
    for i, item in enumerate(items):
        if isinstance(item, Image.Image):
            mode = "RGBA" if _has_alpha_mode(item) else "RGB"
            arrays.append(np.asarray(item.convert(mode)))
        elif isinstance(item, np.ndarray):
            if item.dtype != np.uint8:
                raise InputError(f"image {i} of the list has dtype {item.dtype}; expected uint8")
            if item.ndim != 3 or item.shape[2] not in (3, 4):
                raise InputError(f"image {i} of the list has shape {item.shape}; expected HxWx3 "
                                 "(RGB) or HxWx4 (RGBA)")
            arrays.append(item)
        else:
            raise InputError(f"image {i} of the list is a {type(item).__name__}; expected a PIL "
                             "image or a uint8 numpy array")
    _check_sizes([(a.shape[1], a.shape[0]) for a in arrays], [f"image {i}" for i in
                                                             range(len(arrays))], label)
    if len(arrays) < num_frames:
        raise _too_few(label, len(arrays), num_frames)
    indices = sample_indices(len(arrays), num_frames)
    frames = _unify_channels([np.ascontiguousarray(arrays[i]) for i in indices])
    return FrameSequence(frames, indices, [None] * num_frames, label, len(arrays))


def _check_sizes(sizes: list[tuple[int, int]], names: list[str], label: str) -> None:
    first = sizes[0]
    for size, name in zip(sizes, names):
        if size != first:
            raise InputError(f"{label}: all images must have the same size; {names[0]} is "
                             f"{first[0]}x{first[1]} but {name} is {size[0]}x{size[1]}")


def _unify_channels(frames: list[np.ndarray]) -> list[np.ndarray]:
    """If any frame is RGBA, make every frame RGBA (opaque alpha for the RGB ones)."""
    if all(f.shape[2] == 3 for f in frames) or all(f.shape[2] == 4 for f in frames):
        return frames
    out = []
    for f in frames:
        if f.shape[2] == 3:
            f = np.concatenate([f, np.full(f.shape[:2] + (1,), 255, np.uint8)], axis=2)
        out.append(f)
    return out


def _load_directory(path: Path, num_frames: int) -> FrameSequence:
    label = str(path)
    try:
        entries = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    except OSError as exc:
        raise InputError(f"cannot list directory {label!r}: {exc.strerror or exc}") from None
    for p in entries:  # a frame that silently went missing would shift every later one
        link = broken_link_reason(p) or special_file_reason(p)
        if link:
            raise InputError(f"frame {p.name!r} in directory {label!r} is {link}; fix or remove it")
    files = sorted((p for p in entries if p.is_file()), key=lambda p: natural_sort_key(p.name))
    if not files:
        raise InputError(f"directory {label!r} contains no images; expected frame files with "
                         f"extensions {', '.join(IMAGE_EXTENSIONS)}")
    sizes = []
    for f in files:  # header only: PIL decodes pixel data lazily
        with _open_image(f, label) as im:
            sizes.append(im.size)
    _check_sizes(sizes, [f.name for f in files], f"directory {label!r}")
    if len(files) < num_frames:
        raise _too_few(f"directory {label!r}", len(files), num_frames)
    indices = sample_indices(len(files), num_frames)
    frames = []
    for i in indices:
        with _open_image(files[i], label) as im:
            try:
                im.load()
                frames.append(np.asarray(im.convert("RGBA" if _has_alpha_mode(im) else "RGB")))
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise InputError(f"cannot decode image {str(files[i])!r}: {exc}") from None
    return FrameSequence(_unify_channels(frames), indices, [None] * num_frames, label,
                         len(files))


def _open_video(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise InputError(_unreadable(path, exc)) from None
    if not container.streams.video:
        container.close()
        raise InputError(f"cannot decode video {str(path)!r}: it has no video stream; "
                         "expected a video file "
                         f"({', '.join(VIDEO_EXTENSIONS)})")
    codec = container.streams.video[0].codec_context
    try:  # before any frame is decoded
        _check_frame_pixels(codec.width or 0, codec.height or 0, f"video {str(path)!r}")
    except InputError:
        container.close()
        raise
    return container


def probe_video(path: str | os.PathLike) -> None:
    """Raise ``InputError`` unless ``path`` is a video whose first frame decodes (a quick check,
    e.g. of an upload, before any work is queued; too few frames is found when the clip is read)."""
    with closing(_decode(Path(path))) as frames:  # closes the container at once
        for _index, _t, _frame in frames:
            return
    raise InputError(f"video {str(path)!r} contains no decodable video frames")


def _unreadable(path: Path, exc: BaseException) -> str:
    return (f"cannot decode video {str(path)!r}: the file is corrupt, truncated or not a video "
            f"({type(exc).__name__}: {exc}); expected a readable video file "
            f"({', '.join(VIDEO_EXTENSIONS)})")


def _decode(path: Path) -> Iterator[tuple[int, float | None, object]]:
    """Yield ``(index, time_from_stream_start, av.VideoFrame)`` for every decoded frame."""
    import av

    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        # Keep PyAV's default (slice) threading: frame threading hides decode errors of a
        # truncated stream, which then looks like a shorter, valid video.
        origin = None
        if stream.start_time is not None and stream.time_base is not None:
            origin = float(stream.start_time * stream.time_base)
        rate = stream.average_rate or stream.guessed_rate
        index = 0
        try:
            for frame in container.decode(stream):
                _check_frame_pixels(frame.width, frame.height, f"video {str(path)!r}")  # size may change mid-stream
                t = frame.time
                if t is None and rate:
                    t = index / float(rate)
                elif t is not None:
                    if origin is None:
                        origin = t  # no stream start: time the first frame as 0
                    t = t - origin
                yield index, t, frame
                index += 1
        except av.FFmpegError as exc:
            raise InputError(_unreadable(path, exc)) from None
    finally:
        container.close()


def _load_video(path: Path, num_frames: int, start: float | None,
                end: float | None) -> FrameSequence:
    label = str(path)
    windowed = start is not None or end is not None
    # Pass 1: count the frames that really decode and note their times; keep no pixels.
    selected: list[int] = []
    times: dict[int, float | None] = {}
    decoded = 0
    for index, t, _frame in _decode(path):
        decoded += 1
        if windowed:
            if t is None:
                raise InputError(f"video {label!r} has no frame timestamps, so start/end "
                                 "cannot be applied")
            if end is not None and t >= end:
                break  # decoders return frames in presentation order: nothing later fits
            if start is not None and t < start:
                continue
        selected.append(index)
        times[index] = t
    if decoded == 0:
        raise InputError(f"video {label!r} contains no decodable video frames")
    window = ""
    if windowed:
        window = f"[{start if start is not None else 0:g} s, " + (
            f"{end:g} s)" if end is not None else "end)")
    if len(selected) < num_frames:
        raise _too_few(f"video {label!r}", len(selected), num_frames, window)
    picks = [selected[i] for i in sample_indices(len(selected), num_frames)]

    # Pass 2: decode again, converting only the sampled frames.
    wanted = set(picks)
    frames: dict[int, np.ndarray] = {}
    last = picks[-1]
    with closing(_decode(path)) as decoded_frames:
        for index, _t, frame in decoded_frames:
            if index in wanted:
                fmt = frame.format
                alpha = fmt.has_palette or any(c.is_alpha for c in fmt.components)
                frames[index] = frame.to_ndarray(format="rgba" if alpha else "rgb24")
            if index >= last:
                break
    if len(frames) != len(picks):
        raise InputError(f"video {label!r} decoded differently on the second pass "
                         f"({len(frames)} of {len(picks)} sampled frames found); the file may "
                         "be corrupt")
    out = [frames[i] for i in picks]
    if any(f.shape[2] == 4 for f in out):
        if all(f.shape[2] == 3 or bool((f[..., 3] == 255).all()) for f in out):
            out = [f[..., :3] for f in out]  # opaque alpha (e.g. GIF decodes to BGRA)
        else:
            out = _unify_channels(out)
    out = [np.ascontiguousarray(f) for f in out]
    return FrameSequence(out, picks, [times[i] for i in picks], label, len(selected))


def as_frame_list(frames, name: str = "frames") -> list[np.ndarray]:
    """Frames (a ``FrameSequence``, a list of arrays / PIL images, or one ``[T, H, W, C]``
    array) as a list of uint8 ``H x W x 3|4`` arrays of one size; ``InputError`` otherwise."""
    if isinstance(frames, FrameSequence):
        frames = frames.frames
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    if not isinstance(frames, (list, tuple)) or not frames:
        raise InputError(f"{name} must be a non-empty list of uint8 HxWx3 / HxWx4 arrays")
    out = []
    for i, f in enumerate(frames):
        if isinstance(f, Image.Image):
            f = np.asarray(f.convert("RGBA" if _has_alpha_mode(f) else "RGB"))
        f = np.asarray(f)
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] not in (3, 4):
            raise InputError(f"{name}[{i}] has dtype {f.dtype} and shape {f.shape}; expected "
                             "uint8 HxWx3 (RGB) or HxWx4 (RGBA)")
        out.append(f)
    _check_sizes([(f.shape[1], f.shape[0]) for f in out], [f"{name}[{i}]" for i in
                                                         range(len(out))], name)
    return out


# write_video moved to sdk.outputs.video (reading and writing live on their own sides);
# ``from sdk.inputs.frames import write_video`` / ``sdk.frames.write_video`` still work, with a warning
__getattr__ = forward_moved_names(__name__)
