"""The deployment contract: the one description of the graphs ``s4d-export onnx`` writes, the
engines ``s4d-export build`` makes of them and the files the runtimes read back.

For every part (the DiT, one graph per frame count; the VAE decoder; the VAE query; the
conditioner) a :class:`Part` says its ONNX file name, its engine name, its input and output
names, its dynamic dims, its TensorRT optimisation profile and which fields enter its engine's
cache key. ``export.onnx`` (exporter), ``export.builder`` (engine builder and cache) and
``sdk.generation.runtimes`` (ONNX Runtime / TensorRT) all read them from here, so a renamed input or a
wider profile is changed once.

The two manifests are part of the contract too: ``export.json`` of an ONNX export directory and
``manifest.json`` of an engine directory (format tags, the entry schema and its checks).

No torch at import: ``s4d-export inspect`` and the CLIs' ``--help`` stay fast.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .jsonfile import read_json


class BackendError(ValueError):
    """A runtime cannot be built or cannot run the request (also: a malformed manifest)."""


# ======================================================================================
# The parts and their graphs
# ======================================================================================


@dataclass(frozen=True)
class ShapeRange:
    """min / opt / max shape of one network input for the optimisation profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class DynamicDim:
    """A dimension of a graph input that is not fixed at export time."""

    name: str
    min: int
    max: int


# The DiT's batch: cond + uncond (1 without classifier-free guidance); its profile is min 1,
# opt = max 2, the default profile of dynamic dims that have no explicit one.
DIT_BATCH = DynamicDim("batch", 1, 2)
DEFAULT_BATCH_PROFILE = (DIT_BATCH.min, DIT_BATCH.max, DIT_BATCH.max)
# Engine profile defaults: field query points per VAE-query call, images per conditioner call.
MAX_QUERY_POINTS = 1 << 18
MAX_IMAGES = 16


@dataclass(frozen=True)
class Part:
    """One deployable graph: its files, its I/O and its cache key."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weights: str  # the model whose weights it holds ("dit", "vae", "conditioner"): its hash keys the cache
    per_frame_count: bool = False  # one graph / engine per frame count T (the CSR lists of T are baked in)
    dynamic: dict[str, dict[int, DynamicDim]] = field(default_factory=dict)  # input -> axis -> dim
    own_fields: tuple[str, ...] = ()  # build settings only this part's graph takes (null in the others' entries)

    @property
    def onnx_file(self) -> str:
        """The ONNX graph's file name of this part (``<name>.onnx``)."""
        return f"{self.name}.onnx"

    @property
    def key_fields(self) -> tuple[str, ...]:
        """The manifest fields that make up this part's cache key."""
        return tuple(k for k in KEY_FIELDS if k not in PART_SPECIFIC_FIELDS or k in self.own_fields)

    @property
    def hash_key(self) -> str:
        """The key of this part's weight hash in the source info ``load_models`` returns."""
        return f"{self.weights}_hash"

    def engine_name(self, frames: int | None = None) -> str:
        """The engine file name of this part; a per-frame-count part (the DiT) needs ``frames``."""
        if self.per_frame_count:
            if frames is None:
                raise ValueError(f"the {self.name} engine is built per frame count; give frames")
            return f"{self.name}_t{frames}.engine"
        return f"{self.name}.engine"

    def build_dir(self, frames: int | None = None) -> str:
        """The engine directory's ``onnx/`` subfolder its graph is exported to before building."""
        return self.engine_name(frames).removesuffix(".engine")

    def feed(self, *tensors: Any) -> dict[str, Any]:
        """``{input name: tensor}`` for positional inputs in the contract's order."""
        if len(tensors) != len(self.inputs):
            raise ValueError(f"{self.name} takes {len(self.inputs)} inputs {self.inputs}, got {len(tensors)}")
        return dict(zip(self.inputs, tensors))

    def dynamic_shapes(self) -> tuple[dict[int, Any] | None, ...] | None:
        """``torch.onnx.export``'s ``dynamic_shapes``: one entry per input (None: all static)."""
        if not self.dynamic:
            return None
        import torch

        dims = {}  # one torch Dim per name: inputs sharing a name share the dimension
        for axes in self.dynamic.values():
            for dim in axes.values():
                dims.setdefault(dim.name, torch.export.Dim(dim.name, min=dim.min, max=dim.max))
        return tuple({axis: dims[dim.name] for axis, dim in self.dynamic[name].items()} if name in self.dynamic
                     else None for name in self.inputs)

    def profile(self, image_size: int, max_query_points: int = MAX_QUERY_POINTS,
                max_images: int = MAX_IMAGES) -> dict[str, ShapeRange] | None:
        """The TensorRT optimisation profile of this part's engine; inputs not named take
        ``DEFAULT_BATCH_PROFILE`` on their dynamic dims."""
        if self.name == "vae_query":
            return {"xyz": ShapeRange((1, 1, 3), (1, max_query_points, 3), (1, max_query_points, 3))}
        if self.name == "conditioner":
            shape = (3, image_size, image_size)
            return {"images": ShapeRange((1, *shape), (min(4, max_images), *shape), (max_images, *shape))}
        return None

    def cache_entry(self, settings: dict[str, Any], model_hash: str, frames: int | None = None) -> dict[str, Any]:
        """The key part of this engine's manifest entry: ``settings`` (every build setting), with
        the settings that do not enter this part's graph set to null."""
        entry = dict(settings, part=self.name, model_hash=model_hash, frames=frames if self.per_frame_count else None)
        for key in PART_SPECIFIC_FIELDS:
            if key not in self.own_fields:
                entry[key] = None
        return entry


