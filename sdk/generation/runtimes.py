"""Inference runtimes behind ``Generator``: the same three calls on every backend.

* ``condition(images [T,3,S,S] in [-1,1]) -> tokens [T, L, Cc]``
* ``velocity(latents [B,T,P,C], t [B], context [B,T,L,Cc]) -> [B,T,P,C]`` (the sampler's model)
* ``frame_query_fn(latents [1,P,C], already divided by scale_factor) -> query_fn(xyz [M,3]) -> [M]``
  with the latents' cross-attention K/V computed once per frame.

Two flags say which accelerations of the fast path (``sdk.generation.settings.Accelerations``) a
runtime can run; a runtime without them runs none: ``supports_step_cache`` (``velocity`` takes
``cache=FirstBlockCache``) and ``supports_kv_selection`` (``frame_query_fn`` takes a
``KeySelection``). Only ``TorchRuntime`` has both: the exported graphs are one DiT and a
full-attention field query.

``TorchRuntime`` runs the PyTorch modules; ``OnnxRuntime`` runs an export directory written by
``s4d-export onnx`` (CPU provider always, CUDA provider when onnxruntime-gpu and a GPU exist).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.config import ConditionerConfig, DiTConfig, VAEConfig, dit_config_from_dict, simple_config_from_dict
# The manifests and their checks are the deployment contract's; re-exported here for callers of
# the names' old home.
from ..core.contract import (CONDITIONER, DIT, ENGINE_FORMAT, ENGINE_MANIFEST, ENGINE_PARTS,  # noqa: F401
                       EXPORT_FORMAT, EXPORT_MANIFEST, PART_NAMES, VAE_DECODER, VAE_QUERY, BackendError,
                       check_engine_entry, check_engine_manifest, engine_file_problem, file_sha256,
                       is_engine_directory, is_export_directory, read_engine_manifest, read_export_manifest)
from ..core.extras import MissingExtraError, require
from ..kernels.native import find_plugin_library, gpu_description  # noqa: F401 (re-exported)
from ..models.conditioner import prepare_images

class TorchRuntime:
    """Runs the PyTorch modules (CPU or CUDA) behind the runtime interface the pipeline uses:
    ``condition`` (images -> context tokens), ``velocity`` (the DiT) and ``frame_query_fn`` (a
    frame's latents -> a field query function)."""
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
        """Image tokens ``[N, tokens, width]`` of conditioning images ``[N, 3, H, W]`` in [-1, 1]."""
        with torch.no_grad():
            batch = images.to(self.device, self.dtype)
            return self.conditioner(prepare_images(batch, self.conditioner_config.image_size))

    # which accelerations (sdk.generation.settings.Accelerations) this runtime can run
    supports_step_cache = True
    supports_kv_selection = True

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 cache=None) -> torch.Tensor:
        """The DiT's velocity for latents ``[B, T, P, C]``, times ``[B]`` and context ``[B, T, tokens, width]``;
        with ``cache`` (a ``FirstBlockCache``), through first-block caching."""
        args = (latents.to(self.device, self.dtype), t.to(self.device, self.dtype), context.to(self.device, self.dtype))
        with torch.no_grad():
            return self.dit(*args) if cache is None else self.dit.forward_cached(*args, cache)

    def frame_query_fn(self, latents: torch.Tensor, selection=None):
        """Decode one frame's latents once and return a function ``xyz [N, 3] -> field [N]``
        (``selection``: adaptive KV selection, a ``KeySelection``)."""
        from .decode import vae_query_fn

        with torch.no_grad():
            decoded = self.vae.decode(latents.to(self.device, self.dtype))
        return vae_query_fn(self.vae, decoded, selection)


class OnnxQueryFn:
    """``xyz [M,3] -> field [M]`` through ``vae_query.onnx`` with fixed per-frame K/V."""

    bytes_per_point = 8192  # generous: attention scores + MLP activations per query point

    def __init__(self, session, key: np.ndarray, value: np.ndarray, dtype: np.dtype) -> None:
        self.session, self.key, self.value, self.dtype = session, key, value, dtype

    def __call__(self, xyz: torch.Tensor) -> torch.Tensor:
        """The field at points ``xyz [N, 3]`` (float32, on ``xyz``'s device)."""
        points = xyz.detach().cpu().numpy().astype(self.dtype)[None]
        field = self.session.run(None, VAE_QUERY.feed(self.key, self.value, points))[0]
        return torch.from_numpy(field[0].astype(np.float32)).to(xyz.device)


