"""ImageConditioner: official checkpoint names, token count, equality with a plain Dinov2Model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model

from sdk.models.config import ConditionerConfig
from sdk.models.conditioner import ImageConditioner

PREFIX = "main_image_encoder.model."

# Per-layer names of the official checkpoint (written by transformers 4.x) with their shapes,
# as functions of (hidden, mlp hidden).
LAYER_KEYS = {
    "norm1.weight": lambda h, m: (h,),
    "norm1.bias": lambda h, m: (h,),
    "attention.attention.query.weight": lambda h, m: (h, h),
    "attention.attention.query.bias": lambda h, m: (h,),
    "attention.attention.key.weight": lambda h, m: (h, h),
    "attention.attention.key.bias": lambda h, m: (h,),
    "attention.attention.value.weight": lambda h, m: (h, h),
    "attention.attention.value.bias": lambda h, m: (h,),
    "attention.output.dense.weight": lambda h, m: (h, h),
    "attention.output.dense.bias": lambda h, m: (h,),
    "layer_scale1.lambda1": lambda h, m: (h,),
    "norm2.weight": lambda h, m: (h,),
    "norm2.bias": lambda h, m: (h,),
    "mlp.fc1.weight": lambda h, m: (m, h),
    "mlp.fc1.bias": lambda h, m: (m,),
    "mlp.fc2.weight": lambda h, m: (h, m),
    "mlp.fc2.bias": lambda h, m: (h,),
    "layer_scale2.lambda1": lambda h, m: (h,),
}

# Official name fragment -> name fragment of the installed transformers (identity on 4.x).
NEW_TRANSFORMERS_NAMES = {
    ".attention.attention.query.": ".attention.q_proj.",
    ".attention.attention.key.": ".attention.k_proj.",
    ".attention.attention.value.": ".attention.v_proj.",
    ".attention.output.dense.": ".attention.o_proj.",
}


def expected_shapes(cfg: ConditionerConfig) -> dict[str, tuple[int, ...]]:
    h, m = cfg.hidden_size, cfg.hidden_size * cfg.mlp_ratio
    grid = cfg.image_size // cfg.patch_size
    shapes = {
        "embeddings.cls_token": (1, 1, h),
        "embeddings.mask_token": (1, h),
        "embeddings.position_embeddings": (1, grid * grid + 1, h),
        "embeddings.patch_embeddings.projection.weight": (h, 3, cfg.patch_size, cfg.patch_size),
        "embeddings.patch_embeddings.projection.bias": (h,),
        "layernorm.weight": (h,),
        "layernorm.bias": (h,),
    }
    for i in range(cfg.num_hidden_layers):
        for name, shape in LAYER_KEYS.items():
            shapes[f"encoder.layer.{i}.{name}"] = shape(h, m)
    return {PREFIX + k: v for k, v in shapes.items()}


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _images(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen) + (1.0 if p.dim() == 1 else 0.0))


@pytest.fixture(scope="module")
def tiny():
    cond = ImageConditioner(ConditionerConfig.tiny()).eval()
    _randomise(cond, seed=0)
    return cond


def test_tiny_state_dict_has_official_names(tiny):
    assert _shapes(tiny) == expected_shapes(tiny.config)


def test_full_state_dict_has_official_names_and_shapes():
    cfg = ConditionerConfig.full()
    with torch.device("meta"):
        cond = ImageConditioner(cfg)
    shapes = _shapes(cond)
    assert shapes == expected_shapes(cfg)
    assert shapes[PREFIX + "embeddings.position_embeddings"] == (1, 1370, 1024)
    assert shapes[PREFIX + "encoder.layer.23.mlp.fc1.weight"] == (4096, 1024)
    assert all(k.startswith(PREFIX) for k in shapes)


def test_token_count(tiny):
    cfg = tiny.config
    tokens = tiny(_images(2, cfg.image_size, seed=1))
    assert tokens.shape == (2, 1 + (cfg.image_size // 14) ** 2, cfg.hidden_size) == (2, 17, 128)
    assert tiny.num_tokens == 17
    assert ConditionerConfig.full().num_tokens == 1370


def test_output_equals_plain_dinov2(tiny):
    cfg = tiny.config
    reference = Dinov2Model(Dinov2Config(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, mlp_ratio=cfg.mlp_ratio, patch_size=cfg.patch_size,
        image_size=cfg.image_size, layer_norm_eps=1e-6, layerscale_value=1.0, hidden_act="gelu",
        qkv_bias=True, use_swiglu_ffn=False,
    )).eval()
    uses_new_names = any(".attention.q_proj." in key for key in reference.state_dict())
    converted = {}
    for key, value in tiny.state_dict().items():
        name = key[len(PREFIX):]
        if uses_new_names:
            for old, new in NEW_TRANSFORMERS_NAMES.items():
                name = name.replace(old, new)
        converted[name] = value
    reference.load_state_dict(converted, strict=True)
    images = _images(2, cfg.image_size, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(tiny(images), reference(pixel_values=images).last_hidden_state,
                                   atol=0, rtol=0)


def test_without_cls_token(tiny):
    cfg = ConditionerConfig.tiny(use_cls_token=False)
    cond = ImageConditioner(cfg).eval()
    cond.load_state_dict(tiny.state_dict())
    images = _images(1, cfg.image_size, seed=3)
    with torch.no_grad():
        tokens = cond(images)
        assert tokens.shape == (1, 16, cfg.hidden_size)
        torch.testing.assert_close(tokens, tiny(images)[:, 1:])


def test_load_official_names_roundtrip(tiny):
    other = ImageConditioner(ConditionerConfig.tiny())
    missing, unexpected = other.load_state_dict(tiny.state_dict(), strict=True)
    assert not missing and not unexpected
    for key, value in tiny.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)
    # A wrong name is still refused.
    bad = dict(tiny.state_dict())
    bad[PREFIX + "encoder.layer.0.attention.attention.queryX.weight"] = bad.pop(
        PREFIX + "encoder.layer.0.attention.attention.query.weight")
    with pytest.raises(RuntimeError, match="queryX"):
        other.load_state_dict(bad, strict=True)


def test_unconditional_is_zeros(tiny):
    tokens = tiny(_images(2, tiny.config.image_size, seed=4))
    uncond = tiny.unconditional(tokens)
    assert uncond.shape == tokens.shape and uncond.dtype == tokens.dtype
    assert torch.count_nonzero(uncond) == 0
    assert torch.count_nonzero(tokens) > 0


def test_prepare_matches_official_transform(tiny):
    size = tiny.config.image_size
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(5)) * 2 - 1
    got = tiny.prepare(images)
    unit = (images + 1) / 2
    resized = F.interpolate(unit, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(got, (resized - mean) / std)
    assert got.shape == (2, 3, size, size)
