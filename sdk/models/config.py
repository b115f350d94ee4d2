"""Model configurations as data.

Field names follow the argument names of the official Hunyuan3D 2.1 constructors
(``HunYuanDiTPlain``, ``ShapeVAE``, the DINOv2 image encoder) so a user can copy a
released YAML config across; the Sculpt4D temporal fields are ours.

Every config has ``full()`` (the released sizes, SPEC sections 2-5) and ``tiny()``
(the same code at small widths, used by the tests so they run in well under a
second on two CPU cores).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# Default block-sparse schedule of the paper ("delayed exponential"), SPEC section 3.
SCULPT4D_SCHEDULE: tuple[int, ...] = (1, 1, 2, 4, 8, 16)


class ConfigError(ValueError):
    """A configuration field has a value the model cannot be built with."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass(frozen=True)
class TemporalConfig:
    """The Sculpt4D temporal block-sparse self-attention inserted in every DiT block."""

    enabled: bool = True
    schedule: tuple[int, ...] | str = SCULPT4D_SCHEDULE  # strides, or a preset name of sdk.sparse
    anchor: bool = True  # first frame is attended fully by every frame
    block_size: int = 128  # tokens per attention block (S_B)
    rope_theta: float = 10000.0
    # Which implementation runs the attention: "auto" picks the fastest available
    # (see sdk.sparse.block_sparse_attention); "reference" is the dense-mask oracle.
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        from ..sparse.pattern import PatternError, resolve_schedule  # the one home of schedule rules

        try:
            object.__setattr__(self, "schedule", resolve_schedule(self.schedule))
        except PatternError as exc:
            raise ConfigError(f"TemporalConfig.schedule: {exc}") from None
        _require(isinstance(self.block_size, int) and self.block_size >= 1,
                 f"TemporalConfig.block_size must be a positive integer, got {self.block_size!r}")


