"""``s4d-export build``: TensorRT engines per frame count, with the schedule baked in, and a cache.

Layout of an engine directory::

    manifest.json              one entry per engine: what it was built from and for
    dit_t16.engine             one DiT engine per frame count (the CSR lists of that T baked in)
    vae_decoder.engine, vae_query.engine, conditioner.engine   (frame-count independent)
    onnx/dit_t16/...           the ONNX export each DiT engine came from

The cache key of an engine is its manifest entry minus the build bookkeeping (``sdk.core.contract``:
``Part.key_fields``): model hash, part, frames, schedule, anchor, block size, precision, TensorRT
flavour and version, target GPU and plugin version. A matching existing engine is reused; a stale one is rebuilt and the reason is
printed in one line. Each entry records the engine file's size (``bytes``) and ``sha256``: a file
that does not match (corrupt, truncated, replaced) is stale too, and ``inspect`` reports it. The
manifest's shape is validated (``sdk.core.contract.check_engine_manifest``) before anything uses it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from sdk.core.atomic import atomic_write_bytes
from sdk.sparse import resolve_schedule
from sdk.sparse.attention import PLUGIN_VERSION

from sdk.core.contract import (DIT, ENGINE_FORMAT, ENGINE_MANIFEST, KEY_FIELDS, MAX_IMAGES,  # noqa: F401
                          MAX_QUERY_POINTS, PARTS, BackendError, ShapeRange, engine_file_problem, part, read_engine_manifest)
from sdk.kernels.native import find_plugin_library, gpu_description

from .onnx import DTYPES, ExportError, export_onnx, exporter_fingerprint, load_models
from .tensorrt import BuiltEngine, TensorRTError, build_engine, import_tensorrt, plugin_creator, plugin_rejection

MANIFEST = ENGINE_MANIFEST
PRECISIONS = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}
TARGETS = ("tensorrt", "tensorrt-rtx")
_LOADED_PLUGINS: set[str] = set()  # plugin libraries this process registered
#: part name -> the source hash its cache key holds (kept for callers of the old name; sdk.core.contract owns it)
PART_HASH = {name: spec.hash_key for name, spec in PARTS.items()}


@dataclass
class BuildReport:
    """What :func:`build_engines` did: the engine directory, the engines built and reused, and one
    line per decision (plugin, staleness, fallbacks)."""
    engine_dir: Path
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def target_description(flavour: str) -> str:
    """What an engine targets: the local GPU (name + compute capability) for full TensorRT, or
    TensorRT-RTX's ahead-of-time default targets when built without a GPU."""
    gpu = gpu_description()
    if gpu is not None:
        return gpu
    if flavour == "tensorrt-rtx":
        return "ahead-of-time (TensorRT-RTX default targets, no GPU at build time)"
    return "unknown GPU"


def load_plugin(trt, log: Callable[[str], None]) -> Path | None:
    """Load our BlockSparseAttention plugin library into ``trt``'s registry and return its path;
    None (after logging why) when it is missing or fails to load, so the ONNX function body is built."""
    lib = find_plugin_library()
    if lib is None:
        log("plugin: libs4d_trt_plugin.so not found (set S4D_TRT_PLUGIN or build plugins_trt/); the "
            "BlockSparseAttention ONNX function body (standard ops) is built instead - correct, but memory-hungry "
            "and slow beyond small sizes")
        return None
    if not lib.is_file():  # never die on a plugin problem: say so and build the ONNX body
        log(f"plugin: {lib} does not exist (S4D_TRT_PLUGIN); the BlockSparseAttention ONNX function body is built "
            "instead")
        return None
    registry = trt.get_plugin_registry()
    key = str(lib.resolve())
    if key in _LOADED_PLUGINS:  # the registry is per process; loading twice fails
        return lib
    if plugin_creator(trt) is not None:
        log(f"plugin: a BlockSparseAttention creator is already registered in this process; {lib} is not loaded "
            "over it")
        return lib
    if registry.load_library(str(lib)) is None:
        log(f"plugin: TensorRT could not load {lib} (see the log above; rebuild it against this TensorRT, "
            "plugins_trt/README.md); the BlockSparseAttention ONNX function body is built instead")
        return None
    _LOADED_PLUGINS.add(key)
    log(f"plugin: loaded {lib}")
    return lib


