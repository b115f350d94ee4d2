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
from .extras import MissingExtraError, require
from .models.conditioner import prepare_images

EXPORT_MANIFEST = "export.json"  # written by export.onnx
EXPORT_FORMAT = "sculpt4d-onnx"


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
    if manifest.get("format") != EXPORT_FORMAT:
        raise BackendError(f"{path}: not a Sculpt4D ONNX export (format={manifest.get('format')!r})")
    return manifest


def is_export_directory(path: str | os.PathLike) -> bool:
    return (Path(path) / EXPORT_MANIFEST).is_file()


# ======================================================================================
# TensorRT engines (s4d-export build)
# ======================================================================================

ENGINE_MANIFEST = "manifest.json"  # written by export.builder
ENGINE_FORMAT = "sculpt4d-engines"


ENGINE_PARTS = ("dit", "vae_decoder", "vae_query", "conditioner")
# Manifest entry fields: (allowed types, required). ``None`` in the types allows null.
_ENTRY_SCHEMA: dict[str, tuple[tuple, bool]] = {
    "part": ((str,), True), "model_hash": ((str,), True), "precision": ((str,), True),
    "flavour": ((str,), True), "tensorrt_version": ((str,), True), "target": ((str,), True),
    "frames": ((int, None), True), "plugin_loaded": ((bool, None), True), "bytes": ((int,), True),
    "built_at": ((str,), True), "build_seconds": ((int, float), True), "sha256": ((str,), False),
    "plugin_layers": ((int,), False), "plugin_path": ((str, None), False), "configs": ((dict,), False),
    "block_sparse_node": ((dict, None), False), "tokens_per_frame": ((int, None), False),
}


def check_engine_manifest(data: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Validate the shape of an engine ``manifest.json`` (``s4d-export build``); returns it, or
    raises ``BackendError`` naming the file, the entry and what was expected. The one schema
    check behind the builder, ``s4d-export inspect`` and the TensorRT runtime."""
    def fail(what: str) -> None:
        raise BackendError(f"{path}: malformed engine manifest: {what}; delete it (and the engines) and rebuild "
                           "with s4d-export build")

    if not isinstance(data, dict):
        fail(f"expected a JSON object, got {type(data).__name__}")
    if data.get("format") != ENGINE_FORMAT:
        fail(f"format is {data.get('format')!r}, expected {ENGINE_FORMAT!r}")
    engines = data.get("engines")
    if not isinstance(engines, dict):
        fail(f"'engines' must be an object of name -> entry, got {type(engines).__name__}")
    for name, entry in engines.items():
        if not isinstance(entry, dict):
            fail(f"entry {name!r} must be an object, got {type(entry).__name__}")
        for key, (types, required) in _ENTRY_SCHEMA.items():
            if key not in entry:
                if required:
                    fail(f"entry {name!r} lacks {key!r}")
                continue
            value = entry[key]
            ok = (value is None and None in types) or any(
                t is not None and isinstance(value, t) and not (isinstance(value, bool) and t in (int, float))
                for t in types)
            if not ok:
                expected = " or ".join("null" if t is None else t.__name__ for t in types)
                fail(f"entry {name!r}: {key!r} must be {expected}, got {value!r}")
        part, frames = entry["part"], entry["frames"]
        if part not in ENGINE_PARTS:
            fail(f"entry {name!r}: unknown part {part!r} (expected one of {', '.join(ENGINE_PARTS)})")
        if (part == "dit") != (frames is not None) or (frames is not None and frames < 1):
            fail(f"entry {name!r}: frames must be a positive integer for the DiT and null otherwise, got {frames!r}")
        expected_name = f"dit_t{frames}.engine" if part == "dit" else f"{part}.engine"
        if name != expected_name:
            fail(f"entry {name!r} of part {part!r} must be named {expected_name!r}")
        sha = entry.get("sha256")
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            fail(f"entry {name!r}: sha256 must be 64 lowercase hex digits")
    return data


def read_engine_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The validated ``manifest.json`` of an engine directory (``BackendError`` if unreadable)."""
    path = Path(directory) / ENGINE_MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackendError(f"{path}: unreadable engine manifest ({type(exc).__name__}: {exc}); delete it to "
                           "rebuild") from None
    return check_engine_manifest(data, path)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Streaming sha256 of a file (engines can be gigabytes)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def engine_file_problem(entry: dict[str, Any], path: str | os.PathLike, data: bytes | None = None) -> str | None:
    """Why the engine file at ``path`` does not match its manifest entry (missing, size, sha256),
    or None when it does. ``data``: the file's bytes when the caller has read them already (the
    runtime, which deserialises them next), so a GB-sized engine is not read twice."""
    import hashlib

    path = Path(path)
    if data is None and not path.is_file():
        return "engine file missing"
    if not entry.get("sha256"):
        return "no sha256 recorded for the engine file (built by an older version)"
    size = path.stat().st_size if data is None else len(data)
    if size != entry.get("bytes"):
        return f"engine file is {size} bytes, the manifest recorded {entry.get('bytes')} (corrupt or replaced)"
    digest = file_sha256(path) if data is None else hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        return "engine file content does not match its recorded sha256 (corrupt or replaced)"
    return None


def gpu_description() -> str | None:
    """``"<name> (sm_XY)"`` of the current CUDA device, or None without one. Engines record it
    when built and the runtime compares it, so both sides use this one function."""
    try:
        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability()
        return f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
    except Exception:  # a broken CUDA runtime counts as no GPU
        return None


def is_engine_directory(path: str | os.PathLike) -> bool:
    manifest = Path(path) / ENGINE_MANIFEST
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == ENGINE_FORMAT


def find_plugin_library() -> Path | None:
    """The BlockSparseAttention TensorRT plugin: ``$S4D_TRT_PLUGIN``, else a CMake build in the
    repository checkout (``build/plugins_trt/`` as plugins_trt/README.md builds it, or
    ``plugins_trt/build*``), else a build inside the installed package's copy of the plugin sources
    (``sdk/_native/plugins_trt/build*``). The builder and the runtime both use this lookup."""
    env = os.environ.get("S4D_TRT_PLUGIN")
    if env:
        return Path(env)
    sdk_root = Path(__file__).resolve().parent
    searches = [(sdk_root / "_native", ("plugins_trt/build*/**/libs4d_trt_plugin.so",))]
    repo = sdk_root.parent
    if (repo / "plugins_trt").is_dir():  # a source checkout (editable install), not site-packages
        searches.insert(0, (repo, ("build/**/libs4d_trt_plugin.so", "plugins_trt/build*/**/libs4d_trt_plugin.so")))
    for root, patterns in searches:
        for pattern in patterns:
            for candidate in sorted(root.glob(pattern)):
                return candidate
    return None


def check_engine_entry(entry: dict[str, Any], name: str, trt_version: str, device: str | None) -> None:
    """Raise ``BackendError`` if an engine was built for another TensorRT or GPU."""
    rebuild = f"rebuild with: s4d-export build --frames {entry.get('frames') or 'N'} --target {entry['flavour']}"
    if entry["tensorrt_version"] != trt_version:
        raise BackendError(f"{name} was built with {entry['flavour']} {entry['tensorrt_version']}, this process has "
                           f"{trt_version}; {rebuild}")
    if entry["flavour"] == "tensorrt" and device is not None and entry["target"] != device:
        raise BackendError(f"{name} was built for {entry['target']}, this GPU is {device}; {rebuild}")


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64}


