"""Building TensorRT engines from the exported ONNX graphs.

Works with full TensorRT (``tensorrt``) or TensorRT-RTX (``tensorrt_rtx``, which builds with
no GPU present: an ahead-of-time CPU build). Both are strongly typed: an engine's precision is
the ONNX graph's (export with ``--dtype fp16`` for FP16 engines). With the BlockSparseAttention
plugin registered, the parser maps each ``s4d::BlockSparseAttention`` node to it; without it (or
with ``use_plugin=False``) the parser inlines the node's ONNX local function (standard ops).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

from sdk.core.contract import DEFAULT_BATCH_PROFILE, ShapeRange
from sdk.core.extras import require
from sdk.sparse.attention import ONNX_DOMAIN, ONNX_OP, PLUGIN_VERSION

FLAVOURS = ("tensorrt-rtx", "tensorrt")
# A name no plugin creator has: nodes renamed to it (and their function) always build from the
# function body, even while the plugin library is loaded in the process.
BODY_OP = ONNX_OP + "Body"
RTX_PARSER_LIBRARY = "libtensorrt_rtx.so"  # what the RTX ONNX parser dlopens for plugin graphs


class TensorRTError(RuntimeError):
    """TensorRT is missing, or could not parse / build a graph (with the parser's messages)."""


def import_tensorrt(flavour: str = "auto") -> tuple[ModuleType, str]:
    """(module, flavour) of an importable TensorRT; ``auto`` prefers full TensorRT."""
    if flavour not in ("auto", *FLAVOURS):
        raise TensorRTError(f"unknown TensorRT flavour {flavour!r}; expected auto or one of {FLAVOURS}")
    candidates = [("tensorrt", "tensorrt"), ("tensorrt_rtx", "tensorrt-rtx")]
    reasons = []
    for module_name, name in candidates:
        if flavour not in ("auto", name):
            continue
        try:
            return __import__(module_name), name
        except ImportError as exc:
            reasons.append(f"{module_name}: {exc}")
    hint = ""
    if flavour == "tensorrt":
        try:
            __import__("tensorrt_rtx")
            hint = " TensorRT-RTX is installed: use --target tensorrt-rtx."
        except ImportError:
            pass
    raise TensorRTError("no TensorRT Python package is importable (" + "; ".join(reasons) + "). Install full "
                        "TensorRT from NVIDIA, or 'pip install sculpt4d-sdk[trt-rtx]' for TensorRT-RTX." + hint)


@dataclass(frozen=True)
class BuiltEngine:
    """A serialized engine and how its BlockSparseAttention nodes were built."""

    data: memoryview  # the serialized engine, a view of TensorRT's buffer (no copy of a GB-sized engine)
    plugin_layers: int  # BlockSparseAttention plugin layers in the parsed network (0: ONNX body)


def plugin_fields(trt: ModuleType, attrs: dict[str, Any]):
    """``attrs`` (an ONNX node's attributes) as the PluginFieldCollection the ONNX parser would
    hand the creator: ints -> INT32, floats -> FLOAT32, strings -> CHAR."""
    import numpy as np

    fields = []
    for key, value in attrs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, str):
            fields.append(trt.PluginField(key, np.frombuffer(value.encode(), np.int8).copy(), trt.PluginFieldType.CHAR))
        elif all(isinstance(v, int) for v in values):
            fields.append(trt.PluginField(key, np.asarray(values, np.int32), trt.PluginFieldType.INT32))
        else:
            fields.append(trt.PluginField(key, np.asarray(values, np.float32), trt.PluginFieldType.FLOAT32))
    return trt.PluginFieldCollection(fields)


def plugin_creator(trt: ModuleType):
    """The registered ``s4d::BlockSparseAttention`` creator of this process, or None."""
    return trt.get_plugin_registry().get_creator(ONNX_OP, PLUGIN_VERSION, ONNX_DOMAIN)


def plugin_rejection(trt: ModuleType, attrs: dict[str, Any]) -> str | None:
    """Why the registered BlockSparseAttention plugin cannot take a node with ``attrs`` (None if
    it can). Asks the loaded library itself: its creator builds the plugin as the parser would."""
    creator = plugin_creator(trt)
    if creator is None:
        return f"no {ONNX_DOMAIN}::{ONNX_OP} version {PLUGIN_VERSION} creator is registered"
    try:
        plugin = creator.create_plugin("s4d_probe", plugin_fields(trt, attrs), trt.TensorRTPhase.BUILD)
    except Exception as exc:  # noqa: BLE001 - the registered creator is not one we can talk to
        return f"asking the registered plugin creator failed ({type(exc).__name__}: {exc})"
    if plugin is not None:
        return None
    return (f"the loaded plugin rejects head_dim={attrs.get('head_dim')}, block_size={attrs.get('block_size')}, "
            f"tokens_per_frame={attrs.get('tokens_per_frame')} (its message is in the log above)")


def _rtx_library_dir() -> Path | None:
    try:
        import tensorrt_rtx_libs  # the pip wheel's library folder
    except ImportError:
        return None
    return Path(tensorrt_rtx_libs.__file__).resolve().parent