@dataclass(frozen=True)
class DiTConfig:
    """Hunyuan3D 2.1 shape DiT (``HunYuanDiTPlain``) plus the Sculpt4D temporal module."""

    input_size: int = 4096  # latent tokens per frame (P)
    in_channels: int = 64
    hidden_size: int = 2048
    context_dim: int = 1024
    depth: int = 21
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    qk_norm_type: str = "rms"
    norm_type: str = "layer"
    qkv_bias: bool = False
    use_pos_emb: bool = False
    num_moe_layers: int = 6  # the last `num_moe_layers` blocks use a mixture of experts
    num_experts: int = 8
    moe_top_k: int = 2
    norm_eps: float = 1e-6
    temporal: TemporalConfig = field(default_factory=TemporalConfig)

    def __post_init__(self) -> None:
        _require(self.hidden_size % self.num_heads == 0,
                 f"DiTConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        _require(self.depth % 2 == 1, f"DiTConfig.depth must be odd (U-shaped skips), got {self.depth}")
        _require(0 <= self.num_moe_layers <= self.depth,
                 f"DiTConfig.num_moe_layers must be in [0, depth], got {self.num_moe_layers}")
        _require(1 <= self.moe_top_k <= self.num_experts,
                 f"DiTConfig.moe_top_k must be in [1, num_experts], got {self.moe_top_k}")
        _require(self.qk_norm_type == "rms" and self.norm_type == "layer" and not self.use_pos_emb,
                 "only the released Hunyuan3D 2.1 variant is supported: qk_norm_type='rms', "
                 "norm_type='layer', use_pos_emb=False")
        _require((self.hidden_size // self.num_heads) % 2 == 0, "head dim must be even for RoPE")

    @property
    def head_dim(self) -> int:
        """Channels per attention head (``hidden_size / num_heads``)."""
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of the feed-forward layers (``hidden_size * mlp_ratio``)."""
        return int(self.hidden_size * self.mlp_ratio)

    def is_moe_block(self, index: int) -> bool:
        """Whether block ``index`` has the mixture-of-experts FFN (the last ``num_moe_layers`` blocks)."""
        return index >= self.depth - self.num_moe_layers

    @classmethod
    def full(cls, **overrides: Any) -> "DiTConfig":
        """The released Hunyuan3D 2.1 size (21 blocks, width 2048, 16 heads), with ``overrides``."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "DiTConfig":
        # context_dim matches ConditionerConfig.tiny().hidden_size so the tiny parts compose
        """The same architecture at small widths, for tests; ``overrides`` replace fields."""
        base = cls(input_size=64, in_channels=8, hidden_size=64, context_dim=128, depth=5,
                   num_heads=4, num_moe_layers=2, num_experts=4, moe_top_k=2,
                   temporal=TemporalConfig(block_size=16))
        return dataclasses.replace(base, **overrides)

    @classmethod
    def demo(cls, **overrides: Any) -> "DiTConfig":
        """The embedded demo model (``Generator.default()``): 128 latents per frame in 4 temporal
        blocks of 32, so the block-sparse schedule still has strides to skip."""
        base = cls(input_size=128, in_channels=8, hidden_size=128, context_dim=192, depth=7,
                   num_heads=4, num_moe_layers=2, num_experts=4, moe_top_k=2,
                   temporal=TemporalConfig(block_size=32))
        return dataclasses.replace(base, **overrides)


@dataclass(frozen=True)
class VAEConfig:
    """Hunyuan3D 2.1 ``ShapeVAE`` (vecset VAE)."""

    num_latents: int = 4096
    embed_dim: int = 64
    width: int = 1024
    heads: int = 16
    num_decoder_layers: int = 16
    num_encoder_layers: int = 8
    pc_size: int = 81920
    pc_sharpedge_size: int = 0
    # Extra per-point features fed to the encoder after xyz. The released 2.1 config uses 4:
    # the surface normal (3) and a sharp-edge flag (1).
    point_feats: int = 4
    downsample_ratio: int = 20
    geo_decoder_downsample_ratio: int = 1
    geo_decoder_mlp_expand_ratio: int = 4
    geo_decoder_ln_post: bool = True
    num_freqs: int = 8
    include_pi: bool = False
    qkv_bias: bool = False
    qk_norm: bool = True
    label_type: str = "binary"
    scale_factor: float = 1.0039506158752403
    norm_eps: float = 1e-6  # block LayerNorms and the per-head q/k LayerNorms
    use_ln_post: bool = True  # official ShapeVAE argument: the encoder ends with a LayerNorm
    ln_post_eps: float = 1e-5  # encoder.ln_post / geo_decoder.ln_post are nn.LayerNorm defaults

    def __post_init__(self) -> None:
        _require(self.width % self.heads == 0,
                 f"VAEConfig.width ({self.width}) must be divisible by heads ({self.heads})")

    @property
    def fourier_dim(self) -> int:
        """Width of the Fourier embedding of a query point (sin and cos per frequency, plus xyz)."""
        return 3 * (2 * self.num_freqs + 1)

    @classmethod
    def full(cls, **overrides: Any) -> "VAEConfig":
        """The released ShapeVAE size (4096 latents x 64, width 1024, 16 decoder blocks), with ``overrides``."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "VAEConfig":
        """The same VAE at small widths, for tests; ``overrides`` replace fields."""
        base = cls(num_latents=64, embed_dim=8, width=64, heads=4, num_decoder_layers=2,
                   num_encoder_layers=1, pc_size=512, pc_sharpedge_size=0, downsample_ratio=8,
                   num_freqs=4)
        return dataclasses.replace(base, **overrides)

    @classmethod
    def demo(cls, **overrides: Any) -> "VAEConfig":
        """The embedded demo model's VAE. 1536 uniform + 512 sharp-edge points give integer
        latent shares (96 + 32), so FPS yields exactly ``num_latents`` queries."""
        base = cls(num_latents=128, embed_dim=8, width=128, heads=4, num_decoder_layers=3,
                   num_encoder_layers=1, pc_size=1536, pc_sharpedge_size=512, downsample_ratio=8,
                   num_freqs=8)
        return dataclasses.replace(base, **overrides)


@dataclass(frozen=True)
class ConditionerConfig:
    """DINOv2 image encoder (Hunyuan3D 2.1 uses DINOv2-Large without registers)."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    mlp_ratio: int = 4
    patch_size: int = 14
    image_size: int = 518
    layerscale_value: float = 1.0
    layer_norm_eps: float = 1e-6
    use_cls_token: bool = True

    @property
    def num_tokens(self) -> int:
        """Image tokens per image: the patch grid, plus CLS when it is kept."""
        return (self.image_size // self.patch_size) ** 2 + (1 if self.use_cls_token else 0)

    @classmethod
    def full(cls, **overrides: Any) -> "ConditionerConfig":
        """DINOv2-Large without registers (width 1024, 24 layers, patch 14, 518 px), with ``overrides``."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "ConditionerConfig":
        # head dim 64 like every DINOv2, so configs inferred from weights (heads = width / 64) round-trip
        """A small DINOv2 for tests (head dim 64 like every DINOv2); ``overrides`` replace fields."""
        base = cls(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                   image_size=56)
        return dataclasses.replace(base, **overrides)

    @classmethod
    def demo(cls, **overrides: Any) -> "ConditionerConfig":
        """The embedded demo model's image encoder: 112 px images, 8 x 8 patches + CLS."""
        base = cls(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, patch_size=14,
                   image_size=112)
        return dataclasses.replace(base, **overrides)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


# Configs read from a file are untrusted: a size far beyond any real model would make the first
# tensor allocation exhaust the machine before any weight is compared. Sizes are bounded here;
# everything that shapes a weight is then compared with the weights before a module is built.
SIZE_LIMIT = 1 << 16  # any int field (the full model's largest is 8192 wide, 4096 latents)
SIZE_LIMITS = {"pc_size": 1 << 21}  # fields that legitimately go higher


def _check_untrusted(cls: type, data: Any) -> dict[str, Any]:
    _require(isinstance(data, dict), f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    _require(not unknown, f"unknown {cls.__name__} fields: {sorted(unknown)}")
    for name, value in data.items():
        kind = str(known[name].type)
        if kind == "int":
            limit = SIZE_LIMITS.get(name, SIZE_LIMIT)
            low = 0 if known[name].default == 0 else 1  # a zero head count or patch divides by zero
            _require(isinstance(value, int) and not isinstance(value, bool) and low <= value <= limit,
                     f"{cls.__name__}.{name} must be an integer in [{low}, {limit}], got {value!r}")
        elif kind == "float":
            _require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                     and abs(value) <= 1e9, f"{cls.__name__}.{name} must be a finite number, got {value!r}")
        elif kind == "bool":
            _require(isinstance(value, bool), f"{cls.__name__}.{name} must be true or false, got {value!r}")
    return dict(data)


def dit_config_from_dict(data: dict[str, Any]) -> DiTConfig:
    """A :class:`DiTConfig` from its JSON form (``temporal`` nested); unknown fields, wrong types
    and sizes beyond :data:`SIZE_LIMIT` are an error (``ValueError`` naming the field)."""
    data = dict(data) if isinstance(data, dict) else data
    temporal = data.pop("temporal", None) if isinstance(data, dict) else None
    data = _check_untrusted(DiTConfig, data)
    if temporal is not None:
        data["temporal"] = TemporalConfig(**_check_untrusted(TemporalConfig, temporal))
    return DiTConfig(**data)


def simple_config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """An instance of the config dataclass ``cls`` from its JSON form; unknown fields, wrong types
    and sizes beyond :data:`SIZE_LIMIT` are an error (``ValueError`` naming the field)."""
    return cls(**_check_untrusted(cls, data))
