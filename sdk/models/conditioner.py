"""Image conditioner: DINOv2 image tokens for the DiT's cross-attention (SPEC section 5).

Checkpoint layout (the ``conditioner`` part of the official ``model.fp16.ckpt``): the
official ``SingleImageEncoder`` holds ``main_image_encoder`` (a ``DinoImageEncoder``) whose
``model`` is a Hugging Face ``Dinov2Model``; the image transform has no weights. So every key
is ``main_image_encoder.model.<Dinov2Model key>``, with the names transformers 4.x used when
the checkpoint was written::

    embeddings.{cls_token, mask_token, position_embeddings, patch_embeddings.projection.*}
    encoder.layer.N.{norm1, attention.attention.{query,key,value}, attention.output.dense,
                     layer_scale1.lambda1, norm2, mlp.fc1, mlp.fc2, layer_scale2.lambda1}
    layernorm

Newer transformers renamed the attention projections (``attention.{q,k,v,o}_proj``). The
encoder translates between the two naming schemes in ``state_dict()``/``load_state_dict()``,
so checkpoints always see the official names whatever transformers is installed.

The model is always built from a config with random weights; nothing is downloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Dinov2Config, Dinov2Model

from sdk.models.config import ConditionerConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (name inside a newer transformers Dinov2Model, name in the official checkpoint)
_ATTENTION_RENAMES = (
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
)


def dinov2_config(cfg: ConditionerConfig) -> Dinov2Config:
    """The ``Dinov2Config`` of the released conditioner (DINOv2 without registers), sized by ``cfg``."""
    return Dinov2Config(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        mlp_ratio=cfg.mlp_ratio,
        patch_size=cfg.patch_size,
        image_size=cfg.image_size,
        num_channels=3,
        layerscale_value=cfg.layerscale_value,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act="gelu",
        qkv_bias=True,
        use_swiglu_ffn=False,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
    )


def _rename_keys(state_dict: dict, prefix: str, renames: tuple[tuple[str, str], ...]) -> None:
    """Rename, in place and in order, the keys under ``prefix`` by substring substitution."""
    keys = [key for key in state_dict if key.startswith(prefix)]
    for key in keys:
        value = state_dict.pop(key)
        new_key = key
        for old, new in renames:
            new_key = new_key.replace(old, new)
        state_dict[new_key] = value


class DinoImageEncoder(nn.Module):
    """Holds the ``Dinov2Model`` as ``.model`` (official nesting) and maps its key names."""

    def __init__(self, cfg: ConditionerConfig) -> None:
        super().__init__()
        self.model = Dinov2Model(dinov2_config(cfg))
        self.model.eval()
        self.model.requires_grad_(False)
        native_names = {name for name, _ in self.model.named_parameters()}
        if any(".attention.q_proj." in f".{name}" for name in native_names):
            to_official = _ATTENTION_RENAMES
        else:  # transformers that still uses the official names: nothing to translate
            to_official = ()
        self._to_official = to_official
        self._to_native = tuple((official, native) for native, official in to_official)
        self.register_state_dict_post_hook(self._state_dict_to_official)
        self.register_load_state_dict_pre_hook(self._state_dict_to_native)

    @staticmethod
    def _state_dict_to_official(module: "DinoImageEncoder", state_dict: dict, prefix: str,
                                local_metadata: dict) -> None:
        _rename_keys(state_dict, prefix + "model.", module._to_official)

    @staticmethod
    def _state_dict_to_native(module: "DinoImageEncoder", state_dict: dict, prefix: str,
                              local_metadata: dict, strict: bool, missing_keys: list,
                              unexpected_keys: list, error_msgs: list) -> None:
        _rename_keys(state_dict, prefix + "model.", module._to_native)

    def forward(self, images: Tensor) -> Tensor:
        """DINOv2's ``last_hidden_state`` (CLS + patch tokens) of normalised images."""
        return self.model(pixel_values=images).last_hidden_state


class ImageConditioner(nn.Module):
    """DINOv2 image tokens: ``images [B, 3, S, S]`` (ImageNet-normalised) -> ``[B, tokens, hidden]``.

    ``tokens = 1 + (S / patch)^2`` with the CLS token (``use_cls_token``), else ``(S / patch)^2``.
    The output is ``Dinov2Model.last_hidden_state``, which already includes DINOv2's final
    LayerNorm; the official encoder applies nothing after it. Images are cast to the weights'
    dtype first, as the official encoder does.
    """

    def __init__(self, cfg: ConditionerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.main_image_encoder = DinoImageEncoder(cfg)

    @property
    def num_tokens(self) -> int:
        """Image tokens per image (see :attr:`ConditionerConfig.num_tokens`)."""
        return self.config.num_tokens

    def forward(self, images: Tensor) -> Tensor:
        """Context tokens ``[N, tokens, width]`` of preprocessed images (see :func:`prepare_images`)."""
        dtype = self.main_image_encoder.model.embeddings.cls_token.dtype
        tokens = self.main_image_encoder(images.to(dtype))
        if not self.config.use_cls_token:
            tokens = tokens[:, 1:]
        return tokens

    @staticmethod
    def unconditional(tokens: Tensor) -> Tensor:
        """The unconditional context for classifier-free guidance: zeros like ``tokens``."""
        return torch.zeros_like(tokens)

    def prepare(self, images: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
        """``prepare_images`` at this encoder's image size."""
        return prepare_images(images, self.config.image_size, value_range)


def prepare_images(images: Tensor, size: int, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """The official encoder's own transform, for images ``[B, 3, H, W]`` in ``value_range``.

    Rescale to [0, 1]; resize the short side to ``size`` (bilinear, no antialias, half-pixel
    centres); centre-crop to ``size``; ImageNet-normalise. The pipeline hands it 512 x 512
    images in [-1, 1], so this is a 512 -> 518 resize. (A free function so runtimes without
    the torch encoder - ONNX Runtime, TensorRT - preprocess identically.)
    """
    low, high = value_range
    images = (images - low) / (high - low)
    height, width = images.shape[-2:]
    # Short side to `size`, long side scaled and truncated (torchvision's Resize(int) rule).
    if height <= width:
        new_height, new_width = size, int(size * width / height)
    else:
        new_height, new_width = int(size * height / width), size
    images = F.interpolate(images, size=(new_height, new_width), mode="bilinear",
                           align_corners=False, antialias=False)
    top = int(round((new_height - size) / 2.0))
    left = int(round((new_width - size) / 2.0))
    images = images[..., top:top + size, left:left + size]
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


# the public API; the building blocks above are named for the checkpoint layout and stay internal
__all__ = ["ImageConditioner", "DinoImageEncoder", "dinov2_config", "prepare_images"]
