"""Hunyuan3D 2.1 shape VAE ("ShapeVAE", a vecset VAE), checkpoint-compatible.

The module tree mirrors the official one so ``state_dict()`` keys are exactly the
released ones (SPEC section 4)::

    encoder.input_proj, encoder.cross_attn.*, encoder.self_attn.resblocks.N.*, encoder.ln_post
    pre_kl, post_kl
    transformer.resblocks.N.{ln_1, attn.c_qkv, attn.c_proj, attn.attention.{q_norm,k_norm}, ln_2,
                             mlp.c_fc, mlp.c_proj}
    geo_decoder.{query_proj, cross_attn_decoder.*, ln_post, output_proj}

with a cross-attention block laid out as ``ln_1, ln_2, ln_3, attn.c_q, attn.c_kv, attn.c_proj,
attn.attention.{q_norm,k_norm}, mlp.c_fc, mlp.c_proj``.

Facts this file depends on (all from the official code):

* Fused projections are split PER HEAD: ``c_qkv`` output is viewed as ``[.., heads, 3*d]`` and
  each head's slice is ``[q | k | v]``; ``c_kv`` output as ``[.., heads, 2*d]`` with ``[k | v]``.
  The q/k norms are LayerNorms over the head dim (eps 1e-6, affine) applied after that split.
* Block LayerNorms use eps 1e-6; the two "post" LayerNorms (encoder and geometry decoder)
  use PyTorch's default eps 1e-5. The MLPs use exact (erf) GELU.
* Fourier features of a point ``p`` (3 coords, F frequencies ``2^0..2^(F-1)``):
  ``[p, sin(p_0 f_0..f_{F-1}), sin(p_1 f..), sin(p_2 f..), cos(p_0 f..), cos(p_1 f..), cos(p_2 f..)]``
  i.e. input first, then all sines, then all cosines, coordinate-major inside each.

Latent scaling: ``encode`` and ``decode`` work on UNSCALED latents, like the official model.
The pipeline multiplies encoded latents by ``scale_factor`` before handing them to the DiT and
divides sampled latents by ``scale_factor`` before ``decode``.

``decode``/``query``/``precompute_kv``/``query_with_kv`` only use static-shape tensor ops (no
host syncs, no branching on tensor values) so they export cleanly. ``encode`` does farthest
point sampling with a Python loop and is meant for eager use only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdk.models.config import ConfigError, VAEConfig

# Bounds of the log-variance, as in the official DiagonalGaussianDistribution.
LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


# --------------------------------------------------------------------------------------------
# Fourier features
# --------------------------------------------------------------------------------------------

class FourierEmbedder(nn.Module):
    """Sin/cos features of xyz at frequencies ``2^0 .. 2^(num_freqs-1)`` (times pi if asked).

    Holds no parameters or buffers: the official one keeps its frequencies in a
    non-persistent buffer, so nothing of it reaches the checkpoint.
    """

    def __init__(self, num_freqs: int, include_pi: bool, input_dim: int = 3) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        self.include_pi = include_pi
        self.input_dim = input_dim
        self.out_dim = input_dim * (2 * num_freqs + 1)

    def frequencies(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        powers = torch.arange(self.num_freqs, device=device, dtype=torch.float32)
        freqs = torch.pow(2.0, powers)
        if self.include_pi:
            freqs = freqs * math.pi
        return freqs.to(dtype)

    def forward(self, points: Tensor) -> Tensor:
        if self.num_freqs == 0:
            return points
        freqs = self.frequencies(points.device, points.dtype)
        # [..., 3, F] -> [..., 3*F]: coordinate-major, frequency-minor.
        angles = (points.unsqueeze(-1) * freqs).flatten(-2)
        return torch.cat([points, angles.sin(), angles.cos()], dim=-1)


# --------------------------------------------------------------------------------------------
# Attention building blocks
# --------------------------------------------------------------------------------------------

class HeadNorms(nn.Module):
    """Per-head LayerNorms of q and k (the official ``attn.attention`` submodule)."""

    def __init__(self, head_dim: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        if qk_norm:
            self.q_norm = nn.LayerNorm(head_dim, eps=eps)
            self.k_norm = nn.LayerNorm(head_dim, eps=eps)
        else:
            self.q_norm = nn.Identity()
            self.k_norm = nn.Identity()


def _merge_heads(x: Tensor) -> Tensor:
    """[B, H, N, d] -> [B, N, H*d]."""
    return x.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused, per-head interleaved ``c_qkv``."""

    def __init__(self, width: int, heads: int, qkv_bias: bool, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.c_qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.c_proj = nn.Linear(width, width)
        self.attention = HeadNorms(self.head_dim, qk_norm, eps)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        # Each head owns a contiguous [q | k | v] slice of 3*head_dim channels.
        qkv = self.c_qkv(x).view(batch, tokens, self.heads, 3 * self.head_dim)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        q = self.attention.q_norm(q)
        k = self.attention.k_norm(k)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.c_proj(_merge_heads(out))


class LatentKV(NamedTuple):
    """Keys and values of a cross-attention's data tokens, ``[B, heads, N, head_dim]`` each,
    with the key LayerNorm already applied. Computed once, reused for any number of queries."""

    key: Tensor
    value: Tensor


@dataclass(frozen=True)
class KeySelection:
    """Adaptive KV selection of the field decoder's cross-attention: each group of ``group``
    consecutive queries attends to its ``keys`` most relevant data tokens, chosen by every
    ``stride``-th query of the group (see ``CrossAttention.attend_selected``)."""

    keys: int
    group: int = 128
    stride: int = 8

    def __post_init__(self) -> None:
        for name in ("keys", "group", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"KeySelection.{name} must be a positive integer, got {value!r}")


class CrossAttention(nn.Module):
    """Multi-head cross-attention: ``c_q`` on the queries, fused per-head ``[k | v]`` ``c_kv``."""

    def __init__(self, width: int, heads: int, data_width: int, qkv_bias: bool, qk_norm: bool,
                 eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.c_q = nn.Linear(width, width, bias=qkv_bias)
        self.c_kv = nn.Linear(data_width, 2 * width, bias=qkv_bias)
        self.c_proj = nn.Linear(width, width)
        self.attention = HeadNorms(self.head_dim, qk_norm, eps)

    def project_kv(self, data: Tensor) -> LatentKV:
        batch, tokens, _ = data.shape
        # Each head owns a contiguous [k | v] slice of 2*head_dim channels.
        kv = self.c_kv(data).view(batch, tokens, self.heads, 2 * self.head_dim)
        k, v = kv.split(self.head_dim, dim=-1)
        k = self.attention.k_norm(k)
        return LatentKV(key=k.transpose(1, 2), value=v.transpose(1, 2))

    def attend(self, x: Tensor, kv: LatentKV, selection: "KeySelection | None" = None) -> Tensor:
        """Attention of queries ``x [B, M, width]`` to all data tokens, or with ``selection`` to
        the few tokens that matter to each group of queries (:meth:`attend_selected`)."""
        batch, tokens, _ = x.shape
        q = self.c_q(x).view(batch, tokens, self.heads, self.head_dim)
        q = self.attention.q_norm(q).transpose(1, 2)
        if selection is not None and selection.keys < kv.key.shape[2]:
            out = self.attend_selected(q, kv, selection)
        else:
            out = F.scaled_dot_product_attention(q, kv.key, kv.value)
        return self.c_proj(_merge_heads(out))

    @staticmethod
    def attend_selected(q: Tensor, kv: LatentKV, selection: "KeySelection") -> Tensor:
        """Adaptive KV selection (FlashVDM): queries ``q [B, H, M, D]`` in consecutive groups of
        ``selection.group`` (spatially close when the caller sorted them so); every
        ``selection.stride``-th query of a group scores all keys, and the whole group attends only
        to the ``selection.keys`` keys with the highest attention probability among them, per
        head. Equals full attention when ``keys`` covers every token; otherwise it drops the keys
        that carry little weight for that region of space."""
        B, H, M, D = q.shape
        P, k, size = kv.key.shape[2], selection.keys, selection.group
        if k > P:
            raise ValueError(f"KeySelection.keys ({k}) exceeds the {P} data tokens")
        groups = -(-M // size)
        padded = F.pad(q, (0, 0, 0, groups * size - M)).view(B, H, groups, size, D)
        probe = padded[:, :, :, ::selection.stride]  # [B, H, G, r, D]
        # ranked in fp32 (fp16 probabilities underflow); the zero rows padding the last group are
        # not probes (a zero query scores every key 1/P)
        weight = torch.einsum("bhgrd,bhpd->bhgrp", probe.float(), kv.key.float()).mul_(D ** -0.5).softmax(-1)
        real = (torch.arange(groups, device=q.device)[:, None] * size
                + torch.arange(0, size, selection.stride, device=q.device)[None]) < M  # [G, r]
        weight = weight.masked_fill(~real[None, None, :, :, None], 0).amax(3)
        index = weight.topk(k, dim=-1).indices[..., None].expand(B, H, groups, k, D)  # [B, H, G, k, D]
        key = kv.key[:, :, None].expand(B, H, groups, P, D).gather(3, index)
        value = kv.value[:, :, None].expand(B, H, groups, P, D).gather(3, index)
        # 4-D, so fused SDPA kernels apply (they take [batch, heads, tokens, dim] only)
        out = F.scaled_dot_product_attention(padded.reshape(B, H * groups, size, D),
                                             key.reshape(B, H * groups, k, D), value.reshape(B, H * groups, k, D))
        return out.view(B, H, groups * size, D)[:, :, :M]

    def forward(self, x: Tensor, data: Tensor) -> Tensor:
        return self.attend(x, self.project_kv(data))


class MLP(nn.Module):
    def __init__(self, width: int, expand_ratio: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, width * expand_ratio)
        self.c_proj = nn.Linear(width * expand_ratio, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact (erf) GELU, like nn.GELU()


class ResidualSelfAttentionBlock(nn.Module):
    """Pre-norm block: ``x += attn(ln_1(x)); x += mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, qkv_bias: bool, qk_norm: bool, eps: float,
                 mlp_expand_ratio: int = 4) -> None:
        super().__init__()
        self.attn = SelfAttention(width, heads, qkv_bias, qk_norm, eps)
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_expand_ratio)
        self.ln_2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ResidualCrossAttentionBlock(nn.Module):
    """Pre-norm block: ``x += attn(ln_1(x), ln_2(data)); x += mlp(ln_3(x))``."""

    def __init__(self, width: int, heads: int, qkv_bias: bool, qk_norm: bool, eps: float,
                 mlp_expand_ratio: int = 4, data_width: int | None = None) -> None:
        super().__init__()
        data_width = width if data_width is None else data_width
        self.attn = CrossAttention(width, heads, data_width, qkv_bias, qk_norm, eps)
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.ln_2 = nn.LayerNorm(data_width, eps=eps)
        self.ln_3 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_expand_ratio)

    def precompute_kv(self, data: Tensor) -> LatentKV:
        return self.attn.project_kv(self.ln_2(data))

    def forward_with_kv(self, x: Tensor, kv: LatentKV, selection: "KeySelection | None" = None) -> Tensor:
        x = x + self.attn.attend(self.ln_1(x), kv, selection)
        return x + self.mlp(self.ln_3(x))

    def forward(self, x: Tensor, data: Tensor) -> Tensor:
        return self.forward_with_kv(x, self.precompute_kv(data))


class Transformer(nn.Module):
    """A stack of self-attention blocks (official names: ``resblocks.N``)."""

    def __init__(self, width: int, heads: int, layers: int, qkv_bias: bool, qk_norm: bool,
                 eps: float) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            [ResidualSelfAttentionBlock(width, heads, qkv_bias, qk_norm, eps) for _ in range(layers)]
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


# --------------------------------------------------------------------------------------------
# Geometry decoder
# --------------------------------------------------------------------------------------------

class GeometryDecoder(nn.Module):
    """Maps query points to a scalar field (positive inside, iso-level 0) by cross-attending
    the decoded latents.

    ``precompute_kv(decoded)`` does all the per-frame work on the latents once;
    ``query_with_kv(kv, xyz)`` then evaluates any number of xyz chunks against it.
    """

    def __init__(self, cfg: VAEConfig, fourier: FourierEmbedder) -> None:
        super().__init__()
        ratio = cfg.geo_decoder_downsample_ratio
        width = cfg.width // ratio
        heads = cfg.heads // ratio
        self.fourier_embedder = fourier
        self.query_proj = nn.Linear(fourier.out_dim, width)
        if ratio != 1:
            self.latents_proj = nn.Linear(cfg.width, width)
        else:
            self.latents_proj = None
        # The official decoder drops the q/k norms when it has no final LayerNorm.
        qk_norm = cfg.qk_norm and cfg.geo_decoder_ln_post
        self.cross_attn_decoder = ResidualCrossAttentionBlock(
            width, heads, cfg.qkv_bias, qk_norm, cfg.norm_eps,
            mlp_expand_ratio=cfg.geo_decoder_mlp_expand_ratio,
        )
        self.ln_post = nn.LayerNorm(width, eps=cfg.ln_post_eps) if cfg.geo_decoder_ln_post else None
        self.output_proj = nn.Linear(width, 1)

    def precompute_kv(self, decoded: Tensor) -> LatentKV:
        """``decoded [B, P, width]`` (the output of ``ShapeVAE.decode``) -> keys/values."""
        if self.latents_proj is not None:
            decoded = self.latents_proj(decoded)
        return self.cross_attn_decoder.precompute_kv(decoded)

    def query_with_kv(self, kv: LatentKV, xyz: Tensor, selection: "KeySelection | None" = None) -> Tensor:
        """Field at ``xyz [B, M, 3]`` (or ``[M, 3]`` / ``[1, M, 3]``, shared by the batch) -> ``[B, M]``;
        ``selection``: adaptive KV selection in the cross-attention (``None``: every token)."""
        if xyz.dim() == 2:
            xyz = xyz.unsqueeze(0)
        xyz = xyz.expand(kv.key.shape[0], -1, -1)
        features = self.fourier_embedder(xyz).to(self.query_proj.weight.dtype)
        x = self.query_proj(features)
        x = self.cross_attn_decoder.forward_with_kv(x, kv, selection)
        if self.ln_post is not None:
            x = self.ln_post(x)
        return self.output_proj(x).squeeze(-1)

    def forward(self, decoded: Tensor, xyz: Tensor) -> Tensor:
        """The field at query points ``xyz [B, N, 3]`` of decoded latents ``[B, L, width]``."""
        return self.query_with_kv(self.precompute_kv(decoded), xyz)


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------

class PointSelection(NamedTuple):
    """Which surface points the encoder uses, as indices into the surface's point axis.

    ``input_index [N_in]`` (shared by the batch, like the official random permutation): the
    points whose features become the cross-attention keys/values.
    ``query_index [B or 1, num_latents]``: the farthest-point-sampled points that become the
    latent queries, in selection order (this order is the latent token order).

    Sculpt4D reuses frame 0's selection for every frame so latent token k means the same
    surface point in all frames (SPEC section 3).
    """

    input_index: Tensor
    query_index: Tensor


def _generator_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def farthest_point_sampling(points: Tensor, num_samples: int, start_index: Tensor) -> Tensor:
    """Greedy farthest point sampling, per batch element.

    ``points [B, n, 3]``, ``start_index [B]`` -> indices ``[B, num_samples]`` in selection order.
    Step i picks the point whose squared distance to the already chosen set is largest (first
    index on ties), the same greedy rule as torch_cluster's ``fps`` the official code calls.
    Distances are computed in float32. Deterministic given ``start_index``.
    """
    batch, count, _ = points.shape
    points = points.float()
    rows = torch.arange(batch, device=points.device)
    chosen = torch.empty(batch, num_samples, dtype=torch.long, device=points.device)
    nearest = torch.full((batch, count), float("inf"), device=points.device)
    current = start_index.to(points.device)
    for step in range(num_samples):
        chosen[:, step] = current
        offset = points - points[rows, current].unsqueeze(1)
        nearest = torch.minimum(nearest, offset.square().sum(-1))
        current = nearest.argmax(dim=1)
    return chosen


def _fps_count(num_points: int, ratio: float) -> int:
    """How many points torch_cluster's ``fps`` keeps: ``ceil(n * ratio)`` in float32."""
    product = torch.tensor(float(num_points), dtype=torch.float32) * torch.tensor(ratio, dtype=torch.float32)
    return int(torch.ceil(product).item())


class PointEncoder(nn.Module):
    """Surface points -> latent tokens (official ``PointCrossAttentionEncoder``).

    The surface holds ``pc_size`` uniformly sampled points followed by ``pc_sharpedge_size``
    sharp-edge points. For each part the official code keeps a random subset of
    ``downsample_ratio * (its share of num_latents)`` points as the key/value data, and picks the
    latent queries from that subset with farthest point sampling (random start point).
    Queries and data are embedded the same way (``input_proj([fourier(xyz), feats])``); the
    queries cross-attend the data once, then go through ``num_encoder_layers`` self-attention
    blocks and a final LayerNorm.
    """

    def __init__(self, cfg: VAEConfig, fourier: FourierEmbedder) -> None:
        super().__init__()
        self.config = cfg
        self.fourier_embedder = fourier
        self.input_proj = nn.Linear(fourier.out_dim + cfg.point_feats, cfg.width)
        self.cross_attn = ResidualCrossAttentionBlock(cfg.width, cfg.heads, cfg.qkv_bias, cfg.qk_norm,
                                                      cfg.norm_eps)
        if cfg.num_encoder_layers > 0:
            self.self_attn = Transformer(cfg.width, cfg.heads, cfg.num_encoder_layers, cfg.qkv_bias,
                                         cfg.qk_norm, cfg.norm_eps)
        else:
            self.self_attn = None
        self.ln_post = nn.LayerNorm(cfg.width, eps=cfg.ln_post_eps) if cfg.use_ln_post else None

    @property
    def num_surface_points(self) -> int:
        return self.config.pc_size + self.config.pc_sharpedge_size

    def _select_part(self, xyz: Tensor, offset: int, part_size: int, num_queries: float,
                     generator: torch.Generator | None, random_start: bool) -> tuple[Tensor, Tensor]:
        """Random subset + FPS queries for one part of the surface (uniform or sharp-edge)."""
        batch = xyz.shape[0]
        num_inputs = int(num_queries * self.config.downsample_ratio)
        if num_inputs == 0:
            empty = torch.zeros(0, dtype=torch.long, device=xyz.device)
            return empty, empty.view(1, 0).expand(batch, 0)
        gen_device = _generator_device(generator, xyz.device)
        subset = torch.randperm(part_size, generator=generator, device=gen_device)[:num_inputs]
        subset = subset.to(xyz.device) + offset
        num_fps = _fps_count(num_inputs, num_queries / num_inputs)
        if random_start:
            start = torch.randint(num_inputs, (batch,), generator=generator, device=gen_device)
        else:
            start = torch.zeros(batch, dtype=torch.long)
        local = farthest_point_sampling(xyz[:, subset], num_fps, start.to(xyz.device))
        return subset, subset[local]

    @torch.no_grad()
    def select_points(self, surface: Tensor, generator: torch.Generator | None = None,
                      random_start: bool = True) -> PointSelection:
        """Choose the data points and FPS latent queries of ``surface [B, N, 3 + point_feats]``."""
        cfg = self.config
        if surface.shape[1] != self.num_surface_points:
            raise ValueError(f"surface has {surface.shape[1]} points, the encoder expects "
                             f"pc_size + pc_sharpedge_size = {self.num_surface_points}")
        xyz = surface[..., :3]
        # Float shares of the latents, as the official code computes them.
        uniform_queries = cfg.pc_size / self.num_surface_points * cfg.num_latents
        sharp_queries = cfg.num_latents - uniform_queries
        uniform_in, uniform_q = self._select_part(xyz, 0, cfg.pc_size, uniform_queries, generator,
                                                  random_start)
        sharp_in, sharp_q = self._select_part(xyz, cfg.pc_size, cfg.pc_sharpedge_size, sharp_queries,
                                              generator, random_start)
        return PointSelection(input_index=torch.cat([uniform_in, sharp_in]),
                              query_index=torch.cat([uniform_q, sharp_q], dim=1))

    def _embed(self, points: Tensor) -> Tensor:
        xyz, feats = points[..., :3], points[..., 3:]
        features = torch.cat([self.fourier_embedder(xyz), feats], dim=-1)
        return self.input_proj(features.to(self.input_proj.weight.dtype))

    def forward(self, surface: Tensor, selection: PointSelection) -> Tensor:
        """``surface [B, N, 3 + point_feats]`` -> latent features ``[B, num_latents, width]``."""
        batch = surface.shape[0]
        data = surface[:, selection.input_index]
        query_index = selection.query_index.expand(batch, -1)
        queries = torch.gather(surface, 1, query_index.unsqueeze(-1).expand(-1, -1, surface.shape[-1]))
        latents = self.cross_attn(self._embed(queries), self._embed(data))
        if self.self_attn is not None:
            latents = self.self_attn(latents)
        if self.ln_post is not None:
            latents = self.ln_post(latents)
        return latents


# --------------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------------

class ShapeVAE(nn.Module):
    """Hunyuan3D 2.1 ShapeVAE with the official module names (see the module docstring)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ratio = cfg.geo_decoder_downsample_ratio
        if cfg.width % ratio or cfg.heads % ratio:
            raise ConfigError(f"VAEConfig.geo_decoder_downsample_ratio ({ratio}) must divide width "
                              f"({cfg.width}) and heads ({cfg.heads})")
        self.config = cfg
        # Latents are scaled by this for the DiT; the model itself never applies it.
        self.scale_factor = cfg.scale_factor
        fourier = FourierEmbedder(cfg.num_freqs, cfg.include_pi)
        self.fourier_embedder = fourier
        self.encoder = PointEncoder(cfg, fourier)
        self.pre_kl = nn.Linear(cfg.width, 2 * cfg.embed_dim)
        self.post_kl = nn.Linear(cfg.embed_dim, cfg.width)
        self.transformer = Transformer(cfg.width, cfg.heads, cfg.num_decoder_layers, cfg.qkv_bias,
                                       cfg.qk_norm, cfg.norm_eps)
        self.geo_decoder = GeometryDecoder(cfg, fourier)

    # -- decoding (export path) --------------------------------------------------------------

    def decode(self, latents: Tensor) -> Tensor:
        """Unscaled latents ``[B, P, embed_dim]`` -> decoded latents ``[B, P, width]``."""
        return self.transformer(self.post_kl(latents))

    def forward(self, latents: Tensor) -> Tensor:
        # The official ShapeVAE.forward is its decode.
        """Same as :meth:`decode` (the official ``ShapeVAE.forward`` is its decode)."""
        return self.decode(latents)

    def query(self, decoded: Tensor, xyz: Tensor) -> Tensor:
        """Field values ``[B, M]`` at ``xyz [B, M, 3]`` for decoded latents ``[B, P, width]``."""
        return self.geo_decoder(decoded, xyz)

    # -- encoding (eager only) ---------------------------------------------------------------

    def encode(self, surface: Tensor, sample_posterior: bool = True,
               generator: torch.Generator | None = None, *,
               selection: PointSelection | None = None, noise: Tensor | None = None) -> Tensor:
        """Surface samples ``[B, pc_size + pc_sharpedge_size, 3 + point_feats]`` -> unscaled
        latents ``[B, num_latents, embed_dim]`` (posterior sample, or its mean).

        ``generator`` drives the point subset, the FPS start points and the posterior noise, so
        a fixed generator gives a fixed result. Pass ``selection`` (from
        ``encoder.select_points``) and/or ``noise [B or 1, num_latents, embed_dim]`` to reuse
        them across frames.
        """
        if selection is None:
            selection = self.encoder.select_points(surface, generator)
        mean, logvar = self.posterior(surface, selection)
        if not sample_posterior:
            return mean
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator,
                                device=_generator_device(generator, mean.device))
        return mean + torch.exp(0.5 * logvar) * noise.to(device=mean.device, dtype=mean.dtype)

    def posterior(self, surface: Tensor, selection: PointSelection) -> tuple[Tensor, Tensor]:
        """Mean and clamped log-variance ``[B, num_latents, embed_dim]`` of the diagonal Gaussian
        posterior (training needs both for the KL term)."""
        mean, logvar = self.pre_kl(self.encoder(surface, selection)).chunk(2, dim=-1)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


# the public API; the building blocks above are named for the checkpoint layout and stay internal
__all__ = ["ShapeVAE", "GeometryDecoder", "KeySelection", "LatentKV", "PointSelection", "farthest_point_sampling"]
