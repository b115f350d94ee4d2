"""User inputs -> the conditioning images of the video -> 4D mesh pipeline (SPEC section 5).

Three stages, each usable on its own:

1. :func:`load_frames` decodes a video file, a directory of frame images or an in-memory list of
   images, and samples ``num_frames`` of them evenly (optionally inside a ``[start, end)`` time
   window).
2. :func:`remove_background` turns the frames into RGBA: a real alpha channel in the input is
   used as is, otherwise rembg (only when its model is already on disk: there is no download
   here) or a border-colour key.
3. :func:`prepare_sequence` crops every frame with ONE box (the union of the per-frame object
   boxes), scales the box's long side to ``fill * size``, composites over white and centres on a
   white ``size x size`` square. Scale and offset are shared by all frames, so the object's size
   and position stay consistent through the sequence (per-frame re-centring makes 4D sequences
   jitter). The result is ``[T, 3, size, size]`` in [-1, 1], what the image conditioner's
   ``prepare`` expects.

Every bad input raises :class:`InputError` (a ``ValueError``) whose message names the input and
says what was expected.
"""

from __future__ import annotations

import errno
import importlib.util
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from contextlib import closing
from numbers import Real
from typing import TYPE_CHECKING, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from .extras import install_hint

if TYPE_CHECKING:  # torch is imported where tensors are made, so the CLIs' checks stay light
    import torch

__all__ = [
    "BORDER_KEY_THRESHOLD",
    "FrameSequence",
    "IMAGE_EXTENSIONS",
    "InputError",
    "MAX_FRAME_PIXELS",
    "PreparedSequence",
    "REMBG_MODEL_FILE",
    "VIDEO_EXTENSIONS",
    "border_key_alpha",
    "broken_link_reason",
    "check_time_window",
    "load_frames",
    "max_frame_pixels",
    "natural_sort_key",
    "object_box",
    "prepare_sequence",
    "rembg_model_path",
    "rembg_status",
    "remove_background",
    "sample_indices",
    "save_conditioning_images",
]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

#: Euclidean RGB distance (0..441) above which a pixel differs from the estimated background
#: colour and counts as object in the border-colour key.
BORDER_KEY_THRESHOLD = 30.0

#: The model rembg's default ("u2net") session loads.
REMBG_MODEL_FILE = "u2net.onnx"
#: MD5 of the official u2net.onnx; rembg (through pooch) re-downloads a file that does not match.
REMBG_MODEL_MD5 = "60024c5c889badc19c04ad937298a77b"

MATTING_METHODS = ("auto", "none", "rembg", "border")

#: Most pixels one decoded frame (image or video) may have: 8192 x 8192. A larger frame is refused
#: before its pixels are decoded (decompression bombs); ``$S4D_MAX_FRAME_PIXELS`` overrides it.
MAX_FRAME_PIXELS = 8192 * 8192
MAX_FRAME_PIXELS_ENV = "S4D_MAX_FRAME_PIXELS"


class InputError(ValueError):
    """A user input (video, frames, option) is missing, unreadable or not what was expected."""


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
        link = broken_link_reason(p)
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


# --------------------------------------------------------------------------------------------
# Background removal
# --------------------------------------------------------------------------------------------


def rembg_model_path() -> Path:
    """Where rembg's default session looks for ``u2net.onnx``.

    rembg (``rembg/sessions/base.py``, ``BaseSession.u2net_home``) uses ``$U2NET_HOME`` if set,
    else ``$XDG_DATA_HOME/.u2net`` if ``XDG_DATA_HOME`` is set, else ``~/.u2net``, and
    ``U2netSession.download_models`` fetches ``u2net.onnx`` into that directory through pooch
    (which needs the network unless the file is already there with MD5
    ``60024c5c889badc19c04ad937298a77b``). This returns the same path without importing rembg.
    """
    home = os.environ.get("U2NET_HOME",
                          os.path.join(os.environ.get("XDG_DATA_HOME", "~"), ".u2net"))
    return Path(os.path.expanduser(home)) / REMBG_MODEL_FILE