def read_manifest(engine_dir: Path) -> dict[str, Any]:
    """The engine directory's manifest (an empty one when there is none); ``TensorRTError`` if malformed."""
    path = Path(engine_dir) / MANIFEST
    if not path.is_file():
        return {"format": ENGINE_FORMAT, "version": 1, "engines": {}}
    try:
        return read_engine_manifest(engine_dir)
    except BackendError as exc:
        raise TensorRTError(str(exc)) from None


def stale_reason(old: dict[str, Any] | None, new: dict[str, Any], engine_path: Path) -> str | None:
    """Why an engine must be (re)built, or None if the cached one matches."""
    if old is None:
        return "not built yet"
    if not engine_path.is_file():
        return "engine file missing"
    for key in part(new["part"]).key_fields:
        if old.get(key) != new.get(key):
            return f"{key} changed: {old.get(key)!r} -> {new.get(key)!r}"
    return engine_file_problem(old, engine_path)


PLUGIN_PRECISIONS = ("fp16", "bf16")  # the CUDA kernel's dtypes


def plugin_decision(trt, plugin: Path | None, attrs: dict[str, Any] | None, precision: str) -> str | None:
    """Why a DiT graph's BlockSparseAttention nodes will NOT become plugin layers (None: they will)."""
    if attrs is None:
        return "the graph has no BlockSparseAttention node"
    if plugin is None:
        return "no plugin library is loaded"
    if precision not in PLUGIN_PRECISIONS:
        return f"the plugin takes {' or '.join(PLUGIN_PRECISIONS)} graphs, this one is {precision}"
    return plugin_rejection(trt, attrs)


def plugin_stale_reason(trt, plugin: Path | None, old: dict[str, Any]) -> str | None:
    """A cached DiT engine built from the ONNX body while the loaded plugin now accepts its nodes
    (or the reverse) is stale: the same key, but not what a build would make now."""
    if old.get("part") != DIT.name or "plugin_layers" not in old:
        return None
    if old.get("plugin_fallback") and plugin is not None and old.get("plugin_path") == str(plugin):
        return None  # the same library failed to build this graph last time: keep the ONNX-body engine
    uses_plugin = plugin_decision(trt, plugin, old.get("block_sparse_node"), old.get("precision", "fp16")) is None
    if uses_plugin and not old["plugin_layers"]:
        return "the loaded plugin accepts this graph now (the cached engine runs the ONNX function body)"
    if not uses_plugin and old["plugin_layers"]:
        return "the cached engine uses the plugin, which the loaded library does not accept for this graph"
    return None


def engine_shapes(part_name: str, image_size: int, max_query_points: int = MAX_QUERY_POINTS,
                  max_images: int = MAX_IMAGES) -> dict[str, ShapeRange] | None:
    """The optimisation profile of a part's engine (``sdk.core.contract.Part.profile``)."""
    return part(part_name).profile(image_size, max_query_points, max_images)


