"""Inference runtimes behind ``Generator``: the same three calls on every backend.

* ``condition(images [T,3,S,S] in [-1,1]) -> tokens [T, L, Cc]``
* ``velocity(latents [B,T,P,C], t [B], context [B,T,L,Cc]) -> [B,T,P,C]`` (the sampler's model)
* ``frame_query_fn(latents [1,P,C], already divided by scale_factor) -> query_fn(xyz [M,3]) -> [M]``
  with the latents' cross-attention K/V computed once per frame.

``TorchRuntime`` runs the PyTorch modules; ``OnnxRuntime`` runs an export directory written by
``s4d-export onnx`` (CPU provider always, CUDA provider when onnxruntime-gpu and a GPU exist).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConditionerConfig, DiTConfig, VAEConfig, dit_config_from_dict, simple_config_from_dict
from .models.conditioner import prepare_images

EXPORT_MANIFEST = "export.json"


class BackendError(ValueError):
    """A runtime cannot be built or cannot run the request."""


class TorchRuntime:
    name = "torch"

    def __init__(self, dit, vae, conditioner, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.dit = dit.to(self.device, dtype).eval()
        self.vae = vae.to(self.device, dtype).eval()
        self.conditioner = conditioner.to(self.device, dtype).eval()
        self.dit_config: DiTConfig = dit.config
        self.vae_config: VAEConfig = vae.config
        self.conditioner_config: ConditionerConfig = conditioner.config
        self.fixed_frames: int | None = None

    def condition(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            batch = images.to(self.device, self.dtype)
            return self.conditioner(prepare_images(batch, self.conditioner_config.image_size))

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.dit(latents.to(self.device, self.dtype), t.to(self.device, self.dtype),
                            context.to(self.device, self.dtype))

    def frame_query_fn(self, latents: torch.Tensor):
        from .decode import vae_query_fn

        with torch.no_grad():
            decoded = self.vae.decode(latents.to(self.device, self.dtype))
        return vae_query_fn(self.vae, decoded)


class OnnxQueryFn:
    """``xyz [M,3] -> field [M]`` through ``vae_query.onnx`` with fixed per-frame K/V."""

    bytes_per_point = 8192  # generous: attention scores + MLP activations per query point

    def __init__(self, session, key: np.ndarray, value: np.ndarray, dtype: np.dtype) -> None:
        self.session, self.key, self.value, self.dtype = session, key, value, dtype

    def __call__(self, xyz: torch.Tensor) -> torch.Tensor:
        points = xyz.detach().cpu().numpy().astype(self.dtype)[None]
        field = self.session.run(None, {"key": self.key, "value": self.value, "xyz": points})[0]
        return torch.from_numpy(field[0].astype(np.float32)).to(xyz.device)


class OnnxRuntime:
    """Runs ``dit.onnx``, ``vae_decoder.onnx``, ``vae_query.onnx``, ``conditioner.onnx``."""

    name = "onnxruntime"

    def __init__(self, directory: str | os.PathLike, providers: list[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("backend 'onnxruntime' needs the onnx extra: pip install 'sculpt4d-sdk[onnx]'") from None
        self.directory = Path(directory)
        self.manifest = read_export_manifest(self.directory)
        m = self.manifest
        self.dit_config = dit_config_from_dict(m["dit_config"])
        self.vae_config = simple_config_from_dict(VAEConfig, m["vae_config"])
        self.conditioner_config = simple_config_from_dict(ConditionerConfig, m["conditioner_config"])
        self.fixed_frames = int(m["frames"])
        self.np_dtype = np.float16 if m["dtype"] == "fp16" else np.float32
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # keep ORT's constant-folding notices off the console
        self.providers = providers
        self.sessions = {}
        for part, fname in m["files"].items():
            self.sessions[part] = ort.InferenceSession(str(self.directory / fname), options, providers=providers)
        missing = {"dit", "vae_decoder", "vae_query", "conditioner"} - set(self.sessions)
        if missing:
            raise BackendError(f"{self.directory}: export lacks {sorted(missing)}; re-run s4d-export onnx")

    def _np(self, t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(self.np_dtype)

    def condition(self, images: torch.Tensor) -> torch.Tensor:
        prepared = prepare_images(images.float(), self.conditioner_config.image_size)
        tokens = self.sessions["conditioner"].run(None, {"images": self._np(prepared)})[0]
        return torch.from_numpy(tokens.astype(np.float32))

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if latents.shape[1] != self.fixed_frames:
            raise BackendError(f"{self.directory} was exported for {self.fixed_frames} frames, not {latents.shape[1]}; "
                                f"run: s4d-export onnx CHECKPOINT -o DIR --frames {latents.shape[1]}")
        out = self.sessions["dit"].run(None, {"latents": self._np(latents), "t": self._np(t),
                                              "context": self._np(context)})[0]
        return torch.from_numpy(out.astype(np.float32))

    def frame_query_fn(self, latents: torch.Tensor) -> OnnxQueryFn:
        key, value = self.sessions["vae_decoder"].run(None, {"latents": self._np(latents)})
        return OnnxQueryFn(self.sessions["vae_query"], key, value, self.np_dtype)


def read_export_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / EXPORT_MANIFEST
    if not path.is_file():
        raise BackendError(f"{directory} is not an ONNX export directory (no {EXPORT_MANIFEST}); create one with "
                            "s4d-export onnx CHECKPOINT -o DIR --frames N")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BackendError(f"{path}: unreadable export manifest: {exc}") from None
    if manifest.get("format") != "sculpt4d-onnx":
        raise BackendError(f"{path}: not a Sculpt4D ONNX export (format={manifest.get('format')!r})")
    return manifest


def is_export_directory(path: str | os.PathLike) -> bool:
    return (Path(path) / EXPORT_MANIFEST).is_file()