def rembg_status() -> tuple[bool, str]:
    """``(usable, reason)``: rembg is usable when its model file is on disk and it imports."""
    model = rembg_model_path()
    if not model.is_file():
        return False, (f"rembg's model file is missing: put {REMBG_MODEL_FILE} (the official "
                       f"file, md5 {REMBG_MODEL_MD5}) at {model} (rembg reads $U2NET_HOME, "
                       "else $XDG_DATA_HOME/.u2net, else ~/.u2net; it cannot download it "
                       "here)")
    try:
        import rembg  # noqa: F401
    except Exception as exc:  # ImportError, or onnxruntime failing to load
        return False, (f"'import rembg' failed ({type(exc).__name__}: {exc}); install the [rembg] extra: "
                       f"{install_hint('rembg')}; its model is expected at {model}")
    return True, f"rembg with {model}"


_REMBG_SESSIONS: dict[str, object] = {}


def _rembg_alpha(frames: list[np.ndarray]) -> list[np.ndarray]:
    import rembg

    key = str(rembg_model_path())
    session = _REMBG_SESSIONS.get(key)
    if session is None:
        session = rembg.new_session("u2net")
        _REMBG_SESSIONS[key] = session
    alphas = []
    for f in frames:
        out = rembg.remove(Image.fromarray(np.ascontiguousarray(f[..., :3])), session=session)
        if not isinstance(out, Image.Image):
            out = Image.fromarray(np.asarray(out))
        alpha = np.asarray(out.convert("RGBA"))[..., 3]
        if alpha.shape != f.shape[:2]:
            alpha = np.asarray(Image.fromarray(alpha).resize((f.shape[1], f.shape[0]),
                                                             Image.BILINEAR))
        alphas.append(alpha)
    return alphas


def border_key_alpha(rgb: np.ndarray, threshold: float = BORDER_KEY_THRESHOLD,
                     border: int | None = None) -> np.ndarray:
    """Alpha (0 / 255) from a border-colour key, for an object on a plain background.

    1. Background colour = per-channel median of a border strip ``border`` pixels wide
       (default ``clip(min(H, W) // 64, 2, 8)``) on all four sides; the object may touch the
       border as long as it covers well under half of it.
    2. Object = pixels whose Euclidean RGB distance to that colour exceeds ``threshold``
       (default :data:`BORDER_KEY_THRESHOLD` = 30 of 441; clears video-compression noise and
       keeps objects that differ clearly from the background).
    3. Clean-up: a 3x3 binary opening (drops speckle and compression fringes), holes smaller
       than 0.1 % of the frame are filled (larger holes, like a ring's, stay open), and only
       connected components of at least 5 % of the largest one's area are kept.
    """
    from scipy import ndimage

    rgb = np.asarray(rgb)[..., :3].astype(np.float32)
    h, w = rgb.shape[:2]
    b = border if border is not None else int(np.clip(min(h, w) // 64, 2, 8))
    b = max(1, min(b, h // 2 or 1, w // 2 or 1))
    strip = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3),
                            rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3)])
    background = np.median(strip, axis=0)
    mask = np.linalg.norm(rgb - background, axis=2) > threshold

    structure = np.ones((3, 3), bool)
    mask = ndimage.binary_opening(mask, structure=structure)
    if not mask.any():
        return np.zeros((h, w), np.uint8)
    # Fill small holes: background components not touching the frame edge.
    holes, n_holes = ndimage.label(~mask)
    if n_holes:
        sizes = np.bincount(holes.ravel(), minlength=n_holes + 1)
        edge = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        small = sizes < max(16, 0.001 * h * w)
        small[0] = False
        small[edge] = False
        mask |= small[holes]
    labels, n = ndimage.label(mask, structure=structure)
    if n > 1:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        sizes[0] = 0
        keep = sizes >= 0.05 * sizes.max()
        keep[0] = False
        mask = keep[labels]
    return np.where(mask, 255, 0).astype(np.uint8)


def _check_frames(frames, name: str = "frames") -> list[np.ndarray]:
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


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a stand-in without a spec, a broken parent package
        return module in sys.modules and sys.modules[module] is not None


def _warn_matting_fallback(reason: str, fix: str) -> None:
    from .notices import one_line, warn_once

    warn_once("matting-rembg", f"matting='auto' falls back from rembg to the border-colour key: {one_line(reason)}; "
                               f"fix: {fix}")


