"""ONNX export of a Sculpt4D model: ``dit.onnx``, ``vae_decoder.onnx``, ``vae_query.onnx``,
``conditioner.onnx`` and the sidecar ``export.json``.

* ``dit.onnx``: ``(latents [B,T,P,C], t [B], context [B,T,L,Cc]) -> velocity [B,T,P,C]`` for one
  fixed frame count T (B dynamic, 1..2: cond + uncond). The temporal attention is ONE node
  ``s4d::BlockSparseAttention`` per block, carrying the attributes the TensorRT plugin reads
  (``sdk.sparse.attention.onnx_node_attributes``). The model also ships an ONNX local function
  of that name whose body is a standard-op implementation (gather of each query block's key
  blocks through the CSR lists baked in as constants, fp32 softmax) - ONNX Runtime runs the
  body; TensorRT (>= 10.7) uses a registered plugin of that name instead of the body.
* ``vae_decoder.onnx``: ``latents [1,N,C] -> (key, value)`` - post_kl + transformer + the
  geometry decoder's cross-attention K/V, computed once per frame.
* ``vae_query.onnx``: ``(key, value, xyz [1,M,3]) -> field [1,M]`` with M dynamic (chunks).
* ``conditioner.onnx``: ``images [B,3,S,S]`` (ImageNet-normalised) -> ``tokens [B,L,Cc]``.

Precision: ``--dtype fp16`` writes an fp16-typed graph (TensorRT is strongly typed) with fp32
kept where accuracy needs it: LayerNorm / RMSNorm compute in fp32 (cast in and out), RoPE is
computed in fp32, the timestep sinusoid is fp32 before its MLP, and the block-sparse body's
softmax runs in fp32. Spatial/cross attention keep the exporter's fp16 softmax (TensorRT's
fused attention accumulates in fp32). Models over 2 GB are saved with external data.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import itertools
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from sdk.core.atomic import atomic_directory, check_target, files_in, written_by_us
from sdk.models.config import to_dict
from sdk.core.contract import CONDITIONER, DIT, EXPORT_FORMAT, EXPORT_MANIFEST, PART_NAMES, PARTS, VAE_DECODER, VAE_QUERY
from sdk.core.extras import require
from sdk.sparse import PatternError, SparsePattern, resolve_schedule
from sdk.sparse.attention import ONNX_DOMAIN, ONNX_OP

OPSET = 20
MANIFEST = EXPORT_MANIFEST
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TWO_GB = 2 * 1024 ** 3
FILES = {name: spec.onnx_file for name, spec in PARTS.items()}  # part -> file name (sdk.core.contract)


class ExportError(ValueError):
    """The export request cannot be satisfied (bad frames, schedule, block size, dtype, model)."""


# ======================================================================================
# Graph wrappers: what each ONNX file computes
# ======================================================================================


class VAEDecoderGraph(nn.Module):
    """latents -> the geometry decoder's cross-attention (key, value), once per frame."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.vae.geo_decoder.precompute_kv(self.vae.decode(latents))
        return kv.key, kv.value


class VAEQueryGraph(nn.Module):
    """(key, value, xyz) -> field at the query points."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, key: torch.Tensor, value: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        from sdk.models.vae import LatentKV

        return self.vae.geo_decoder.query_with_kv(LatentKV(key, value), xyz)


class Fp32Norm(nn.Module):
    """Runs a LayerNorm / RMSNorm in fp32 inside an fp16 graph (cast in, normalise, cast out)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float()).to(x.dtype)


def half_precision_copy(module: nn.Module, dtype: torch.dtype = torch.float16) -> nn.Module:
    """An fp16 (or bf16) copy of ``module`` whose LayerNorm / RMSNorm layers compute in fp32.

    Tensors that already have ``dtype`` are shared with ``module``, not copied (only the module
    structure is): a model loaded in fp16 is exported without a second copy of its weights. The
    norms' own parameters are always copied, since they are converted to fp32."""
    norm_params = {id(t) for m in module.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))
                   for t in m.parameters(recurse=False)}
    shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())
              if t.dtype == dtype and id(t) not in norm_params}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree deprecation notice on deepcopy
        clone = copy.deepcopy(module, memo=dict(shared)).to(dtype)
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.LayerNorm, nn.RMSNorm)):
                setattr(parent, name, Fp32Norm(child))
    return clone


