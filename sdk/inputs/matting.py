"""Background removal: frames -> RGBA. A real alpha channel in the input is used as is,
otherwise rembg (only when its model is already on disk: there is no download here) or a
border-colour key.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.extras import install_hint
from .frames import InputError, as_frame_list

__all__ = [
    "BORDER_KEY_THRESHOLD",
    "MATTING_METHODS",
    "REMBG_MODEL_FILE",
    "border_key_alpha",
    "rembg_model_path",
    "rembg_status",
    "remove_background",
]

#: Euclidean RGB distance (0..441) above which a pixel differs from the estimated background
#: colour and counts as object in the border-colour key.
BORDER_KEY_THRESHOLD = 30.0

#: The model rembg's default ("u2net") session loads.
REMBG_MODEL_FILE = "u2net.onnx"
#: MD5 of the official u2net.onnx; rembg (through pooch) re-downloads a file that does not match.
REMBG_MODEL_MD5 = "60024c5c889badc19c04ad937298a77b"

MATTING_METHODS = ("auto", "none", "rembg", "border")

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
    strip = _border_strip(rgb, border)
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


def _border_strip(rgb: np.ndarray, border: int | None = None) -> np.ndarray:
    """``[N, 3]`` pixels of the frame's border strip (the key's background sample)."""
    h, w = rgb.shape[:2]
    b = border if border is not None else int(np.clip(min(h, w) // 64, 2, 8))
    b = max(1, min(b, h // 2 or 1, w // 2 or 1))
    return np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3),
                           rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3)]).astype(np.float32)


def border_uniformity(rgb: np.ndarray, threshold: float = BORDER_KEY_THRESHOLD) -> float:
    """The fraction of the border strip within ``threshold`` of its median colour: near 1 for an
    object on a plain backdrop; low when the object covers much of the border (then the key takes
    the object for the background) or the background is not plain."""
    strip = _border_strip(np.asarray(rgb)[..., :3])
    return float(np.mean(np.linalg.norm(strip - np.median(strip, axis=0), axis=1) <= threshold))


# below this, the border key is unreliable and says so: a plain backdrop with the object inside the
# frame scores above 0.95 (the sample clips: 0.96-1.0); an object covering a fifth of the border or
# more may be the majority colour there and be keyed out
MIN_BORDER_UNIFORMITY = 0.8


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a stand-in without a spec, a broken parent package
        return module in sys.modules and sys.modules[module] is not None


def _warn_matting_fallback(reason: str, fix: str) -> None:
    from ..core.notices import one_line, warn_once

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
    frames = as_frame_list(frames)
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
            _warn_matting_fallback(reason, f"put the official {REMBG_MODEL_FILE} at {rembg_model_path()} "
                                           "($U2NET_HOME; rembg's run-time download is not used)")
    worst = min(border_uniformity(f) for f in frames)
    if worst < MIN_BORDER_UNIFORMITY:
        warnings.warn(f"border-key matting: only {worst:.0%} of a frame's border is one plain colour, so the "
                      "object may cover much of the border (and be keyed out as background) or the background is "
                      "not plain; use matting='rembg', footage with a plain margin around the object, or RGBA "
                      "frames", UserWarning, stacklevel=2)
    return [with_alpha(f, border_key_alpha(f)) for f in frames], "border-key"