def build_part_engine(trt, flavour: str, plugin: Path | None, name: str, onnx_file: Path,
                      node: dict[str, Any] | None, precision: str, shapes: dict[str, ShapeRange] | None,
                      log: Callable[[str], None] = print) -> tuple[BuiltEngine, str | None]:
    """Build one engine; a graph with BlockSparseAttention nodes (``node``: their attributes) uses
    the plugin when the loaded library takes them, else the ONNX function body, and falls back to
    the body if the build with the plugin fails. Returns (engine, why the plugin build failed)."""
    # graphs without the node parse straight from their file (use_plugin has nothing to map)
    use_plugin = node is None
    if node is not None:
        why_not = plugin_decision(trt, plugin, node, precision)
        use_plugin = why_not is None
        if plugin is not None and not use_plugin:
            log(f"{name}: BlockSparseAttention plugin not used: {why_not}; building the ONNX function body instead")
    try:
        return build_engine(onnx_file, shapes, flavour=flavour, use_plugin=use_plugin, log=log), None
    except TensorRTError as exc:
        if not (use_plugin and node is not None):
            raise
        # the plugin accepted the node but the build failed around it: never die on a plugin problem
        log(f"{name}: building with the BlockSparseAttention plugin failed ({exc}); building the ONNX "
            "function body instead")
        return build_engine(onnx_file, shapes, flavour=flavour, use_plugin=False, log=log), str(exc)


def build_engines(frames: Sequence[int], checkpoint: str = "tiny", precision: str = "fp16",
                  target: str = "tensorrt", engine_dir: str | os.PathLike = "engines",
                  schedule: str | Sequence[int] | None = None, anchor: bool | None = None,
                  block_size: int | None = None, max_query_points: int = MAX_QUERY_POINTS, max_images: int = MAX_IMAGES,
                  log: Callable[[str], None] = print) -> BuildReport:
    """Export (if needed) and build one DiT engine per frame count plus the VAE-decoder, VAE-query
    and conditioner engines, reusing cached engines whose key matches."""
    if precision not in PRECISIONS:
        raise ExportError(f"--precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if target not in TARGETS:
        raise ExportError(f"--target must be one of {TARGETS}, got {target!r}")
    if not frames:
        raise ExportError("give at least one --frames value")
    trt, flavour = import_tensorrt(target)
    out = Path(engine_dir)
    if os.path.lexists(out) and not out.is_dir():
        raise TensorRTError(f"--engine-dir {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out)
    report = BuildReport(out)
    plugin = load_plugin(trt, log)
    # in the engine's precision: an fp16 checkpoint's weights are used memory-mapped, not copied
    models = load_models(checkpoint, DTYPES[precision])
    temporal = models.dit.config.temporal
    settings = {"precision": precision, "flavour": flavour, "exporter": exporter_fingerprint(),
                "tensorrt_version": trt.__version__, "target": target_description(flavour),
                "plugin_version": PLUGIN_VERSION, "plugin_loaded": plugin is not None,
                "plugin_path": str(plugin) if plugin else None,
                "schedule": list(resolve_schedule(schedule) if schedule is not None else temporal.schedule),
                "anchor": temporal.anchor if anchor is None else anchor,
                "block_size": block_size or temporal.block_size,
                "max_query_points": max_query_points, "max_images": max_images}

    jobs = [(DIT, int(t)) for t in dict.fromkeys(frames)] + [(spec, None) for spec in PARTS.values() if spec is not DIT]
    # 1. export every stale part while the PyTorch models are loaded ...
    pending = []
    for spec, t in jobs:
        name = spec.engine_name(t)
        entry = spec.cache_entry(settings, models.source[spec.hash_key], t)
        if name not in manifest["engines"] and os.path.lexists(out / name):
            raise TensorRTError(f"{out / name} exists but {out / MANIFEST} has no entry for it, so nothing proves "
                                "s4d-export build wrote it; move it away or choose another --engine-dir")
        if os.path.lexists(out / name) and (os.path.islink(out / name) or not (out / name).is_file()):
            # found now, not after minutes of export: the engine could never be written there
            raise TensorRTError(f"{out / name} is not a regular file (a directory or a link took its place); "
                                "move it away or choose another --engine-dir")
        old = manifest["engines"].get(name)
        reason = stale_reason(old, entry, out / name) or (plugin_stale_reason(trt, plugin, old) if old else None)
        if reason is None:
            log(f"cache hit: {name}")
            report.reused.append(name)
            continue
        log(f"building {name}: {reason}")
        t0 = time.perf_counter()
        export = export_onnx(models, out / "onnx" / spec.build_dir(t), frames=t or 1, dtype=precision,
                             schedule=settings["schedule"], anchor=settings["anchor"],
                             block_size=settings["block_size"], parts=(spec.name,))
        pending.append((name, spec, entry, export, round(time.perf_counter() - t0, 2)))
    image_size, source = models.conditioner.config.image_size, models.source
    # 2. ... then free them: TensorRT holds a copy of the weights while it builds, the largest
    # engine is as big as the model, and the two need not coexist with the PyTorch model
    del models
    gc.collect()
    for name, spec, entry, export, export_seconds in pending:
        t0 = time.perf_counter()
        shapes = spec.profile(image_size, max_query_points, max_images)
        exported = export.manifest
        node = exported["block_sparse_node"] if spec is DIT else None
        built, fallback = build_part_engine(trt, flavour, plugin, name, export.files[spec.name], node, precision,
                                            shapes, log)
        engine = built.data
        atomic_write_bytes(out / name, engine)
        manifest["engines"][name] = dict(
            entry, file=name, bytes=len(engine), sha256=hashlib.sha256(engine).hexdigest(),
            onnx=str(export.files[spec.name]), source=source,
            built_at=time.strftime("%Y-%m-%dT%H:%M:%S"), export_seconds=export_seconds,
            build_seconds=round(export_seconds + time.perf_counter() - t0, 2),
            host=platform.node(), tokens_per_frame=exported["tokens_per_frame"], plugin_layers=built.plugin_layers,
            plugin_fallback=fallback,
            context_tokens=exported["context_tokens"],
            block_sparse_node=node,
            configs={k: exported[k] for k in ("dit_config", "vae_config", "conditioner_config")})
        del built, engine
        atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=2).encode())
        report.built.append(name)
    return report