# ======================================================================================
# The BlockSparseAttention local function (standard-op body)
# ======================================================================================


def block_sparse_function(attrs: dict[str, Any], opset: int = OPSET):
    """FunctionProto ``s4d::BlockSparseAttention(q, k, v) -> out`` for the pattern in ``attrs``.

    q, k, v: ``[B, H, N, D]``. Each query block gathers its key blocks (CSR lists padded to the
    longest row, baked in as constants; padding masked with -inf), so memory is
    O(B*H*nnz*bs^2) scores instead of O(N^2). Softmax in fp32; outputs cast back like q.
    """
    from onnx import TensorProto, helper, numpy_helper

    pattern = SparsePattern.for_tokens(attrs["num_frames"], attrs["tokens_per_frame"], attrs["block_size"],
                                       tuple(attrs["schedule"]), bool(attrs["anchor"]))
    bs, D = attrs["block_size"], attrs["head_dim"]
    R = pattern.num_blocks
    index, valid = pattern.padded_kv_lists()
    M = index.shape[1]
    bias = np.where(valid.numpy(), 0.0, -np.inf).astype(np.float32).repeat(bs, axis=1)[:, None, :]  # [R,1,M*bs]

    def const(name: str, array: np.ndarray):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name + "_value"))

    i64 = lambda *v: np.asarray(v, dtype=np.int64)  # noqa: E731
    nodes = [
        const("block_shape", i64(0, 0, R, bs, D)),
        const("gathered_shape", i64(0, 0, R, M * bs, D)),
        const("out_shape", i64(0, 0, R * bs, D)),
        const("kv_index", index.numpy().astype(np.int64)),
        const("mask_bias", bias),
        const("scale", np.asarray(attrs["scale"], dtype=np.float32)),
        helper.make_node("Reshape", ["q", "block_shape"], ["q_blocks"]),
        helper.make_node("Reshape", ["k", "block_shape"], ["k_blocks"]),
        helper.make_node("Reshape", ["v", "block_shape"], ["v_blocks"]),
        helper.make_node("Gather", ["k_blocks", "kv_index"], ["k_gathered6"], axis=2),  # [B,H,R,M,bs,D]
        helper.make_node("Gather", ["v_blocks", "kv_index"], ["v_gathered6"], axis=2),
        helper.make_node("Reshape", ["k_gathered6", "gathered_shape"], ["k_gathered"]),
        helper.make_node("Reshape", ["v_gathered6", "gathered_shape"], ["v_gathered"]),
        helper.make_node("Transpose", ["k_gathered"], ["k_t"], perm=[0, 1, 2, 4, 3]),
        # scale q before QK^T so fp16 scores stay in range
        helper.make_node("CastLike", ["scale", "q"], ["scale_like_q"]),
        helper.make_node("Mul", ["q_blocks", "scale_like_q"], ["q_scaled"]),
        helper.make_node("MatMul", ["q_scaled", "k_t"], ["scores"]),  # [B,H,R,bs,M*bs]
        helper.make_node("Cast", ["scores"], ["scores32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["scores32", "mask_bias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs32"], axis=-1),
        helper.make_node("CastLike", ["probs32", "q"], ["probs"]),
        helper.make_node("MatMul", ["probs", "v_gathered"], ["out_blocks"]),  # [B,H,R,bs,D]
        helper.make_node("Reshape", ["out_blocks", "out_shape"], ["out"]),
    ]
    return helper.make_function(ONNX_DOMAIN, ONNX_OP, ["q", "k", "v"], ["out"], nodes,
                                [helper.make_opsetid("", opset)], attributes=sorted(attrs))


def read_attributes(node) -> dict[str, Any]:
    """Attributes of an ONNX node as plain Python values."""
    from onnx import helper

    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else (list(value) if isinstance(value, Sequence) and
                                                                       not isinstance(value, str) else value)
    return out


def attach_block_sparse_function(model) -> dict[str, Any] | None:
    """Add the local function for the model's BlockSparseAttention nodes (all must share one
    pattern); returns their attributes, or None if the graph has no such node."""
    from onnx import helper

    nodes = [n for n in model.graph.node if n.domain == ONNX_DOMAIN and n.op_type == ONNX_OP]
    if not nodes:
        return None
    attrs = read_attributes(nodes[0])
    for n in nodes[1:]:
        if read_attributes(n) != attrs:
            raise ExportError("BlockSparseAttention nodes with different attributes in one graph")
    model.functions.append(block_sparse_function(attrs))
    if not any(o.domain == ONNX_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ONNX_DOMAIN, 1))
    return attrs


# ======================================================================================
# Export
# ======================================================================================


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote: the directory, each part's graph file, and the ``export.json`` manifest."""
    directory: Path
    files: dict[str, Path]
    manifest: dict[str, Any] = field(default_factory=dict)


def _export_module(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                   dynamic_shapes: Any = None, external_data: bool | None = None) -> dict[str, Any] | None:
    import onnx

    module = module.eval()
    # The exporter logs optional-dependency notices (torchvision) and deprecation warnings of its
    # own internals; they say nothing about this graph.
    previous_disable = logging.root.manager.disable
    logging.disable(max(logging.WARNING, previous_disable))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            for category in (UserWarning, FutureWarning, DeprecationWarning):
                warnings.simplefilter("ignore", category)
            program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, input_names=input_names,
                                        output_names=output_names, dynamic_shapes=dynamic_shapes, verbose=False,
                                        report=False)
    finally:
        logging.disable(previous_disable)
    if external_data is None:  # protobuf cannot hold more than 2 GB: weights go to <file>.data
        external_data = sum(p.numel() * p.element_size() for p in module.parameters()) > TWO_GB * 0.9
    program.save(str(path), external_data=external_data)
    del program  # holds references to the weights' tensors
    # Post-process the saved proto without loading external weights: add the local function,
    # drop the exporter's per-node bookkeeping.
    model = onnx.load(str(path), load_external_data=False)
    attrs = attach_block_sparse_function(model)
    for node in model.graph.node:
        for prop in [p for p in node.metadata_props if p.key.startswith("pkg.torch") or p.key == "namespace"]:
            node.metadata_props.remove(prop)
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path), full_check=False)
    onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred")
    os.remove(str(path) + ".inferred")
    return attrs


