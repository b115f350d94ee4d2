"""``Generator``: video -> conditioning images -> latents -> fields -> mesh sequence.

    gen = Generator.from_pretrained("path/to/checkpoint")      # or Generator.tiny_random()
    seq = gen("clip.mp4", num_frames=16, steps=50, guidance=5.0, seed=0)
    seq.save("out/clip", formats=("glb", "usda"))

Stages (each timed, each with a progress bar): ``frames`` (decode, sample, matte, one crop),
``condition`` (DINOv2 tokens per frame), ``sample`` (flow-matching Euler with CFG over all
frames jointly - the temporal attention couples them), ``decode`` (VAE field per frame on the
fixed world box) and ``mesh`` (marching cubes).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.checkpoint import (DEFAULT_MODEL, TINY_RANDOM, default_model_path,  # noqa: F401 (re-exported)
                         resolve_model_path, tiny_random_models)
from ..models.config import ConditionerConfig, DiTConfig, TemporalConfig, VAEConfig  # noqa: F401 (re-exported)
from ..core.progress import ProgressReporter, make_reporter
from .runtimes import (BackendError, OnnxRuntime, TensorRTRuntime, TorchRuntime, is_engine_directory,
                       is_export_directory)
from .sampling import NOISE_MODES, SamplerSettings, sample_flow
from .settings import (BACKENDS, DECODE_METHODS, MAX_RESOLUTION, SEED_RANGE,  # noqa: F401 (re-exported)
                       Accelerations, GeneratorError, RunSettings, check_run_settings)
from ..sparse.attention import backends_used

# The temporal narrow band from this decode resolution up: its R/8 safety pass is too coarse below
# (at R = 32 it is 5^3 points and misses surface the hierarchical decoder's R/4 pass finds).
BAND_MIN_RESOLUTION = 64
# Run settings when neither the caller nor the model's own "defaults" metadata give one.
RUN_DEFAULTS = {"num_frames": 16, "steps": 50, "guidance": 5.0, "resolution": 256, "matting": "auto"}


class Generator:
    """Runs a Sculpt4D model end to end. Build with ``from_pretrained`` or ``tiny_random``."""

    def __init__(self, runtime, model_info: dict[str, Any] | None = None) -> None:
        self.runtime = runtime
        self.backend = runtime.name
        self.model_info = dict(model_info or {})
        #: The approximations a call runs unless ``exact=True`` (see ``Accelerations``).
        self.accelerations = Accelerations()
        dit_cfg, vae_cfg, cond_cfg = runtime.dit_config, runtime.vae_config, runtime.conditioner_config
        if vae_cfg.embed_dim != dit_cfg.in_channels:
            raise GeneratorError(f"VAE latent width {vae_cfg.embed_dim} != DiT in_channels {dit_cfg.in_channels}")
        if cond_cfg.hidden_size != dit_cfg.context_dim:
            raise GeneratorError(f"conditioner width {cond_cfg.hidden_size} != DiT context_dim {dit_cfg.context_dim}")

    @classmethod
    def from_modules(cls, dit: torch.nn.Module, vae: torch.nn.Module, conditioner: torch.nn.Module, *,
                     device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     model_info: dict[str, Any] | None = None) -> "Generator":
        """A Generator over PyTorch modules (the ``torch`` backend)."""
        return cls(TorchRuntime(dit, vae, conditioner, device, dtype), model_info)

    # Convenience access to the PyTorch modules (torch backend only).
    @property
    def dit(self):
        """The PyTorch DiT (torch backend only; on other backends an ``AttributeError`` says so)."""
        return self._torch_part("dit")

    @property
    def vae(self):
        """The PyTorch ShapeVAE (torch backend only)."""
        return self._torch_part("vae")

    @property
    def conditioner(self):
        """The PyTorch image conditioner (torch backend only)."""
        return self._torch_part("conditioner")

    def _torch_part(self, name: str):
        if not isinstance(self.runtime, TorchRuntime):
            raise AttributeError(f"{name} is a PyTorch module of the torch backend; this Generator runs {self.backend}")
        return getattr(self.runtime, name)

    # ----------------------------------------------------------------------------------
    # construction
    # ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, backend: str = "auto", device: str | None = None,
                        dtype: torch.dtype | None = None, temporal: TemporalConfig | None = None) -> "Generator":
        """Load a checkpoint (any layout of ``sdk.models.checkpoint``), an ONNX export or TensorRT engine
        directory, ``"default"`` (the embedded demo model) or ``"tiny-random"``.

        ``device`` defaults to CUDA when available; ``dtype`` to fp16 on CUDA, fp32 on CPU.
        ``temporal`` overrides the schedule / anchor / block size / attention backend.
        """
        if backend not in BACKENDS:
            raise GeneratorError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        path = resolve_model_path(path)
        if is_engine_directory(path):
            runtime = _open_directory_runtime(TensorRTRuntime, path, backend, "TensorRT engines")
            source = next(iter(runtime.entries.values()), {}).get("source") or {}
            return cls(runtime, {"name": Path(path).name, "path": str(path), **source})
        if backend == "tensorrt":
            raise GeneratorError(f"backend 'tensorrt' runs an engine directory; build one with "
                                 f"s4d-export build --frames N --checkpoint {path} --engine-dir DIR, then pass DIR")
        if is_export_directory(path):
            runtime = _open_directory_runtime(OnnxRuntime, path, backend, "an ONNX export")
            return cls(runtime, {"name": Path(path).name, "path": str(path), **runtime.manifest.get("source", {})})
        if backend == "onnxruntime":
            raise GeneratorError(f"backend 'onnxruntime' runs an ONNX export directory; create one with "
                                 f"s4d-export onnx {path} -o DIR --frames N, then pass DIR")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.float16 if torch.device(device).type == "cuda" else torch.float32)
        if str(path) == TINY_RANDOM:
            return cls.tiny_random(device=device)
        from ..models.checkpoint import build_conditioner, build_dit, build_vae, load_checkpoint

        ckpt = load_checkpoint(path)
        missing = [part for part in ("vae", "conditioner") if getattr(ckpt, part) is None]
        if missing:
            raise GeneratorError(f"{ckpt.source}: the pipeline needs DiT, VAE and conditioner weights; "
                                 f"missing part(s): {', '.join(missing)}")
        stat = Path(ckpt.source).stat()
        dit = build_dit(ckpt, temporal=temporal)
        info = {"name": Path(ckpt.source).name, "path": str(ckpt.source), "layout": ckpt.layout,
                "bytes": stat.st_size, **ckpt.metadata, "temporal": dit.has_temporal}
        return cls.from_modules(dit, build_vae(ckpt), build_conditioner(ckpt), device=device, dtype=dtype,
                                model_info=info)

    @classmethod
    def default(cls, device: str | None = None, temporal: TemporalConfig | None = None) -> "Generator":
        """The embedded demo model: a small Sculpt4D trained on synthetic 4D primitives
        (``examples/train_demo``). It carries its own run defaults (frames, steps, guidance,
        resolution), chosen so a 16-frame clip converts in well under two minutes on two CPU
        cores. It knows only its training world: coloured primitives on a plain background."""
        return cls.from_pretrained(DEFAULT_MODEL, backend="torch", device=device, temporal=temporal)

    @property
    def defaults(self) -> dict[str, Any]:
        """Run settings used when a call leaves them out: an exported model's fixed frame count,
        then the model's own (checkpoint metadata ``defaults``), then ``RUN_DEFAULTS``."""
        own = self.model_info.get("defaults") or {}
        if not isinstance(own, dict):
            raise GeneratorError(f"model metadata 'defaults' must be a mapping, got {own!r}")
        values = {k: own.get(k, v) for k, v in RUN_DEFAULTS.items()}
        if self.runtime.fixed_frames is not None:
            values["num_frames"] = self.runtime.fixed_frames
        try:
            check_run_settings(**values)
        except GeneratorError as exc:
            raise GeneratorError(f"the model's default run settings are unusable: {exc}") from None
        return values

    @classmethod
    def tiny_random(cls, seed: int = 0, device: str | torch.device = "cpu") -> "Generator":
        """A tiny RANDOM-WEIGHT model (same code, small widths) for tests and smoke runs. Its
        meshes are arbitrary blobs, not reconstructions."""
        dit, vae, cond = tiny_random_models(seed)
        return cls.from_modules(dit, vae, cond, device=device, dtype=torch.float32,
                                model_info={"name": TINY_RANDOM, "seed": seed,
                                            "note": "random weights: output is not meaningful"})

    # ----------------------------------------------------------------------------------
    # running
    # ----------------------------------------------------------------------------------
    def __call__(self, video: Any, num_frames: int | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, resolution: int | None = None,
                 decode: str = "hierarchical", noise: str = "shared", matting: str | None = None,
                 start: float | None = None, end: float | None = None, topology: str = "consistent",
                 exact: bool = False, progress: "bool | ProgressReporter | None" = False):
        """Video (file, frame directory, or list of frames) -> ``MeshSequence``. Settings left as
        ``None`` come from :attr:`defaults`. ``topology="consistent"`` (default) tracks frame 0's
        mesh through the sequence so every frame shares its faces (``MeshSequence.track``; flagged
        frames in ``seq.tracking``); ``"per-frame"`` keeps the independent marching-cubes meshes.
        ``exact=True`` turns off every approximation of :attr:`accelerations` (step caching,
        temporal narrow-band decoding, adaptive KV selection); ``seq.stats["acceleration"]`` says
        what ran and what it skipped."""
        from ..outputs.meshseq import MeshSequence
        from ..inputs.conditioning import prepare_sequence
        from ..inputs.frames import load_frames

        run = RunSettings(num_frames, steps, guidance, resolution, matting, seed, decode, noise, start,
                          end, topology, exact).resolved(self.defaults)
        accel = Accelerations.exact() if exact else self.accelerations
        num_frames, steps, guidance, resolution, matting = (run.num_frames, run.steps, run.guidance, run.resolution,
                                                            run.matting)
        sampler = SamplerSettings(steps=steps, guidance=guidance, noise=noise, seed=seed)
        reporter = make_reporter(progress)
        timings: dict[str, float] = {}

        with _stage(reporter, "frames", 1, timings):
            frames = load_frames(video, num_frames, start=start, end=end)
            prepared = prepare_sequence(frames.frames, matting=matting)
            reporter.advance("frames")

        runtime = self.runtime
        if runtime.fixed_frames is not None and runtime.fixed_frames != num_frames:
            raise GeneratorError(f"this {self.backend} model was built for {runtime.fixed_frames} frames, not "
                                 f"{num_frames}; export another with --frames {num_frames}")

        with _stage(reporter, "condition", num_frames, timings):
            context = self._condition(prepared.images, lambda n: reporter.advance("condition", n))

        backends_used(reset=True)  # from here on: which attention backend the sampler really ran
        with _stage(reporter, "sample", steps, timings):
            P, C = runtime.vae_config.num_latents, runtime.vae_config.embed_dim
            velocity, step_cache = self._velocity(accel)
            latents = sample_flow(velocity, context[None], (P, C), sampler,
                                  step_callback=lambda done, total: reporter.advance("sample"))

        with _stage(reporter, "decode", num_frames, timings):
            fields, decode_stats, decode_accel = self._decode_fields(latents[0], resolution, decode,
                                                                     lambda: reporter.advance("decode"), accel)

        with _stage(reporter, "mesh", num_frames, timings):
            from .mcubes import marching_cubes, resolve_backend_name

            meshes, mcubes_used = [], set()
            for f in fields:
                mcubes_used.add(resolve_backend_name("auto", f))
                meshes.append(marching_cubes(f, backend="auto"))
                reporter.advance("mesh")

        cfg = runtime.dit_config
        settings = {"num_frames": num_frames, "steps": steps, "guidance": guidance, "seed": seed,
                    "resolution": resolution, "decode": decode, "noise": noise, "matting": prepared.matting,
                    "start": start, "end": end, "schedule": list(cfg.temporal.schedule), "anchor": cfg.temporal.anchor,
                    "block_size": cfg.temporal.block_size, "temporal": cfg.temporal.enabled,
                    "crop_box": list(prepared.crop_box),
                    # what actually ran (see "Say what runs" in docs/cli.md)
                    **self._what_ran(mcubes_used)}
        model = {**self.model_info, "backend": self.backend}
        stats = {"field_queries": [s.num_queries for s in decode_stats],
                 "dense_queries_per_frame": decode_stats[0].dense_queries if decode_stats else 0,
                 "acceleration": {"exact": exact, "step_cache": _step_cache_record(accel, step_cache, runtime),
                                  **decode_accel}}
        images = [((img.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
                  for img in prepared.images.float().cpu()]
        seq = MeshSequence(meshes=meshes, frame_indices=list(frames.indices), frame_times=list(frames.times),
                           conditioning_images=images, timings=timings, settings=settings, model=model,
                           source=frames.source, stats=stats)
        settings["topology"] = topology
        settings["exact"] = exact
        if topology == "consistent":
            seq = self._track(seq, reporter, timings)
        return seq

    @staticmethod
    def _track(seq, reporter, timings: dict[str, float]):
        """Stage 6: one template mesh through the sequence (``MeshSequence.track``). A sequence that
        cannot be tracked (one frame, no surface in the template frame) keeps its per-frame meshes,
        and ``stats["tracking_skipped"]`` says why. Tracked vertices stay in the world box like the
        decoded surfaces (a fit can overshoot a surface that ends at the box)."""
        from ..core.grid import WorldBox
        from ..tracking import TrackingError

        if len(seq.meshes) < 2:
            seq.stats["tracking_skipped"] = "one frame: nothing to track"
            return seq
        with _stage(reporter, "track", len(seq.meshes), timings):
            try:
                seq = seq.track(progress=lambda done, total: reporter.advance("track"))
                box = WorldBox()
                for mesh in seq.meshes:
                    mesh.vertices = np.clip(np.asarray(mesh.vertices), box.min, box.max)
            except TrackingError as exc:
                seq.stats["tracking_skipped"] = str(exc)
            except Exception as exc:  # never lose a finished generation to tracking (memory, a bug)
                seq.stats["tracking_skipped"] = f"tracking failed ({type(exc).__name__}): {exc}"
        seq.timings.pop("track", None)  # the stage's own wall time (above) is the one recorded
        seq.timings["track"] = timings["track"]
        return seq

    def _what_ran(self, mcubes_used: set[str]) -> dict[str, Any]:
        """The block-sparse attention backend, marching-cubes backend, thread counts and fallbacks
        of the run that just finished (recorded in the manifest and ``s4d-convert --json``)."""
        from ..core.notices import fallbacks

        if self.backend == "torch":
            attention = "+".join(backends_used(reset=True)) or "none (no temporal attention)"
        else:  # the exported graph's BlockSparseAttention node runs inside ONNX Runtime / TensorRT
            attention = self.backend
        intra_op = torch.get_num_threads()
        threads: dict[str, Any] = {"torch_intra_op": intra_op}
        if "cpp-kernel" in attention:
            from ..kernels.cpu import cpu_kernel_info

            threads["cpp_kernel"] = intra_op if cpu_kernel_info()["openmp"] else 1
        return {"attention_backend": attention, "mcubes_backend": "+".join(sorted(mcubes_used)),
                "threads": threads, "fallbacks": sorted(fallbacks())}

    def _condition(self, images: torch.Tensor, advance, chunk: int = 4) -> torch.Tensor:
        """``[T, 3, S, S]`` in [-1, 1] -> DINOv2 tokens ``[T, L, Cc]`` (a few frames at a time)."""
        tokens = []
        for i in range(0, images.shape[0], chunk):
            tokens.append(self.runtime.condition(images[i:i + chunk]).float())
            advance(min(chunk, images.shape[0] - i))
        return torch.cat(tokens)

    def _velocity(self, accel: Accelerations):
        """The sampler's model function and its step cache: the runtime's velocity through a fresh
        ``FirstBlockCache`` when step caching is on and the runtime can cache, else as is."""
        if accel.step_cache <= 0 or not getattr(self.runtime, "supports_step_cache", False):
            return self.runtime.velocity, None
        from ..models.dit import FirstBlockCache

        cache = FirstBlockCache(accel.step_cache, accel.step_cache_max_skips)
        return functools.partial(self.runtime.velocity, cache=cache), cache

    def _decode_fields(self, latents: torch.Tensor, resolution: int, method: str, advance,
                       accel: Accelerations = Accelerations.exact()):
        """Sampled latents ``[T, P, C]`` -> one field ``[R+1]^3`` per frame (float32 tensor), the
        per-frame stats and the record of the decode's accelerations. With ``accel.temporal_band``
        (and the hierarchical method) frames after the first start from the previous frame's
        surface; with ``accel.kv_keys`` the query points attend to a few latent tokens each."""
        from ..models.vae import KeySelection
        from .decode import decode_field, decode_field_banded

        runtime = self.runtime
        tokens = latents.shape[1]
        kv_supported = getattr(runtime, "supports_kv_selection", False)
        selection = None  # only where it drops keys: kv_keys >= tokens would attend to all of them
        if accel.kv_keys and kv_supported and accel.kv_min_tokens <= tokens and accel.kv_keys < tokens:
            selection = KeySelection(accel.kv_keys, accel.kv_group)
        banded = accel.temporal_band and method == "hierarchical" and resolution >= BAND_MIN_RESOLUTION
        fields, stats, keys_attended, keys_full = [], [], 0, 0
        scaled = latents / runtime.vae_config.scale_factor
        for i, frame in enumerate(scaled):
            query_fn = runtime.frame_query_fn(frame[None], selection) if selection else runtime.frame_query_fn(frame[None])
            if banded and i > 0:
                field, stat = decode_field_banded(query_fn, resolution, fields[-1])
            else:
                field, stat = decode_field(query_fn, resolution, method)
            fields.append(field.float())  # stays on its device: GPU marching cubes when available
            stats.append(stat)
            keys_attended += getattr(query_fn, "keys_attended", stat.num_queries * tokens)
            keys_full += stat.num_queries * tokens
            advance()
        if selection is not None:
            kv_why = None
        elif not accel.kv_keys:
            kv_why = "off"
        elif not kv_supported:
            kv_why = f"not supported by {self.backend}"
        elif tokens < accel.kv_min_tokens:
            kv_why = f"{tokens} latent tokens per frame, fewer than kv_min_tokens ({accel.kv_min_tokens})"
        else:
            kv_why = f"kv_keys ({accel.kv_keys}) covers all {tokens} latent tokens"
        band_why = None if banded else "off" if not accel.temporal_band else (
            f"decode {method}" if method != "hierarchical" else f"resolution {resolution} < {BAND_MIN_RESOLUTION}")
        record = {"settings": dataclasses.asdict(accel),
                  "temporal_band": {"on": banded, "frames": sum(s.method == "banded" for s in stats),
                                    "unresolved_cells": sum(s.unresolved_cells for s in stats), "why_not": band_why},
                  "field_queries": sum(s.num_queries for s in stats),
                  "dense_queries": sum(s.dense_queries for s in stats),
                  "kv_selection": {"on": selection is not None,
                                   "keys_per_query": selection.keys if selection is not None else tokens,
                                   "latent_tokens": tokens, "keys_attended": keys_attended,
                                   "keys_full_attention": keys_full, "why_not": kv_why}}
        return fields, stats, record


def _step_cache_record(accel: Accelerations, cache, runtime) -> dict[str, Any]:
    """What the sampler's step cache did (the manifest's ``stats.acceleration.step_cache``)."""
    if cache is None:
        why = "off" if accel.step_cache == 0 else f"not supported by {runtime.name} (one exported DiT graph)"
        return {"on": False, "why_not": why}
    return {"on": True, "threshold": accel.step_cache, "max_skips": accel.step_cache_max_skips,
            "evaluations": cache.evaluated + cache.reused, "reused": cache.reused,
            "changes": [round(c, 4) for c in cache.changes]}


def _open_directory_runtime(runtime_cls, path, backend: str, what: str):
    """A runtime over a directory that fixes its backend (``runtime_cls.name``)."""
    if backend not in ("auto", runtime_cls.name):
        raise GeneratorError(f"{path} holds {what}; it runs with backend='{runtime_cls.name}'")
    try:
        return runtime_cls(path)
    except BackendError as exc:
        raise GeneratorError(str(exc)) from None


class _stage:
    """Context manager: progress bar start/finish and wall time of one stage."""

    def __init__(self, reporter: ProgressReporter, name: str, total: int, timings: dict[str, float]) -> None:
        self.reporter, self.name, self.total, self.timings = reporter, name, total, timings

    def __enter__(self):
        self.reporter.start(self.name, self.total)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.timings[self.name] = time.perf_counter() - self.t0
        self.reporter.finish(self.name)


__all__ = ["DEFAULT_MODEL", "Generator", "GeneratorError", "MAX_RESOLUTION", "RunSettings", "TINY_RANDOM",
           "check_run_settings", "default_model_path", "resolve_model_path"]
