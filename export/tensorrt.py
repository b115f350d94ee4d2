"""Building TensorRT engines from the exported ONNX graphs.

Works with full TensorRT (``tensorrt``) or TensorRT-RTX (``tensorrt_rtx``, which builds with
no GPU present: an ahead-of-time CPU build). Both are strongly typed: an engine's precision is
the ONNX graph's (export with ``--dtype fp16`` for FP16 engines). When no BlockSparseAttention
plugin is registered, the parser inlines the node's ONNX local function (standard ops).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Sequence

FLAVOURS = ("tensorrt-rtx", "tensorrt")


class TensorRTError(RuntimeError):
    """TensorRT is missing, or could not parse / build a graph (with the parser's messages)."""


@dataclass(frozen=True)
class ShapeRange:
    """min / opt / max shape of one network input for the optimisation profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


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


def build_engine(onnx_path: str | Path, shapes: dict[str, ShapeRange] | None = None, flavour: str = "auto",
                 default_batch: tuple[int, int, int] = (1, 2, 2)) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine. Dynamic dims not covered by ``shapes``
    get ``default_batch`` (min, opt, max). Raises ``TensorRTError`` with the parser's errors."""
    trt, name = import_tensorrt(flavour)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    # Strongly typed: the graph's dtypes decide precision. TensorRT 10.x needs the flag (weakly
    # typed networks would run an fp16 graph in fp32); TensorRT 11 and TensorRT-RTX always are.
    strongly_typed = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise TensorRTError(f"{name} could not parse {onnx_path}: " + " | ".join(errors))
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
    return bytes(serialized)


def input_names(onnx_path: str | Path) -> Sequence[str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [i.name for i in model.graph.input]