def _export_part(spec, module: nn.Module, example: tuple, tmp: Path,
                 external_data: bool | None) -> dict[str, Any] | None:
    """Export one part under its contract: file name, input / output names, dynamic dims."""
    return _export_module(module, example, tmp / spec.onnx_file, list(spec.inputs), list(spec.outputs),
                          dynamic_shapes=spec.dynamic_shapes(), external_data=external_data)


def export_onnx(source: str | os.PathLike | tuple, out_dir: str | os.PathLike, frames: int, dtype: str = "fp32",
                schedule: str | Sequence[int] | None = None, anchor: bool | None = None,
                block_size: int | None = None, parts: Sequence[str] = PART_NAMES,
                overwrite: bool = True, external_data: bool | None = None) -> ExportResult:
    """Export ``source`` (a checkpoint path, ``"tiny"`` for the tiny random model, or the
    ``LoadedModels`` of ``load_models``) into ``out_dir`` for ``frames`` frames. Files are written
    to a temp dir, then moved in place. The models are left as they were (the schedule override
    and the dense MoE hold only inside ``Sculpt4DDiT.export_mode``).
    ``external_data``: weights in ``<graph>.onnx.data`` beside each graph; None (default) does
    that for graphs over ~2 GB, which protobuf cannot hold."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ExportError(f"--frames must be a positive integer, got {frames!r}")
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if block_size is not None and block_size < 1:
        raise ExportError(f"--block-size must be a positive integer, got {block_size}")
    unknown = set(parts) - set(FILES)
    if unknown:
        raise ExportError(f"unknown parts {sorted(unknown)}; expected some of {sorted(FILES)}")
    out = Path(out_dir)  # checked before any model is loaded
    try:
        check_target(out, overwrite, written_export, ExportError)
    except ValueError as exc:  # ExportError, or a dangerous target (., .., a parent of the cwd)
        raise ExportError(str(exc)) from None
    for module in ("onnx", "onnxscript"):  # torch's exporter needs both; say so before any model loads
        require(module, "ONNX export")
    dit, vae, cond, source_info = source if isinstance(source, tuple) else load_models(source, DTYPES[dtype])
    temporal = dit.config.temporal
    try:
        strides = resolve_schedule(schedule) if schedule is not None else temporal.schedule
        temporal = dataclasses.replace(temporal, schedule=strides,
                                       anchor=temporal.anchor if anchor is None else anchor,
                                       block_size=block_size or temporal.block_size)
        P = dit.config.input_size
        if dit.config.temporal.enabled:
            SparsePattern.for_tokens(frames, P, temporal.block_size, temporal.schedule, temporal.anchor)
    except (PatternError, ValueError) as exc:
        raise ExportError(str(exc)) from None
    torch_dtype = DTYPES[dtype]
    prepare = (lambda m: half_precision_copy(m, torch_dtype)) if dtype != "fp32" else (lambda m: m)

    files: dict[str, Path] = {}
    node_attrs = None
    with atomic_directory(out, overwrite, exists_error=ExportError, owned=written_export) as tmp, \
            dit.export_mode(temporal):
        gen = torch.Generator().manual_seed(0)
        L, Cc = cond.config.num_tokens, dit.config.context_dim
        if DIT.name in parts:
            example = (torch.randn(2, frames, P, dit.config.in_channels, generator=gen).to(torch_dtype),
                       torch.rand(2, generator=gen).to(torch_dtype),
                       torch.randn(2, frames, L, Cc, generator=gen).to(torch_dtype))
            node_attrs = _export_part(DIT, prepare(dit), example, tmp, external_data)
            files[DIT.name] = out / DIT.onnx_file
        vcfg = vae.config
        if VAE_DECODER.name in parts:
            lat = torch.randn(1, vcfg.num_latents, vcfg.embed_dim, generator=gen).to(torch_dtype)
            _export_part(VAE_DECODER, prepare(VAEDecoderGraph(vae)), (lat,), tmp, external_data)
            files[VAE_DECODER.name] = out / VAE_DECODER.onnx_file
        if VAE_QUERY.name in parts:
            with torch.no_grad():
                kv = vae.geo_decoder.precompute_kv(vae.decode(torch.randn(1, vcfg.num_latents, vcfg.embed_dim)))
            xyz = (torch.rand(1, 4096, 3, generator=gen) * 2 - 1).to(torch_dtype)
            _export_part(VAE_QUERY, prepare(VAEQueryGraph(vae)),
                         (kv.key.to(torch_dtype), kv.value.to(torch_dtype), xyz), tmp, external_data)
            files[VAE_QUERY.name] = out / VAE_QUERY.onnx_file
        if CONDITIONER.name in parts:
            size = cond.config.image_size
            images = torch.randn(1, 3, size, size, generator=gen).to(torch_dtype)
            _export_part(CONDITIONER, prepare(cond), (images,), tmp, external_data)
            files[CONDITIONER.name] = out / CONDITIONER.onnx_file
        manifest = {
            "format": EXPORT_FORMAT, "version": 1, "frames": frames, "dtype": dtype, "opset": OPSET,
            "schedule": list(temporal.schedule), "anchor": temporal.anchor, "block_size": temporal.block_size,
            "tokens_per_frame": P, "context_tokens": L, "temporal": dit.config.temporal.enabled,
            "block_sparse_node": node_attrs, "source": source_info,
            "dit_config": to_dict(dit.config), "vae_config": to_dict(vae.config), "conditioner_config":
                to_dict(cond.config), "files": {k: v.name for k, v in files.items()},
            "torch": torch.__version__, "written": sorted(files_in(tmp) + [MANIFEST]),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return ExportResult(out, files, manifest)


def written_export(directory: Path) -> str | None:
    """None if ``directory`` is provably an earlier export of ours: ``export.json`` with our format
    tag, and nothing but the files it lists (``written``; exports from before that field: the
    ``files`` map). Only such a directory (or an empty one) is replaced; anything else is refused."""
    reason = written_by_us(directory, MANIFEST, EXPORT_FORMAT,
                           lambda m: m["written"] if "written" in m else m["files"].values())
    return None if reason is None else f"it is not an ONNX export directory written by s4d-export ({reason})"


class LoadedModels(NamedTuple):
    """What ``load_models`` returns (a tuple, so ``dit, vae, cond, info = load_models(...)`` works)."""

    dit: nn.Module
    vae: nn.Module
    conditioner: nn.Module
    source: dict[str, Any]  # name / path / layout, run defaults, and each part's weight hash (``<part>_hash``)


def load_models(source: str | os.PathLike, dtype: torch.dtype = torch.float32) -> LoadedModels:
    """The DiT, VAE, conditioner and source info of a checkpoint path, ``"default"`` (the embedded
    demo model) or ``"tiny"``. A DiT stored in ``dtype`` keeps the checkpoint's memory-mapped
    tensors as its weights (no copy: how a 3B-parameter fp16 DiT fits on a 24 GB machine);
    otherwise the weights are converted to float32 as for inference."""
    from sdk.models.checkpoint import (TINY_RANDOM, build_conditioner, build_dit, build_vae, load_checkpoint,
                                resolve_model_path, state_dict_hash, tiny_random_models)

    if str(source) in ("tiny", TINY_RANDOM):
        info = {"name": TINY_RANDOM, "seed": 0}
        dit, vae, cond = (m.eval() for m in tiny_random_models(seed=0))
    else:
        ckpt = load_checkpoint(resolve_model_path(source))
        if ckpt.vae is None or ckpt.conditioner is None:
            raise ExportError(f"{ckpt.source}: export needs DiT, VAE and conditioner weights")
        stored = {t.dtype for t in ckpt.dit.values()}
        dit_dtype = dtype if stored == {dtype} else torch.float32
        dit, vae, cond = (build_dit(ckpt, dtype=dit_dtype, share_memory=True), build_vae(ckpt),
                          build_conditioner(ckpt))
        info = {"name": ckpt.metadata.get("name", Path(ckpt.source).name), "path": str(ckpt.source),
                "layout": ckpt.layout}
        if "defaults" in ckpt.metadata:  # run settings travel with the model into exports and engines
            info["defaults"] = ckpt.metadata["defaults"]
    for key, model in ((DIT.hash_key, dit), (VAE_DECODER.hash_key, vae), (CONDITIONER.hash_key, cond)):
        info[key] = state_dict_hash(model.state_dict())
    return LoadedModels(dit, vae, cond, info)


def exporter_fingerprint() -> str:
    """A hash of the code that shapes exported graphs (exporter, deployment contract: names, dims,
    profiles; models, sparse pattern), so a change to any of it invalidates cached engines."""
    import hashlib

    from sdk.core import contract
    from sdk.core.version import __version__

    root = Path(contract.__file__).resolve().parent.parent  # the sdk package
    files = sorted([Path(__file__).resolve(), Path(contract.__file__).resolve(), *(root / "models").glob("*.py"),
                    *(root / "sparse").glob("*.py")])
    h = hashlib.sha256(__version__.encode())
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


__all__ = ["ExportError", "ExportResult", "LoadedModels", "export_onnx", "load_models", "block_sparse_function", "attach_block_sparse_function",
           "half_precision_copy"]