DIT = Part("dit", ("latents", "t", "context"), ("velocity",), weights="dit", per_frame_count=True,
           dynamic={"latents": {0: DIT_BATCH}, "t": {0: DIT_BATCH}, "context": {0: DIT_BATCH}},
           own_fields=("frames", "schedule", "anchor", "block_size", "plugin_loaded", "plugin_path"))
VAE_DECODER = Part("vae_decoder", ("latents",), ("key", "value"), weights="vae")
VAE_QUERY = Part("vae_query", ("key", "value", "xyz"), ("field",), weights="vae",
                 dynamic={"xyz": {1: DynamicDim("points", 1, 1 << 24)}}, own_fields=("max_query_points",))
CONDITIONER = Part("conditioner", ("images",), ("tokens",), weights="conditioner",
                   dynamic={"images": {0: DynamicDim("images", 1, 64)}}, own_fields=("max_images",))

PARTS: dict[str, Part] = {p.name: p for p in (DIT, VAE_DECODER, VAE_QUERY, CONDITIONER)}
PART_NAMES = tuple(PARTS)
# Build settings that enter only some parts' graphs (listed in their Part.own_fields).
PART_SPECIFIC_FIELDS = ("frames", "schedule", "anchor", "block_size", "plugin_loaded", "plugin_path",
                        "max_query_points", "max_images")
# The manifest fields that decide whether a cached engine can be reused.
KEY_FIELDS = ("part", "model_hash", "frames", "schedule", "anchor", "block_size", "precision", "flavour",
              "tensorrt_version", "target", "plugin_version", "plugin_loaded", "max_query_points",
              "max_images", "exporter")


def part(name: str) -> Part:
    """The :class:`Part` called ``name``; ``ValueError`` listing the known parts otherwise."""
    try:
        return PARTS[name]
    except KeyError:
        raise ValueError(f"unknown part {name!r}; expected one of {', '.join(PART_NAMES)}") from None


# ======================================================================================
# ONNX export directory: export.json
# ======================================================================================

EXPORT_MANIFEST = "export.json"  # written by export.onnx
EXPORT_FORMAT = "sculpt4d-onnx"


# What the runtimes read from export.json (the exporter writes these and more): field -> types.
EXPORT_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (str,), "frames": (int,), "dtype": (str,), "files": (dict,), "dit_config": (dict,),
    "vae_config": (dict,), "conditioner_config": (dict,)}