class OnnxRuntime:
    """Runs ``dit.onnx``, ``vae_decoder.onnx``, ``vae_query.onnx``, ``conditioner.onnx``."""

    name = "onnxruntime"
    # the exported DiT is one graph (no first-block output to cache on) and vae_query.onnx holds
    # full attention: only the temporal narrow band (in the decode loop) applies
    supports_step_cache = False
    supports_kv_selection = False

    def __init__(self, directory: str | os.PathLike, providers: list[str] | None = None) -> None:
        try:
            ort = require("onnxruntime", "backend 'onnxruntime'")
        except MissingExtraError as exc:
            raise BackendError(str(exc)) from None
        self.directory = Path(directory)
        self.manifest = read_export_manifest(self.directory)
        m = self.manifest
        self.dit_config = dit_config_from_dict(m["dit_config"])
        self.vae_config = simple_config_from_dict(VAEConfig, m["vae_config"])
        self.conditioner_config = simple_config_from_dict(ConditionerConfig, m["conditioner_config"])
        self.fixed_frames = int(m["frames"])
        if m["dtype"] not in ("fp32", "fp16"):
            raise BackendError(f"{self.directory} is a {m['dtype']} export; ONNX Runtime runs fp32 and fp16 exports "
                               "(bf16 graphs are for TensorRT: s4d-export build --precision bf16)")
        self.np_dtype = np.float16 if m["dtype"] == "fp16" else np.float32
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # keep ORT's constant-folding notices off the console
        self.providers = providers
        self.sessions = {}
        for part, fname in m["files"].items():
            try:
                self.sessions[part] = ort.InferenceSession(str(self.directory / fname), options, providers=providers)
            except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, NoSuchFile)
                raise BackendError(f"ONNX Runtime cannot load {self.directory / fname}: {exc}") from None
        missing = set(PART_NAMES) - set(self.sessions)
        if missing:
            raise BackendError(f"{self.directory}: export lacks {sorted(missing)}; re-run s4d-export onnx")

    def _np(self, t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(self.np_dtype)

    def condition(self, images: torch.Tensor) -> torch.Tensor:
        """Image tokens of conditioning images, through the conditioner graph."""
        prepared = prepare_images(images.float(), self.conditioner_config.image_size)
        tokens = self.sessions[CONDITIONER.name].run(None, CONDITIONER.feed(self._np(prepared)))[0]
        return torch.from_numpy(tokens.astype(np.float32))

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The DiT graph's velocity; the export's frame count must match ``latents``."""
        if latents.shape[1] != self.fixed_frames:
            raise BackendError(f"{self.directory} was exported for {self.fixed_frames} frames, not {latents.shape[1]}; "
                                f"run: s4d-export onnx CHECKPOINT -o DIR --frames {latents.shape[1]}")
        out = self.sessions[DIT.name].run(None, DIT.feed(self._np(latents), self._np(t), self._np(context)))[0]
        return torch.from_numpy(out.astype(np.float32))

    def frame_query_fn(self, latents: torch.Tensor) -> OnnxQueryFn:
        """Run the VAE decoder graph once for this frame and return its field query function."""
        key, value = self.sessions[VAE_DECODER.name].run(None, VAE_DECODER.feed(self._np(latents)))
        return OnnxQueryFn(self.sessions[VAE_QUERY.name], key, value, self.np_dtype)


# ======================================================================================
# TensorRT engines (s4d-export build)
# ======================================================================================

_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64}


class TensorRTRuntime:
    """Runs the engines of ``s4d-export build`` with torch CUDA tensors as I/O.

    One DiT engine per frame count; the VAE-decoder, VAE-query and conditioner engines are shared.
    Needs a CUDA GPU and the TensorRT flavour the engines were built with; loads the
    BlockSparseAttention plugin library when the engines were built with it.
    """

    name = "tensorrt"
    supports_step_cache = False  # same graphs as ONNX Runtime: see OnnxRuntime
    supports_kv_selection = False

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.entries: dict[str, dict[str, Any]] = read_engine_manifest(self.directory)["engines"]
        if not torch.cuda.is_available():
            raise BackendError("backend 'tensorrt' needs a CUDA GPU and a CUDA build of torch; none is available "
                               "here (use backend='onnxruntime' or 'torch')")
        flavours = {e["flavour"] for e in self.entries.values()}
        module = "tensorrt_rtx" if flavours == {"tensorrt-rtx"} else "tensorrt"
        try:
            self.trt = require(module, f"the engines in {self.directory}")
        except MissingExtraError as exc:
            raise BackendError(str(exc)) from None
        self.device_desc = gpu_description()
        for name, entry in self.entries.items():
            check_engine_entry(entry, name, self.trt.__version__, self.device_desc)
        # plugin_layers: how many plugin layers an engine holds; older manifests only say whether
        # the library was loaded while building
        if any(e.get("plugin_layers", e.get("plugin_loaded")) for e in self.entries.values()):
            recorded = [e["plugin_path"] for e in self.entries.values() if e.get("plugin_path")]
            lib = find_plugin_library() or (Path(recorded[0]) if recorded else None)
            if lib is None or not lib.is_file():
                raise BackendError("these engines use the BlockSparseAttention plugin: set S4D_TRT_PLUGIN to "
                                   "libs4d_trt_plugin.so (see plugins_trt/README.md)")
            self.trt.get_plugin_registry().load_library(str(lib))
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self._contexts: dict[str, Any] = {}
        shared = self.entries.get(VAE_DECODER.engine_name()) or next(iter(self.entries.values()))
        configs = shared["configs"]
        self.dit_config = dit_config_from_dict(configs["dit_config"])
        self.vae_config = simple_config_from_dict(VAEConfig, configs["vae_config"])
        self.conditioner_config = simple_config_from_dict(ConditionerConfig, configs["conditioner_config"])
        self.fixed_frames = None
        self.frames_available = sorted(e["frames"] for e in self.entries.values() if e["part"] == DIT.name)

    def _context(self, name: str):
        if name not in self._contexts:
            if name not in self.entries or not (self.directory / name).is_file():
                raise BackendError(f"{self.directory} has no {name}")
            data = (self.directory / name).read_bytes()
            problem = engine_file_problem(self.entries[name], self.directory / name, data)
            if problem is not None:
                raise BackendError(f"{self.directory / name}: {problem}; rebuild with: s4d-export build "
                                   f"--engine-dir {self.directory}")
            engine = self.runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise BackendError(f"{name}: TensorRT could not deserialize the engine (built for another GPU or "
                                   "TensorRT?)")
            self._contexts[name] = (engine, engine.create_execution_context())
        return self._contexts[name]

    def _run(self, name: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        engine, context = self._context(name)
        keep = []
        for key, tensor in inputs.items():
            dtype = _TORCH_DTYPES[engine.get_tensor_dtype(key).name]
            tensor = tensor.to("cuda", dtype).contiguous()
            keep.append(tensor)
            if not context.set_input_shape(key, tuple(tensor.shape)):
                raise BackendError(f"{name}: input {key} of shape {tuple(tensor.shape)} is outside the engine's "
                                   "optimisation profile; rebuild with a wider range")
            context.set_tensor_address(key, tensor.data_ptr())
        outputs = []
        for i in range(engine.num_io_tensors):
            key = engine.get_tensor_name(i)
            if engine.get_tensor_mode(key) == self.trt.TensorIOMode.OUTPUT:
                shape = tuple(context.get_tensor_shape(key))
                if any(d < 0 for d in shape):
                    raise BackendError(f"{name}: output {key} has unresolved shape {shape}")
                out = torch.empty(shape,
                                  dtype=_TORCH_DTYPES[engine.get_tensor_dtype(key).name], device="cuda")
                context.set_tensor_address(key, out.data_ptr())
                outputs.append(out)
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise BackendError(f"{name}: TensorRT execution failed")
        return outputs

    def condition(self, images: torch.Tensor) -> torch.Tensor:
        """Image tokens of conditioning images, through the conditioner engine (on the GPU)."""
        prepared = prepare_images(images.float().cuda(), self.conditioner_config.image_size)
        return self._run(CONDITIONER.engine_name(), CONDITIONER.feed(prepared))[0].float()

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The DiT engine's velocity; an engine for ``latents``' frame count must exist."""
        frames = latents.shape[1]
        name = DIT.engine_name(frames)
        if name not in self.entries:
            raise BackendError(f"no DiT engine for {frames} frames in {self.directory} (have {self.frames_available});"
                               f" build it with: s4d-export build --frames {frames} --engine-dir {self.directory}")
        return self._run(name, DIT.feed(latents, t, context))[0].float()

    def frame_query_fn(self, latents: torch.Tensor):
        """Run the VAE decoder engine once for this frame and return its field query function."""
        key, value = self._run(VAE_DECODER.engine_name(), VAE_DECODER.feed(latents))
        runtime = self

        class _Query:
            bytes_per_point = 8192

            def __call__(self, xyz: torch.Tensor) -> torch.Tensor:
                return runtime._run(VAE_QUERY.engine_name(), VAE_QUERY.feed(key, value, xyz[None]))[0][0].float()

        return _Query()
