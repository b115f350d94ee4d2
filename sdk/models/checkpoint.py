"""Checkpoint loading and saving.

Supported layouts (``detect_layout``):

* ``hunyuan-ckpt``        - the official ``model.fp16.ckpt``: a torch dict with parts ``model``
                            (DiT), ``vae``, ``conditioner``. Loaded with ``weights_only=True``.
* ``hunyuan-safetensors`` - one safetensors file whose keys are prefixed ``model.``, ``vae.``,
                            ``conditioner.`` (the official ``use_safetensors`` variant).
* ``sculpt4d``            - our layout: a directory with ``sculpt4d.json`` (configs, metadata)
                            and one safetensors file per part: ``dit.safetensors``,
                            ``vae.safetensors``, ``conditioner.safetensors`` (the last two optional).

A directory holding an official file (``model.fp16.ckpt`` / ``model.fp16.safetensors`` / any
single ``*.ckpt``) is accepted too. Configs come from ``sculpt4d.json`` when present, otherwise
they are inferred from tensor shapes (and a ``config.yaml`` beside an official file, read with
``yaml.safe_load``, for fields shapes cannot tell). Nothing loaded here can execute code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..core.jsonfile import read_json, special_file_reason
from .config import (ConditionerConfig, DiTConfig, TemporalConfig, VAEConfig, dit_config_from_dict,
                     simple_config_from_dict, to_dict)

FORMAT_NAME = "sculpt4d"
FORMAT_VERSION = 1
MANIFEST = "sculpt4d.json"
PART_FILES = {"dit": "dit.safetensors", "vae": "vae.safetensors", "conditioner": "conditioner.safetensors"}
# Official part names inside model.fp16.ckpt -> ours.
OFFICIAL_PARTS = {"model": "dit", "vae": "vae", "conditioner": "conditioner"}
_LIST_LIMIT = 8


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, of an unknown layout, or does not fit the model."""


class PerFrameModeWarning(UserWarning):
    """The checkpoint has no temporal weights: the model runs as per-frame Hunyuan3D."""


@dataclass
class Checkpoint:
    """State dicts per part plus the configs they were built with."""

    source: Path
    layout: str
    dit: dict[str, torch.Tensor]
    dit_config: DiTConfig
    vae: dict[str, torch.Tensor] | None = None
    vae_config: VAEConfig | None = None
    conditioner: dict[str, torch.Tensor] | None = None
    conditioner_config: ConditionerConfig | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def has_temporal(self) -> bool:
        """Whether the DiT weights include Sculpt4D's temporal modules."""
        return any(_is_temporal_key(k) for k in self.dit)


# ======================================================================================
# Reading
# ======================================================================================


def detect_layout(path: str | os.PathLike) -> tuple[str, Path]:
    """``(layout, file_or_dir)`` for a checkpoint path; raises ``CheckpointError`` if unknown."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    special = special_file_reason(p)
    if special:  # reading it would block (a FIFO) or never end (a device)
        raise CheckpointError(f"checkpoint {p} is {special}; expected a checkpoint file or directory")
    if p.is_dir():
        if (p / MANIFEST).is_file():
            return "sculpt4d", p
        for name in ("model.fp16.safetensors", "model.safetensors"):
            if (p / name).is_file():
                return "hunyuan-safetensors", p / name
        ckpts = sorted(p.glob("*.ckpt"))
        if (p / "model.fp16.ckpt").is_file():
            return "hunyuan-ckpt", p / "model.fp16.ckpt"
        if len(ckpts) == 1:
            return "hunyuan-ckpt", ckpts[0]
        raise CheckpointError(
            f"{p} is not a checkpoint directory: expected {MANIFEST} (Sculpt4D layout), "
            "model.fp16.safetensors or model.fp16.ckpt (Hunyuan3D 2.1 layout)")
    if p.suffix == ".safetensors":
        return "hunyuan-safetensors", p
    if p.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        return "hunyuan-ckpt", p
    raise CheckpointError(f"{p}: unknown checkpoint file type {p.suffix!r}; expected .ckpt or .safetensors")


TINY_RANDOM = "tiny-random"
DEFAULT_MODEL = "default"  # the embedded demo model, see Generator.default()


def default_model_path() -> Path:
    """Where the embedded demo checkpoint lives inside the installed package."""
    return Path(__file__).resolve().parent.parent / "weights" / "demo"


def resolve_model_path(path: str | os.PathLike) -> str | os.PathLike:
    """``"default"`` -> the embedded demo checkpoint's directory; anything else unchanged."""
    from ..core.errors import GeneratorError

    if str(path) != DEFAULT_MODEL:
        return path
    root = default_model_path()
    if not (root / "sculpt4d.json").is_file():
        raise GeneratorError(f"the embedded demo model is missing from this installation ({root}); "
                             "reinstall the package or train it with examples/train_demo/train.py all")
    return root