def _plugin_summary(entry: dict[str, Any]) -> str:
    """How an engine's BlockSparseAttention nodes were built, for ``inspect``."""
    if entry["part"] != DIT.name or entry.get("block_sparse_node") is None:
        return "no BlockSparseAttention node,"
    layers = entry.get("plugin_layers")
    if layers is None:  # manifests written before plugin_layers was recorded
        return f"plugin={'loaded' if entry.get('plugin_loaded') else 'not loaded'} (plugin_layers not recorded),"
    if layers:
        return f"plugin_layers={layers} (BlockSparseAttention plugin),"
    return "plugin_layers=0 (ONNX function body),"


def describe_engines(engine_dir: str | os.PathLike, problems: list[str] | None = None) -> str:
    """A human summary of an engine directory (``s4d-export inspect``). Every engine file is
    verified against its recorded size and sha256; ``problems`` collects one line per mismatch."""
    out = Path(engine_dir)
    if not (out / MANIFEST).is_file():
        raise TensorRTError(f"{out} has no {MANIFEST}; build engines with: s4d-export build --frames N "
                            f"--engine-dir {out}")
    manifest = read_manifest(out)
    lines = [f"engine directory {out}"]
    for name, e in sorted(manifest["engines"].items()):
        problem = engine_file_problem(e, out / name)
        present = "ok" if problem is None else ("MISSING" if not (out / name).is_file() else "CORRUPT")
        if problem is not None and problems is not None:
            problems.append(f"{name}: {problem}")
        lines.append(f"- {name} [{present}] part={e['part']} precision={e['precision']} "
                     f"{e['flavour']} {e['tensorrt_version']} target={e['target']}")
        if e["part"] == DIT.name:
            node = e.get("block_sparse_node") or {}
            lines.append(f"    frames={e['frames']} tokens/frame={e.get('tokens_per_frame')} "
                         f"schedule={node.get('schedule')} anchor={bool(node.get('anchor'))} "
                         f"block={node.get('block_size')} batch 1..2 (cond+uncond)")
        lines.append(f"    model={e['model_hash']} {_plugin_summary(e)} "
                     f"built {e['built_at']} in {e['build_seconds']} s, {e['bytes']} bytes")
    return "\n".join(lines)