def remove_background(frames: list[np.ndarray], matting: str = "auto"
                      ) -> tuple[list[np.ndarray], str]:
    """RGBA uint8 frames and the method used: ``"alpha" | "rembg" | "border-key" | "none"``.

    - If the frames carry a real alpha channel (some alpha below 255 in some frame) and
      ``matting`` is ``"auto"`` or ``"none"``, that alpha is used as is (``"alpha"``).
      An explicit ``"rembg"`` or ``"border"`` recomputes alpha from the RGB instead.
    - ``"none"``: trust the input; alpha 255 everywhere (unless real alpha was given).
    - ``"auto"``: rembg when its model file is already on disk at :func:`rembg_model_path`
      (``$U2NET_HOME/u2net.onnx``, default ``~/.u2net/u2net.onnx``; with ``XDG_DATA_HOME`` set
      and no ``U2NET_HOME``, ``$XDG_DATA_HOME/.u2net/u2net.onnx``) AND ``import rembg`` works;
      otherwise the border-colour key (:func:`border_key_alpha`).
    - ``"rembg"``: rembg or an :class:`InputError` saying exactly where the model file must go.
    - ``"border"`` (or ``"border-key"``): the border-colour key, alpha 0 / 255.
    """
    frames = _check_frames(frames)
    if not isinstance(matting, str) or matting.lower() not in MATTING_METHODS + ("border-key",):
        raise InputError(f"matting must be one of {', '.join(MATTING_METHODS)}, got "
                         f"{matting!r}")
    matting = matting.lower()
    if matting == "border-key":
        matting = "border"

    def with_alpha(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate([rgb[..., :3], alpha[..., None]], axis=2))

    real_alpha = any(f.shape[2] == 4 and bool((f[..., 3] < 255).any()) for f in frames)
    if real_alpha and matting in ("auto", "none"):
        opaque = np.full(frames[0].shape[:2], 255, np.uint8)
        return [np.ascontiguousarray(f) if f.shape[2] == 4 else with_alpha(f, opaque)
                for f in frames], "alpha"
    if matting == "none":
        opaque = np.full(frames[0].shape[:2], 255, np.uint8)
        return [with_alpha(f, opaque) for f in frames], "none"
    if matting in ("auto", "rembg"):
        usable, reason = rembg_status()
        if usable:
            try:
                alphas = _rembg_alpha(frames)
            except Exception as exc:
                if matting == "rembg":
                    raise InputError(f"matting='rembg' failed ({type(exc).__name__}: {exc}); "
                                     f"the model must be the official {REMBG_MODEL_FILE} "
                                     f"(md5 {REMBG_MODEL_MD5}) at {rembg_model_path()}"
                                     ) from None
                _warn_matting_fallback(f"rembg failed ({type(exc).__name__}: {exc})",
                                       f"the model must be the official {REMBG_MODEL_FILE} (md5 {REMBG_MODEL_MD5}) "
                                       f"at {rembg_model_path()}")
                alphas = None
            if alphas is not None:
                return [with_alpha(f, a) for f, a in zip(frames, alphas)], "rembg"
        elif matting == "rembg":
            raise InputError(f"matting='rembg' is not usable: {reason}")
        elif _installed("rembg"):  # installed, so wanted, but not usable
            _warn_matting_fallback(reason, "see the README's matting section")
    return [with_alpha(f, border_key_alpha(f)) for f in frames], "border-key"


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


def write_video(frames: list[np.ndarray], path: str | os.PathLike, fps: int = 12, crf: int = 18) -> Path:
    """Encode RGB uint8 frames ``[H, W, 3]`` (even H and W) as an H.264 mp4, atomically."""
    import av

    from .atomic import atomic_file

    frames = [np.ascontiguousarray(np.asarray(f)[..., :3], dtype=np.uint8) for f in frames]
    if not frames:
        raise InputError("write_video needs at least one frame")
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2 or any(f.shape[:2] != (h, w) for f in frames):
        raise InputError(f"write_video needs frames of one even size; got {sorted({f.shape[:2] for f in frames})}")
    path = Path(path)
    with atomic_file(path, overwrite=True) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf)})
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path