def tiny_random_models(seed: int = 0):
    """``(dit, vae, conditioner)`` of the tiny RANDOM-WEIGHT model (same code, small widths) for
    tests, smoke runs and exports; seeds torch's global generator with ``seed``."""
    from . import ImageConditioner, Sculpt4DDiT, ShapeVAE

    torch.manual_seed(seed)
    dit, vae, cond = Sculpt4DDiT(DiTConfig.tiny()), ShapeVAE(VAEConfig.tiny()), ImageConditioner(ConditionerConfig.tiny())
    with torch.no_grad():
        for block in dit.blocks:  # exercise the temporal path (it starts at zero)
            torch.nn.init.normal_(block.temporal_attn.out_proj.weight, std=0.02)
    return dit, vae, cond


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint of any supported layout into state dicts and configs (CPU tensors)."""
    layout, target = detect_layout(path)
    if layout == "sculpt4d":
        return _load_sculpt4d_dir(target)
    parts = _read_safetensors_parts(target) if layout == "hunyuan-safetensors" else _read_torch_parts(target)
    if "dit" not in parts:
        raise CheckpointError(f"{target}: no DiT weights found (expected a 'model' part); "
                              f"found parts {sorted(parts)}")
    overrides = _read_official_yaml(target.parent / "config.yaml")
    dit_cfg = infer_dit_config(parts["dit"], overrides.get("dit", {}), source=target)
    vae_cfg = infer_vae_config(parts["vae"], overrides.get("vae", {})) if "vae" in parts else None
    cond_cfg = infer_conditioner_config(parts["conditioner"]) if "conditioner" in parts else None
    return Checkpoint(target, layout, parts["dit"], dit_cfg, parts.get("vae"), vae_cfg,
                      parts.get("conditioner"), cond_cfg, {})


def _read_torch_parts(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    import pickle
    import zipfile

    try:  # zip-format torch files are memory-mapped; legacy (plain pickle) files cannot be, so read whole
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        if not (isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower()):
            raise CheckpointError(_unreadable_message(path, exc)) from None  # truncated, not a torch file at all
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # weights_only refused a global: it needs code to load
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is a pickle that needs code to load"
            f"{f' ({found.group(1)})' if found else ''}. Checkpoints are loaded with weights_only=True: only "
            "weights-only pickles (tensors in plain dicts / lists) and safetensors files load. Convert it to "
            "safetensors where you trust its source.") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict with parts 'model', 'vae', 'conditioner', "
                              f"got {type(obj).__name__}")
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"dit": dict(obj)}  # a bare DiT state_dict
    parts = {}
    for official, ours in OFFICIAL_PARTS.items():
        if official in obj:
            part = obj[official]
            if not isinstance(part, Mapping) or not all(isinstance(v, torch.Tensor) for v in part.values()):
                raise CheckpointError(f"{path}: part {official!r} is not a tensor state_dict")
            parts[ours] = dict(part)
    unknown = sorted(set(obj) - set(OFFICIAL_PARTS))
    if not parts:
        raise CheckpointError(f"{path}: no known parts; expected keys {sorted(OFFICIAL_PARTS)}, found {unknown}")
    return parts


def _read_safetensors_parts(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    flat = _read_safetensors(path)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        prefix, _, rest = key.partition(".")
        if prefix not in OFFICIAL_PARTS or not rest:
            raise CheckpointError(f"{path}: key {key!r} has no part prefix; expected one of "
                                  f"{[p + '.' for p in OFFICIAL_PARTS]}")
        parts.setdefault(OFFICIAL_PARTS[prefix], {})[rest] = value
    return parts


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    # memory-mapped: a model built with build_dit(..., dtype=<the file's dtype>) uses these
    # tensors as its parameters, so the weights are never held twice
    from ..core.tensorfile import TensorFileError, map_safetensors

    try:
        return map_safetensors(path)
    except (OSError, TensorFileError) as exc:
        raise CheckpointError(_unreadable_message(path, exc)) from None


def _unreadable_message(path: Path, exc: Exception) -> str:
    size = path.stat().st_size if path.exists() else 0
    return (f"cannot read checkpoint {path} ({size} bytes): {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}. "
            "The file may be truncated or corrupted, or not a checkpoint (pickles are loaded with "
            "weights_only=True, so files that need arbitrary code are refused).")


def _load_sculpt4d_dir(root: Path) -> Checkpoint:
    try:
        manifest = read_json(root / MANIFEST)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{root / MANIFEST}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{root / MANIFEST}: not a Sculpt4D checkpoint manifest (a JSON {type(manifest).__name__}, "
                              "expected an object)")
    if manifest.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{root / MANIFEST}: not a Sculpt4D checkpoint (format={manifest.get('format')!r})")
    version = manifest.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{root / MANIFEST}: 'version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{root / MANIFEST}: format version {manifest['version']} is newer than this SDK "
                              f"supports ({FORMAT_VERSION}); upgrade sculpt4d-sdk")
    try:
        dit_cfg = dit_config_from_dict(manifest["dit_config"])
        vae_cfg = simple_config_from_dict(VAEConfig, manifest["vae_config"]) if manifest.get("vae_config") else None
        cond_cfg = (simple_config_from_dict(ConditionerConfig, manifest["conditioner_config"])
                    if manifest.get("conditioner_config") else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{root / MANIFEST}: invalid config: {exc}") from None
    if not (root / PART_FILES["dit"]).is_file():
        raise CheckpointError(f"{root}: missing {PART_FILES['dit']}")
    parts = {name: _read_safetensors(root / fname) for name, fname in PART_FILES.items()
             if (root / fname).is_file()}
    if vae_cfg is not None and "vae" not in parts:
        raise CheckpointError(f"{root}: manifest has a vae_config but {PART_FILES['vae']} is missing")
    return Checkpoint(root, "sculpt4d", parts["dit"], dit_cfg, parts.get("vae"), vae_cfg,
                      parts.get("conditioner"), cond_cfg, manifest.get("metadata", {}))


def _read_official_yaml(path: Path) -> dict[str, dict[str, Any]]:
    """Constructor params from an official ``config.yaml`` (``model.params``, ``vae.params``)."""
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path}: unreadable config: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a mapping with 'model' and 'vae' sections")
    out = {}
    for section, ours in (("model", "dit"), ("vae", "vae")):
        block = data.get(section) or {}
        params = block.get("params") if isinstance(block, dict) else None
        if params is not None and not isinstance(params, dict):
            raise CheckpointError(f"{path}: '{section}.params' must be a mapping")
        out[ours] = params or {}
    return out


# ======================================================================================
# Config inference from tensor shapes
# ======================================================================================


def _is_temporal_key(key: str) -> bool:
    return ".temporal_norm." in key or ".temporal_attn." in key


def _count_indices(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in sd if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def _require_key(sd: Mapping[str, torch.Tensor], key: str, source: Any) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{source}: required key {key!r} is missing; not a Hunyuan3D 2.1 / Sculpt4D DiT?")
    return sd[key]


def _pick(params: Mapping[str, Any], cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in params.items() if k in names}


def infer_dit_config(sd: Mapping[str, torch.Tensor], params: Mapping[str, Any] | None = None,
                     source: Any = "checkpoint") -> DiTConfig:
    """A ``DiTConfig`` that fits the tensors of an official or Sculpt4D DiT state dict."""
    x_emb = _require_key(sd, "x_embedder.weight", source)
    hidden, in_channels = x_emb.shape
    depth = _count_indices(sd, r"blocks\.(\d+)\.norm1\.weight")
    q_norm = sd.get("blocks.0.attn1.q_norm.weight")
    cfg = dict(_pick(params or {}, DiTConfig))
    cfg.pop("temporal", None)
    cfg.update(in_channels=int(in_channels), hidden_size=int(hidden), depth=depth,
               context_dim=int(_require_key(sd, "blocks.0.attn2.to_k.weight", source).shape[1]),
               qkv_bias="blocks.0.attn1.to_q.bias" in sd, qk_norm=q_norm is not None)
    if q_norm is not None:
        cfg["num_heads"] = int(hidden) // int(q_norm.shape[0])
    moe_blocks = [i for i in range(depth) if f"blocks.{i}.moe.gate.weight" in sd]
    cfg["num_moe_layers"] = len(moe_blocks)
    if moe_blocks:
        cfg["num_experts"] = int(sd[f"blocks.{moe_blocks[0]}.moe.gate.weight"].shape[0])
        cfg["moe_top_k"] = min(int(cfg.get("moe_top_k", 2)), cfg["num_experts"])
    if "blocks.0.mlp.fc1.weight" in sd:
        cfg["mlp_ratio"] = sd["blocks.0.mlp.fc1.weight"].shape[0] / hidden
    temporal = any(_is_temporal_key(k) for k in sd)
    cfg["temporal"] = TemporalConfig(enabled=temporal)
    try:
        return DiTConfig(**cfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: cannot build a DiT config from its tensors: {exc}") from None


def infer_vae_config(sd: Mapping[str, torch.Tensor], params: Mapping[str, Any] | None = None) -> VAEConfig:
    """A ``VAEConfig`` that fits an official ShapeVAE state dict (fields shapes cannot tell
    - ``num_latents``, ``pc_size`` - come from ``params`` or the released defaults)."""
    cfg = dict(_pick(params or {}, VAEConfig))
    post_kl = _require_key(sd, "post_kl.weight", "vae")
    cfg["width"], cfg["embed_dim"] = int(post_kl.shape[0]), int(post_kl.shape[1])
    cfg["num_decoder_layers"] = _count_indices(sd, r"transformer\.resblocks\.(\d+)\.ln_1\.weight")
    cfg["num_encoder_layers"] = _count_indices(sd, r"encoder\.self_attn\.resblocks\.(\d+)\.ln_1\.weight")
    q_norm = next((v for k, v in sd.items() if k.startswith("transformer.") and k.endswith("q_norm.weight")), None)
    cfg["qk_norm"] = q_norm is not None
    if q_norm is not None:
        cfg["heads"] = cfg["width"] // int(q_norm.shape[0])
    query_proj = sd.get("geo_decoder.query_proj.weight")
    if query_proj is not None:
        cfg["num_freqs"] = (int(query_proj.shape[1]) // 3 - 1) // 2
    cfg["qkv_bias"] = any(k.endswith("c_qkv.bias") for k in sd)
    try:
        return VAEConfig(**cfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"vae: cannot build a VAE config from its tensors: {exc}") from None


def infer_conditioner_config(sd: Mapping[str, torch.Tensor]) -> ConditionerConfig:
    """The :class:`ConditionerConfig` that fits a conditioner state_dict (width, depth, heads,
    patch and image size read from the tensors' shapes)."""
    prefix = "main_image_encoder.model."
    cls = _require_key(sd, prefix + "embeddings.cls_token", "conditioner")
    patch = _require_key(sd, prefix + "embeddings.patch_embeddings.projection.weight", "conditioner")
    pos = _require_key(sd, prefix + "embeddings.position_embeddings", "conditioner")
    hidden = int(cls.shape[-1])
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    fc1 = sd.get(prefix + "encoder.layer.0.mlp.fc1.weight")
    return ConditionerConfig(
        hidden_size=hidden,
        num_hidden_layers=_count_indices(sd, re.escape(prefix) + r"encoder\.layer\.(\d+)\.norm1\.weight"),
        num_attention_heads=max(1, hidden // 64),
        mlp_ratio=int(fc1.shape[0]) // hidden if fc1 is not None else 4,
        patch_size=int(patch.shape[-1]),
        image_size=grid * int(patch.shape[-1]),
    )


# ======================================================================================
# Building models and checking keys
# ======================================================================================


def check_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: Any, part: str,
                     ignore_missing: tuple[str, ...] = ()) -> None:
    """Raise ``CheckpointError`` listing missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not any(k.startswith(p) for p in ignore_missing)]
    unexpected = [k for k in sd if k not in expected]
    mis_shaped = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if items:
            shown = ", ".join(items[:_LIST_LIMIT]) + (", ..." if len(items) > _LIST_LIMIT else "")
            problems.append(f"{len(items)} {label} key(s): {shown}")
    if problems:
        raise CheckpointError(f"{source} ({part}) does not fit the {type(model).__name__} model: " + "; ".join(problems))


def build_dit(ckpt: Checkpoint, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              temporal: TemporalConfig | None = None, share_memory: bool = False) -> "torch.nn.Module":
    """The ``Sculpt4DDiT`` of a checkpoint. Without temporal weights the model runs in per-frame
    Hunyuan3D mode (temporal module off) and one ``PerFrameModeWarning`` says so.

    ``temporal`` overrides the schedule/anchor/block size/backend; ``enabled=False`` runs a 4D
    checkpoint per frame (its temporal weights are left out: the paper's per-frame ablation).
    It cannot enable a module whose weights do not exist.

    ``share_memory=True``: when the checkpoint's tensors already have ``dtype`` and live on the
    CPU, they become the parameters as they are (memory-mapped from safetensors): no copy, so a
    3B-parameter fp16 DiT costs no memory beyond the page cache (the exporter uses this). The
    default copies into freshly allocated, aligned memory (bit-identical math to a model that
    was never saved).
    """
    from .dit import Sculpt4DDiT

    cfg = ckpt.dit_config
    state = ckpt.dit
    partial = [k for k in state if _is_temporal_key(k)]
    if temporal is not None:
        cfg = dataclasses.replace(cfg, temporal=dataclasses.replace(temporal, enabled=bool(partial) and temporal.enabled))
        if partial and not temporal.enabled:
            state = {k: v for k, v in state.items() if not _is_temporal_key(k)}
    if not partial:
        warnings.warn(f"{ckpt.source}: no temporal weights (blocks.N.temporal_*): running in per-frame "
                      "Hunyuan3D mode - every frame is generated independently.", PerFrameModeWarning,
                      stacklevel=2)
        cfg = dataclasses.replace(cfg, temporal=dataclasses.replace(cfg.temporal, enabled=False))
    # Built on the meta device (no 3B-parameter random init), then filled from the checkpoint;
    # the DiT has no buffers, so every tensor is overwritten by load_state_dict.
    with torch.device("meta"):
        model = Sculpt4DDiT(cfg)
    check_state_dict(model, state, ckpt.source, "dit")
    if share_memory and torch.device(device).type == "cpu" and \
            all(t.dtype == dtype and t.device.type == "cpu" for t in state.values()):
        model.load_state_dict(dict(state), strict=True, assign=True)
        return model.eval()
    model = model.to_empty(device=device)
    model.load_state_dict(dict(state), strict=True)
    return model.to(dtype=dtype).eval()


def build_vae(ckpt: Checkpoint, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The :class:`ShapeVAE` of a checkpoint, weights checked key by key and loaded, in eval mode."""
    from .vae import ShapeVAE

    if ckpt.vae is None or ckpt.vae_config is None:
        raise CheckpointError(f"{ckpt.source}: no VAE weights in this checkpoint")
    with torch.device("meta"):  # shapes only: a config that lies about its sizes allocates nothing
        check_state_dict(ShapeVAE(ckpt.vae_config), ckpt.vae, ckpt.source, "vae")
    model = ShapeVAE(ckpt.vae_config)
    model.load_state_dict(ckpt.vae, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def build_conditioner(ckpt: Checkpoint, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The :class:`ImageConditioner` of a checkpoint, weights checked and loaded, in eval mode."""
    from .conditioner import ImageConditioner

    if ckpt.conditioner is None or ckpt.conditioner_config is None:
        raise CheckpointError(f"{ckpt.source}: no conditioner weights in this checkpoint")
    with torch.device("meta"):  # shapes only: a config that lies about its sizes allocates nothing
        probe = ImageConditioner(ckpt.conditioner_config)
        check_state_dict(probe, ckpt.conditioner, ckpt.source, "conditioner", ignore_missing=_buffers_only(probe))
    model = ImageConditioner(ckpt.conditioner_config)
    model.load_state_dict(ckpt.conditioner, strict=False)
    return model.to(device=device, dtype=dtype).eval()


def _buffers_only(model: torch.nn.Module) -> tuple[str, ...]:
    return tuple(name for name, _ in model.named_buffers())


# ======================================================================================
# Writing (our layout)
# ======================================================================================


def _hash_tensor(h: "hashlib._Hash", key: str, tensor: torch.Tensor) -> None:
    """Feed one named tensor (name, dtype, shape, bytes) into ``h``: the recipe of ``state_dict_hash``."""
    t = tensor.detach().cpu().contiguous()
    h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def state_dict_hash(sd: Mapping[str, torch.Tensor]) -> str:
    """A content hash of a state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for key in sorted(sd):
        _hash_tensor(h, key, sd[key])
    return h.hexdigest()[:16]


def _random_init(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Plausible random weights: norms' scales 1, biases 0, matrices N(0, 0.02)."""
    if name.endswith(".bias") or len(shape) == 0:
        return torch.zeros(shape)
    if len(shape) == 1:
        return torch.ones(shape)
    return torch.randn(shape, generator=generator) * 0.02


def write_random_checkpoint(directory: str | os.PathLike, dit_config: DiTConfig, vae_config: VAEConfig,
                            conditioner_config: ConditionerConfig, dtype: torch.dtype = torch.float16,
                            seed: int = 0, metadata: dict[str, Any] | None = None, overwrite: bool = False,
                            progress=None) -> Path:
    """Our layout with random weights, for benchmarks and export checks at any size (the
    full-size DiT is 3B parameters). Models are instantiated on the meta device and every
    tensor is generated and streamed to disk on its own, so memory stays at one tensor."""
    from ..core.atomic import atomic_directory
    from .conditioner import ImageConditioner
    from .dit import Sculpt4DDiT
    from .vae import ShapeVAE
    from ..core.tensorfile import SafetensorsWriter

    generator = torch.Generator().manual_seed(seed)
    target = Path(directory)
    with atomic_directory(target, overwrite, exists_error=CheckpointError) as tmp:
        manifest: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                                    "metadata": {"name": "random", "seed": seed, **(metadata or {})}}
        for name, cls, config in (("dit", Sculpt4DDiT, dit_config), ("vae", ShapeVAE, vae_config),
                                  ("conditioner", ImageConditioner, conditioner_config)):
            with torch.device("meta"):
                model = cls(config)
            # persistent state only: what save_checkpoint would write (no non-persistent buffers);
            # in sorted order, so the streamed hash is state_dict_hash of what was written
            specs = sorted((k, tuple(v.shape), dtype if v.is_floating_point() else v.dtype)
                           for k, v in model.state_dict().items())
            digest = hashlib.sha256()
            with SafetensorsWriter(tmp / PART_FILES[name], specs) as writer:
                for key, shape, tensor_dtype in specs:
                    tensor = _random_init(key, shape, generator).to(tensor_dtype)
                    _hash_tensor(digest, key, tensor)
                    writer.write(key, tensor)
                    if progress is not None:
                        progress(name, key)
            manifest[f"{name}_config"] = to_dict(config)
            manifest.setdefault("hashes", {})[name] = digest.hexdigest()[:16]
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return target


def save_checkpoint(directory: str | os.PathLike, dit: torch.nn.Module, vae: torch.nn.Module | None = None,
                    conditioner: torch.nn.Module | None = None, metadata: dict[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    """Write our layout (safetensors per part + ``sculpt4d.json``) atomically: the files go to a
    temporary directory next to ``directory`` that is renamed into place at the end."""
    from safetensors.torch import save_file

    from ..core.atomic import atomic_directory, written_by_us

    def ours(path: Path) -> str | None:
        return written_by_us(path, MANIFEST, FORMAT_NAME, lambda m: PART_FILES.values())

    target = Path(directory)
    with atomic_directory(target, overwrite, exists_error=CheckpointError, owned=ours) as tmp:
        manifest: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                                    "metadata": dict(metadata or {})}
        for name, model in (("dit", dit), ("vae", vae), ("conditioner", conditioner)):
            if model is None:
                continue
            sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(sd, str(tmp / PART_FILES[name]))
            manifest[f"{name}_config"] = to_dict(model.config)
            manifest.setdefault("hashes", {})[name] = state_dict_hash(sd)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return target
