"""Run settings and their checks, without torch: the CLIs validate options before anything loads.

``sdk.generation.pipeline`` re-exports every name here; this module exists so that ``s4d-convert`` can
reject a bad option in a fraction of a second instead of after importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ..core.errors import GeneratorError

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
DECODE_METHODS = ("hierarchical", "dense")
NOISE_MODES = ("shared", "independent")
# consistent: one template tracked through the sequence (sdk.tracking), one mesh that moves, as the
# paper textures its results and as peers output; per-frame: independent marching-cubes meshes
TOPOLOGIES = ("consistent", "per-frame")
#: Largest marching-cubes grid: (R+1)^3 field points per frame (1024: 1.08e9 points, 4.3 GB of fp32).
MAX_RESOLUTION = 1024
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed accepts


def check_run_settings(num_frames: Any = None, steps: Any = None, guidance: Any = None, resolution: Any = None,
                       matting: Any = None, start: Any = None, end: Any = None, seed: Any = None,
                       labels: dict[str, str] | None = None) -> None:
    """Raise ``GeneratorError`` naming the first run setting that is not usable; None = not given.
    The one home of these rules (the Python API and every CLI option go through it): frames and
    steps >= 1, resolution in [8, MAX_RESOLUTION], guidance finite and >= 0, start/end finite
    seconds >= 0 with start < end, seed within torch's range. ``labels`` renames settings in
    messages (e.g. ``{"num_frames": "--frames"}``)."""
    from ..inputs.frames import InputError, check_time_window
    from ..inputs.matting import MATTING_METHODS

    labels = labels or {}

    def fail(name: str, text: str) -> None:
        raise GeneratorError(f"{labels.get(name, name)} {text}")

    for name, value, low, high in (("num_frames", num_frames, 1, None), ("steps", steps, 1, None),
                                   ("resolution", resolution, 8, MAX_RESOLUTION), ("seed", seed, *SEED_RANGE)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            fail(name, f"must be an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            fail(name, f"must be >= {low}, got {value}" if high is None else
                 f"must be between {low} and {high}, got {value}" + (
                     f" ((R+1)^3 = {(value + 1) ** 3:.3g} field points per frame)" if name == "resolution" else ""))
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.floating))
                                 or not math.isfinite(guidance) or guidance < 0):
        fail("guidance", f"must be a finite number >= 0 (1 disables classifier-free guidance), got {guidance!r}")
    if matting is not None and (not isinstance(matting, str) or matting.lower() not in MATTING_METHODS + ("border-key",)):
        fail("matting", f"must be one of {', '.join(MATTING_METHODS)}, got {matting!r}")
    try:
        check_time_window(start, end, (labels.get("start", "start"), labels.get("end", "end")))
    except InputError as exc:
        raise GeneratorError(str(exc)) from None


@dataclass(frozen=True)
class Accelerations:
    """The approximations of the default fast path (docs/speed.md); ``Accelerations.exact()``
    (``--exact``) turns every one off.

    ``step_cache``: first-block caching in the sampler: threshold on the relative L1 change of
    DiT block 0's residual below which a step reuses the other blocks' residual of the last full
    step (0 = off), at most ``step_cache_max_skips`` steps in a row (PyTorch backend).
    ``temporal_band``: frames after the first are decoded around the previous frame's surface
    with an R/8 safety pass (every backend). ``kv_keys``: adaptive KV selection in the field
    decoder's cross-attention: each group of ``kv_group`` nearby query points attends to its
    ``kv_keys`` most relevant latent tokens (0 = all, the default; PyTorch backend), in models
    with at least ``kv_min_tokens`` latent tokens per frame. Off by default: at full size
    (4096 tokens, 256 keys) it cuts the decoder's FLOPs 1.6x but its CPU time only 3%
    (benchmarks/fullsize_cost.py), and its accuracy there cannot be measured without trained
    full-size weights; with the demo's 128 tokens it costs more than it saves."""

    step_cache: float = 0.2
    step_cache_max_skips: int = 2
    temporal_band: bool = True
    kv_keys: int = 0
    kv_group: int = 128
    kv_min_tokens: int = 1024

    def __post_init__(self) -> None:
        if isinstance(self.step_cache, bool) or not isinstance(self.step_cache, (int, float)) \
                or not math.isfinite(self.step_cache) or self.step_cache < 0:
            raise GeneratorError(f"step_cache must be a finite number >= 0, got {self.step_cache!r}")
        for name in ("step_cache_max_skips", "kv_keys", "kv_group", "kv_min_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "kv_group" else 0):
                raise GeneratorError(f"{name} must be a {'positive' if name == 'kv_group' else 'non-negative'} "
                                     f"integer, got {value!r}")

    @classmethod
    def exact(cls) -> "Accelerations":
        """Every approximation off: results equal the reference path up to floating-point noise."""
        return cls(step_cache=0.0, temporal_band=False, kv_keys=0)

    @property
    def any(self) -> bool:
        """Whether any approximation is on."""
        return self.step_cache > 0 or self.temporal_band or self.kv_keys > 0


#: Settings a model may supply when a run leaves them out (``Generator.defaults``).
MODEL_DEFAULTED = ("num_frames", "steps", "guidance", "resolution", "matting")


@dataclass(frozen=True)
class RunSettings:
    """The settings of one conversion, as given (``None`` = take the model's default).

    The one resolution + validation path: ``Generator.__call__``, ``s4d-convert`` (local and
    ``--ray``) all build one of these, ``check()`` it before any model loads, then
    ``resolved(generator.defaults)`` once the model is known."""

    num_frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    resolution: int | None = None
    matting: str | None = None
    seed: int = 0
    decode: str = "hierarchical"
    noise: str = "shared"
    start: float | None = None
    end: float | None = None
    topology: str = "consistent"
    exact: bool = False

    def check(self, labels: dict[str, str] | None = None) -> "RunSettings":
        """Raise ``GeneratorError`` naming the first unusable setting (``labels`` renames them,
        e.g. to CLI options); returns self."""
        labels = labels or {}
        for name, value, allowed in (("decode", self.decode, DECODE_METHODS), ("noise", self.noise, NOISE_MODES),
                                     ("topology", self.topology, TOPOLOGIES)):
            if value not in allowed:
                raise GeneratorError(f"{labels.get(name, name)} must be one of {', '.join(allowed)}, got {value!r}")
        check_run_settings(self.num_frames, self.steps, self.guidance, self.resolution, self.matting, self.start,
                           self.end, self.seed, labels=labels)
        if not isinstance(self.exact, bool):
            raise GeneratorError(f"{labels.get('exact', 'exact')} must be true or false, got {self.exact!r}")
        return self

    def resolved(self, defaults: dict[str, Any], labels: dict[str, str] | None = None) -> "RunSettings":
        """Settings left out filled from ``defaults`` (a model's), then checked."""
        filled = {key: defaults[key] for key in MODEL_DEFAULTED if getattr(self, key) is None}
        return replace(self, **filled).check(labels)

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``Generator.__call__``."""
        return asdict(self)