class TensorRTRuntime:
    """Runs the engines of ``s4d-export build`` with torch CUDA tensors as I/O.

    One DiT engine per frame count; the VAE-decoder, VAE-query and conditioner engines are shared.
    Needs a CUDA GPU and the TensorRT flavour the engines were built with; loads the
    BlockSparseAttention plugin library when the engines were built with it.
    """

    name = "tensorrt"

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
        shared = self.entries.get("vae_decoder.engine") or next(iter(self.entries.values()))
        configs = shared["configs"]
        self.dit_config = dit_config_from_dict(configs["dit_config"])
        self.vae_config = simple_config_from_dict(VAEConfig, configs["vae_config"])
        self.conditioner_config = simple_config_from_dict(ConditionerConfig, configs["conditioner_config"])
        self.fixed_frames = None
        self.frames_available = sorted(e["frames"] for e in self.entries.values() if e["part"] == "dit")

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
        prepared = prepare_images(images.float().cuda(), self.conditioner_config.image_size)
        return self._run("conditioner.engine", {"images": prepared})[0].float()

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        frames = latents.shape[1]
        name = f"dit_t{frames}.engine"
        if name not in self.entries:
            raise BackendError(f"no DiT engine for {frames} frames in {self.directory} (have {self.frames_available});"
                               f" build it with: s4d-export build --frames {frames} --engine-dir {self.directory}")
        return self._run(name, {"latents": latents, "t": t, "context": context})[0].float()

    def frame_query_fn(self, latents: torch.Tensor):
        key, value = self._run("vae_decoder.engine", {"latents": latents})
        runtime = self

        class _Query:
            bytes_per_point = 8192

            def __call__(self, xyz: torch.Tensor) -> torch.Tensor:
                return runtime._run("vae_query.engine", {"key": key, "value": value, "xyz": xyz[None]})[0][0].float()

        return _Query()