def read_export_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """``export.json`` of an ONNX export directory, checked against ``EXPORT_FIELDS``; a
    ``BackendError`` naming the file and the field otherwise."""
    path = Path(directory) / EXPORT_MANIFEST
    if not path.is_file():
        raise BackendError(f"{directory} is not an ONNX export directory (no {EXPORT_MANIFEST}); create one with "
                           "s4d-export onnx CHECKPOINT -o DIR --frames N")
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as exc:
        raise BackendError(f"{path}: unreadable export manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BackendError(f"{path}: not a Sculpt4D ONNX export (format={found!r})")
    for key, types in EXPORT_FIELDS.items():
        if not isinstance(manifest.get(key), types) or isinstance(manifest.get(key), bool):
            raise BackendError(f"{path}: malformed export manifest: {key!r} must be "
                               f"{' or '.join(t.__name__ for t in types)}, got {manifest.get(key)!r}; re-export with "
                               "s4d-export onnx CHECKPOINT -o DIR --frames N")
    unknown = sorted(set(manifest["files"]) - set(PART_NAMES))
    if unknown:
        raise BackendError(f"{path}: malformed export manifest: unknown part(s) {unknown} in 'files'")
    return manifest


def is_export_directory(path: str | os.PathLike) -> bool:
    """True when ``path`` holds an ``export.json`` (an ``s4d-export onnx`` directory)."""
    return (Path(path) / EXPORT_MANIFEST).is_file()


# ======================================================================================
# Engine directory: manifest.json
# ======================================================================================

ENGINE_MANIFEST = "manifest.json"  # written by export.builder
ENGINE_FORMAT = "sculpt4d-engines"
ENGINE_PARTS = PART_NAMES

# Manifest entry fields: (allowed types, required). ``None`` in the types allows null.
ENTRY_SCHEMA: dict[str, tuple[tuple, bool]] = {
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
        for key, (types, required) in ENTRY_SCHEMA.items():
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
        part_name, frames = entry["part"], entry["frames"]
        if part_name not in PARTS:
            fail(f"entry {name!r}: unknown part {part_name!r} (expected one of {', '.join(ENGINE_PARTS)})")
        spec = PARTS[part_name]
        if spec.per_frame_count != (frames is not None) or (frames is not None and frames < 1):
            fail(f"entry {name!r}: frames must be a positive integer for the DiT and null otherwise, got {frames!r}")
        expected_name = spec.engine_name(frames)
        if name != expected_name:
            fail(f"entry {name!r} of part {part_name!r} must be named {expected_name!r}")
        sha = entry.get("sha256")
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            fail(f"entry {name!r}: sha256 must be 64 lowercase hex digits")
        for key, low in (("bytes", 0), ("plugin_layers", 0), ("tokens_per_frame", 1), ("build_seconds", 0)):
            value = entry.get(key)
            if value is not None and not (low <= value < 1e15):
                fail(f"entry {name!r}: {key!r} must be a number >= {low}, got {value!r}")
        node = entry.get("block_sparse_node") or {}
        for key in ("num_frames", "tokens_per_frame", "block_size", "num_heads", "head_dim", "schedule", "anchor",
                    "scale"):  # the attributes an engine was built with (sdk.sparse.attention)
            if key not in node:
                continue
            value = node[key]
            values = value if key == "schedule" and isinstance(value, list) else [value]
            low, high = {"anchor": (0, 1), "scale": (1e-9, 1e9)}.get(key, (1, 1 << 20))
            if not values or not all(isinstance(v, (int, float)) and (key == "anchor" or not isinstance(v, bool))
                                     and low <= v <= high and (key == "scale" or isinstance(v, int)) for v in values):
                fail(f"entry {name!r}: block_sparse_node {key!r} must be in [{low:g}, {high:g}], got {value!r}")
    return data


def read_engine_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The validated ``manifest.json`` of an engine directory (``BackendError`` if unreadable)."""
    path = Path(directory) / ENGINE_MANIFEST
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise BackendError(f"{path}: unreadable engine manifest ({type(exc).__name__}: {exc}); delete it to "
                           "rebuild") from None
    return check_engine_manifest(data, path)


def is_engine_directory(path: str | os.PathLike) -> bool:
    """True when ``path`` holds an engine ``manifest.json`` with our format tag (an ``s4d-export build`` directory)."""
    manifest = Path(path) / ENGINE_MANIFEST
    if not manifest.is_file():
        return False
    try:
        data = read_json(manifest)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == ENGINE_FORMAT


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Streaming sha256 of a file (engines can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def engine_file_problem(entry: dict[str, Any], path: str | os.PathLike, data: bytes | None = None) -> str | None:
    """Why the engine file at ``path`` does not match its manifest entry (missing, size, sha256),
    or None when it does. ``data``: the file's bytes when the caller has read them already (the
    runtime, which deserialises them next), so a GB-sized engine is not read twice."""
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


def check_engine_entry(entry: dict[str, Any], name: str, trt_version: str, device: str | None) -> None:
    """Raise ``BackendError`` if an engine was built for another TensorRT or GPU."""
    rebuild = f"rebuild with: s4d-export build --frames {entry.get('frames') or 'N'} --target {entry['flavour']}"
    if entry["tensorrt_version"] != trt_version:
        raise BackendError(f"{name} was built with {entry['flavour']} {entry['tensorrt_version']}, this process has "
                           f"{trt_version}; {rebuild}")
    if entry["flavour"] == "tensorrt" and device is not None and entry["target"] != device:
        raise BackendError(f"{name} was built for {entry['target']}, this GPU is {device}; {rebuild}")