def prepare_rtx_parser(log: Callable[[str], None] = print, lib_dir: Path | None = None) -> None:
    """Make sure the TensorRT-RTX ONNX parser can open ``libtensorrt_rtx.so``.

    The parser dlopens that unversioned name as soon as a graph maps a node to a plugin; the pip
    wheel ships only ``libtensorrt_rtx.so.1`` and the missing file aborts the whole process with
    no message. Create the symlink next to it, or stop with the command that does."""
    lib_dir = lib_dir or _rtx_library_dir()
    if lib_dir is None or not (lib_dir / (RTX_PARSER_LIBRARY + ".1")).exists():
        return  # an SDK install (LD_LIBRARY_PATH): its lib/ holds the unversioned name
    link = lib_dir / RTX_PARSER_LIBRARY
    if link.exists():
        return
    if link.is_symlink():  # a dangling link: not ours to replace
        raise TensorRTError(f"{link} is a broken symlink; the TensorRT-RTX ONNX parser needs it to open plugins. "
                            f"Fix it with: ln -sfn {RTX_PARSER_LIBRARY}.1 {link}")
    try:
        os.symlink(RTX_PARSER_LIBRARY + ".1", link)
    except FileExistsError:
        return  # another process created it meanwhile
    except OSError as exc:
        raise TensorRTError(f"the TensorRT-RTX ONNX parser needs {link} to use plugins and it could not be created "
                            f"({exc.strerror}); run: ln -s {RTX_PARSER_LIBRARY}.1 {link}") from None
    log(f"created {link} -> {RTX_PARSER_LIBRARY}.1 (the TensorRT-RTX ONNX parser opens that name for plugins)")


def _body_only_model(onnx_path: Path) -> bytes:
    """The graph with its BlockSparseAttention nodes (and their local function) renamed to
    ``BODY_OP``, serialized without external weights: the parser then inlines the standard-op
    body whatever plugins are registered."""
    onnx = require("onnx", "building TensorRT engines")

    model = onnx.load(str(onnx_path), load_external_data=False)
    for node in model.graph.node:
        if node.domain == ONNX_DOMAIN and node.op_type == ONNX_OP:
            node.op_type = BODY_OP
    for function in model.functions:
        if function.domain == ONNX_DOMAIN and function.name == ONNX_OP:
            function.name = BODY_OP
    return model.SerializeToString()


def count_plugin_layers(trt: ModuleType, network) -> int:
    """IPluginV3 layers of a parsed network (ours are the only plugins our graphs use)."""
    kind = trt.LayerType.PLUGIN_V3
    return sum(1 for i in range(network.num_layers) if network.get_layer(i).type == kind)


def build_engine(onnx_path: str | Path, shapes: dict[str, ShapeRange] | None = None, flavour: str = "auto",
                 default_batch: tuple[int, int, int] = DEFAULT_BATCH_PROFILE, use_plugin: bool = True,
                 log: Callable[[str], None] = print) -> BuiltEngine:
    """Parse ``onnx_path`` and build a serialized engine. Dynamic dims not covered by ``shapes``
    get ``default_batch`` (min, opt, max). ``use_plugin=False`` builds BlockSparseAttention nodes
    from their ONNX function body even when the plugin is registered. Raises ``TensorRTError``
    with the parser's errors."""
    trt, name = import_tensorrt(flavour)
    if use_plugin and name == "tensorrt-rtx" and plugin_creator(trt) is not None:
        prepare_rtx_parser(log)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    # Strongly typed: the graph's dtypes decide precision. TensorRT 10.x needs the flag (weakly
    # typed networks would run an fp16 graph in fp32); TensorRT 11 and TensorRT-RTX always are.
    strongly_typed = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    # parse(bytes, path): external weights still resolve relative to the original file
    parsed = (parser.parse_from_file(str(onnx_path)) if use_plugin else
              parser.parse(_body_only_model(Path(onnx_path)), str(onnx_path)))
    if not parsed:
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise TensorRTError(f"{name} could not parse {onnx_path}: " + " | ".join(errors))
    plugin_layers = count_plugin_layers(trt, network)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    shapes = shapes or {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if tensor.name in shapes:
            rng = shapes[tensor.name]
        else:
            pick = lambda v: tuple(v if d == -1 else d for d in dims)  # noqa: E731
            rng = ShapeRange(pick(default_batch[0]), pick(default_batch[1]), pick(default_batch[2]))
        profile.set_shape(tensor.name, rng.min, rng.opt, rng.max)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"{name} failed to build an engine from {onnx_path} (see the log above)")
    del parser, network, builder, config  # the parser holds a copy of the weights
    return BuiltEngine(memoryview(serialized), plugin_layers)


def input_names(onnx_path: str | Path) -> Sequence[str]:
    """The input names of an ONNX graph (read without its external weights)."""
    onnx = require("onnx", "reading ONNX graphs")

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [i.name for i in model.graph.input]
