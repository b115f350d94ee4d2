"""Sculpt4D DiT: the Hunyuan3D 2.1 shape DiT with a block-sparse temporal attention per block.

Reads top to bottom like SPEC sections 2-3:

    timestep token -> x_embedder -> 21 blocks (U-skips) -> final layer
    block = [skip merge] -> spatial self-attn -> cross-attn -> TEMPORAL attn -> FFN / MoE

All 3D parameters carry the official ``HunYuanDiTPlain`` state_dict names, so an official
checkpoint loads with ``strict=False`` and only the temporal keys are missing. Our temporal
keys (the Sculpt4D checkpoint format) are

    blocks.N.temporal_norm.{weight,bias}                 LayerNorm before the temporal attention
    blocks.N.temporal_attn.{to_q,to_k,to_v}.weight       (bias only if qkv_bias)
    blocks.N.temporal_attn.{q_norm,k_norm}.weight        RMSNorm per head
    blocks.N.temporal_attn.out_proj.{weight,bias}        zero-initialised

The temporal attention splits heads exactly like the spatial one (the Hunyuan3D
"concatenate then view" layout) so it can be initialised from a copy of ``attn1``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiTConfig, TemporalConfig
from ..sparse import SparsePattern, block_sparse_attention
from .rope import apply_rope, frame_rope_tables

# ======================================================================================
# Timestep token
# ======================================================================================


def sinusoidal_timestep_embedding(t: torch.Tensor, width: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[sin(t*f), cos(t*f)]`` with ``f_i = exp(-ln(max_period) * i / (width/2))``, on raw t."""
    half = width // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    angles = t.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoid of width ``hidden`` -> Linear(hidden, 4*hidden) -> GELU -> Linear(4*hidden, hidden)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.mlp = nn.Sequential(nn.Linear(hidden_size, 4 * hidden_size), nn.GELU(),
                                 nn.Linear(4 * hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = sinusoidal_timestep_embedding(t, self.hidden_size).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


# ======================================================================================
# Attention (Hunyuan3D head-split layout)
# ======================================================================================


def split_heads_concatenated(projections: list[torch.Tensor], num_heads: int) -> list[torch.Tensor]:
    """The Hunyuan3D head split: concatenate projections along channels, view as
    ``[.., heads, k*d]`` and split each head's slice into k parts of d.

    So head h of the first output takes concatenated channels ``[h*k*d, h*k*d + d)`` - not
    the h-th slice of the first projection. Returns ``[B, heads, N, d]`` tensors.
    """
    fused = torch.cat(projections, dim=-1)
    B, N, C = fused.shape
    per_head = C // num_heads
    parts = fused.view(B, N, num_heads, per_head).split(per_head // len(projections), dim=-1)
    return [p.transpose(1, 2) for p in parts]


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, d] -> [B, N, H*d]``."""
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, H * d)


class SpatialSelfAttention(nn.Module):
    """Per-frame self-attention over the 1 + P tokens of a frame (``attn1``)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim, self.num_heads = cfg.hidden_size, cfg.num_heads
        self.to_q = nn.Linear(dim, dim, bias=cfg.qkv_bias)
        self.to_k = nn.Linear(dim, dim, bias=cfg.qkv_bias)
        self.to_v = nn.Linear(dim, dim, bias=cfg.qkv_bias)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.out_proj = nn.Linear(dim, dim)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = split_heads_concatenated([self.to_q(x), self.to_k(x), self.to_v(x)], self.num_heads)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x)
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Per-frame cross-attention onto that frame's image tokens (``attn2``).

    q uses the plain head split; k and v use the concatenated split of ``[to_k(c), to_v(c)]``.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim, self.num_heads, self.head_dim = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        self.to_q = nn.Linear(dim, dim, bias=cfg.qkv_bias)
        self.to_k = nn.Linear(cfg.context_dim, dim, bias=cfg.qkv_bias)
        self.to_v = nn.Linear(cfg.context_dim, dim, bias=cfg.qkv_bias)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q = self.to_q(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = split_heads_concatenated([self.to_k(context), self.to_v(context)], self.num_heads)
        q, k = self.q_norm(q), self.k_norm(k)
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class TemporalBlockSparseAttention(SpatialSelfAttention):
    """Sculpt4D temporal attention over the T*P latent tokens of a sequence (frame-major).

    Same projections and head split as ``attn1``; RoPE by frame index on q and k (fp32);
    the block-sparse pattern of ``sdk.sparse``; ``out_proj`` starts at zero so a fresh
    module leaves a Hunyuan3D model's output unchanged.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__(cfg)
        self.temporal = cfg.temporal
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x [B, T*P, C]`` -> ``[B, T*P, C]``."""
        tc = self.temporal
        q, k, v = self.project(x)
        tokens_per_frame = x.shape[1] // num_frames
        cos, sin = frame_rope_tables(num_frames, tokens_per_frame, q.shape[-1], tc.rope_theta, x.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        pattern = SparsePattern.for_tokens(num_frames, tokens_per_frame, tc.block_size, tc.schedule, tc.anchor)
        out = block_sparse_attention(q, k, v, pattern, tc.block_size, backend=tc.attention_backend)
        return self.out_proj(merge_heads(out))


# ======================================================================================
# Feed-forward: MLP (blocks 0..14) and mixture of experts (blocks 15..20)
# ======================================================================================


class MLP(nn.Module):
    """``fc1`` -> exact GELU -> ``fc2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.gelu(self.fc1(x)))


class GELUProjection(nn.Module):
    """Linear then exact GELU, named ``proj`` like the diffusers FeedForward the experts use."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class Expert(nn.Module):
    """FeedForward with keys ``net.0.proj`` (in) and ``net.2`` (out); ``net.1`` is a no-op dropout."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(GELUProjection(dim, hidden), nn.Identity(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MoEGate(nn.Module):
    """softmax(x W^T) then top-k; the top-k weights are NOT renormalised (official numerics)."""

    def __init__(self, dim: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.weight = nn.Parameter(torch.empty(num_experts, dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = F.linear(x, self.weight).softmax(dim=-1)
        weight, index = torch.topk(scores, k=self.top_k, dim=-1)
        return index, weight


class MoEFeedForward(nn.Module):
    """8 routed experts (top-2) + 1 shared expert: ``sum_k w_k E_k(x) + S(x)``.

    Two implementations with the same result:
    * ``dispatch`` (eager default): each expert runs only on its routed tokens - the
      top-k FLOPs, but data-dependent shapes and a host sync.
    * ``dense`` (export / compile): every expert runs on every token and the outputs are
      weighted by a dense ``[tokens, experts]`` routing matrix that is zero off the top-k.
      Static shapes, no host sync; costs ``num_experts / top_k`` (= 4x) the routed FLOPs.
    """

    IMPLS = ("auto", "dispatch", "dense")

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.impl = "auto"
        self.gate = MoEGate(cfg.hidden_size, cfg.num_experts, cfg.moe_top_k)
        self.experts = nn.ModuleList(Expert(cfg.hidden_size, cfg.mlp_hidden) for _ in range(cfg.num_experts))
        self.shared_experts = Expert(cfg.hidden_size, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        index, weight = self.gate(flat)
        impl = self.impl
        if impl == "auto":
            tracing = torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            impl = "dense" if tracing else "dispatch"
        routed = self._dense(flat, index, weight) if impl == "dense" else self._dispatch(flat, index, weight)
        return (routed + self.shared_experts(flat)).view_as(x)

    def _dense(self, x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        routing = torch.zeros(x.shape[0], len(self.experts), dtype=weight.dtype, device=x.device)
        routing = routing.scatter(1, index, weight)  # [tokens, experts], zero off the top-k
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            out = out + expert(x) * routing[:, e:e + 1].to(x.dtype)
        return out

    def _dispatch(self, x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.nonzero(index == e, as_tuple=True)
            if token.numel() == 0:
                continue
            contribution = expert(x[token]) * weight[token, slot, None].to(x.dtype)
            out.index_add_(0, token, contribution)
        return out


# ======================================================================================
# Block and model
# ======================================================================================


class Sculpt4DBlock(nn.Module):
    """One DiT block (SPEC section 3): optional U-skip, spatial self-attention per frame,
    cross-attention to the frame's image tokens, temporal block-sparse attention across frames,
    then the FFN (an MoE in the last blocks)."""

    def __init__(self, cfg: DiTConfig, index: int):
        super().__init__()
        dim, eps = cfg.hidden_size, cfg.norm_eps
        self.has_skip = index > cfg.depth // 2
        if self.has_skip:
            self.skip_linear = nn.Linear(2 * dim, dim)
            self.skip_norm = nn.LayerNorm(dim, eps=eps)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn1 = SpatialSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.attn2 = CrossAttention(cfg)
        self.has_temporal = cfg.temporal.enabled
        if self.has_temporal:
            self.temporal_norm = nn.LayerNorm(dim, eps=eps)
            self.temporal_attn = TemporalBlockSparseAttention(cfg)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.use_moe = cfg.is_moe_block(index)
        if self.use_moe:
            self.moe = MoEFeedForward(cfg)
        else:
            self.mlp = MLP(dim, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int,
                skip: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B*T, 1+P, C]`` (timestep token first), ``context [B*T, L, Cc]``."""
        if self.has_skip:
            x = self.skip_norm(self.skip_linear(torch.cat([skip, x], dim=-1)))
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        if self.has_temporal:
            x = x + self._temporal(x, num_frames)
        h = self.norm3(x)
        return x + (self.moe(h) if self.use_moe else self.mlp(h))

    def _temporal(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Temporal attention over the latent tokens only: the timestep token (same in every
        frame) is left out and receives a zero update."""
        BT, N, C = x.shape
        latents = self.temporal_norm(x[:, 1:]).reshape(BT // num_frames, num_frames * (N - 1), C)
        update = self.temporal_attn(latents, num_frames).reshape(BT, N - 1, C)
        return F.pad(update, (0, 0, 1, 0))


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm_final = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.linear = nn.Linear(cfg.hidden_size, cfg.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm_final(x)[:, 1:])  # drop the timestep token


class FirstBlockCache:
    """Step cache of one sampling run (FBCache, as in ParaAttention / TeaCache): compares block
    0's residual with the one of the last fully evaluated step, and lets ``forward_cached`` reuse
    that step's residual of the remaining blocks when the relative L1 change is below
    ``threshold``, at most ``max_skips`` steps in a row. ``threshold = 0`` never reuses (every
    step bit-identical to ``forward``). Counts what it did in ``evaluated`` / ``reused``."""

    def __init__(self, threshold: float, max_skips: int = 2) -> None:
        if not threshold >= 0 or not math.isfinite(threshold):
            raise ValueError(f"step-cache threshold must be a finite number >= 0, got {threshold!r}")
        if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 0:
            raise ValueError(f"max_skips must be a non-negative integer, got {max_skips!r}")
        self.threshold, self.max_skips = float(threshold), max_skips
        self.first_residual: torch.Tensor | None = None
        self.rest_residual: torch.Tensor | None = None
        self.in_a_row = 0
        self.evaluated = 0
        self.reused = 0
        self.changes: list[float] = []  # relative change seen at every step after the first

    def reuse(self, first_residual: torch.Tensor) -> bool:
        """Whether this step may reuse the cached residual (and count it when so)."""
        if self.first_residual is None or self.first_residual.shape != first_residual.shape:
            return False
        now, before = first_residual.float(), self.first_residual.float()  # fp16 would round 1e-12 to 0
        change = float((now - before).abs().mean() / before.abs().mean().clamp_min(1e-12))
        if not math.isfinite(change):
            return False
        self.changes.append(change)
        if self.threshold > 0 and change < self.threshold and self.in_a_row < self.max_skips:
            self.in_a_row += 1
            self.reused += 1
            return True
        return False

    def store(self, first_residual: torch.Tensor, rest_residual: torch.Tensor) -> None:
        """Remember a fully evaluated step (the reference of the next comparisons)."""
        self.first_residual, self.rest_residual = first_residual, rest_residual
        self.in_a_row = 0
        self.evaluated += 1


class Sculpt4DDiT(nn.Module):
    """``forward(latents [B,T,P,C], t [B], context [B,T,L,Cc]) -> velocity [B,T,P,C]``."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg
        self.x_embedder = nn.Linear(cfg.in_channels, cfg.hidden_size)
        self.t_embedder = TimestepEmbedder(cfg.hidden_size)
        self.blocks = nn.ModuleList(Sculpt4DBlock(cfg, i) for i in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)

    @property
    def has_temporal(self) -> bool:
        """Whether the temporal modules run (False: per-frame Hunyuan3D)."""
        return self.config.temporal.enabled

    def set_moe_impl(self, impl: str) -> None:
        """``auto`` (dispatch in eager, dense under tracing/compile), ``dispatch`` or ``dense``."""
        if impl not in MoEFeedForward.IMPLS:
            raise ValueError(f"unknown MoE implementation {impl!r}; expected one of {MoEFeedForward.IMPLS}")
        for m in self.modules():
            if isinstance(m, MoEFeedForward):
                m.impl = impl

    @contextlib.contextmanager
    def export_mode(self, temporal: TemporalConfig | None = None) -> Iterator["Sculpt4DDiT"]:
        """Settings for tracing / ONNX export, restored on exit: ``temporal`` (schedule, anchor,
        block size) in place of the model's own, and the dense MoE (no data-dependent dispatch,
        which a traced graph cannot hold)."""
        saved_config = self.config
        attns = [b.temporal_attn for b in self.blocks if b.has_temporal]
        saved_temporal = [a.temporal for a in attns]
        moes = [m for m in self.modules() if isinstance(m, MoEFeedForward)]
        saved_impl = [m.impl for m in moes]
        try:
            if temporal is not None:
                self.config = dataclasses.replace(self.config, temporal=temporal)
                for attn in attns:
                    attn.temporal = temporal
            self.set_moe_impl("dense")
            yield self
        finally:
            self.config = saved_config
            for attn, value in zip(attns, saved_temporal):
                attn.temporal = value
            for moe, impl in zip(moes, saved_impl):
                moe.impl = impl

    def forward(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Velocity ``[B, T, P, C]`` of latents ``[B, T, P, C]`` at times ``t [B]`` in [0, 1], given
        image tokens ``context [B, T, tokens, width]`` (each frame attends its own frame's tokens)."""
        x, context, T = self.embed(latents, t, context)
        x, _ = self.run_blocks(x, context, T, 0, len(self.blocks), [])
        return self.final_layer(x).reshape(latents.shape)

    def embed(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor):
        """The blocks' input ``x [B*T, 1+P, hidden]`` (timestep token first), the context per
        frame ``[B*T, L, Cc]`` and the frame count T."""
        self._check_shapes(latents, t, context)
        B, T, P, C = latents.shape
        x = self.x_embedder(latents.reshape(B * T, P, C))
        t_token = self.t_embedder(t).repeat_interleave(T, dim=0)[:, None]  # one per frame
        x = torch.cat([t_token.to(x.dtype), x], dim=1)
        return x, context.reshape(B * T, *context.shape[2:]), T

    def run_blocks(self, x: torch.Tensor, context: torch.Tensor, num_frames: int, start: int, stop: int,
                   skips: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Blocks ``start .. stop-1`` on ``x``; ``skips`` holds the outputs of the first half's
        blocks run so far (the U-skips: block ``depth - 1 - i`` merges block ``i``'s output)."""
        depth = len(self.blocks)
        for i in range(start, stop):
            skip = skips.pop() if i > depth // 2 else None
            x = self.blocks[i](x, context, num_frames, skip)
            if i < depth // 2:
                skips.append(x)
        return x, skips

    def forward_cached(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                       cache: "FirstBlockCache") -> torch.Tensor:
        """``forward`` with first-block caching (FBCache): block 0 always runs; when its residual
        barely changed since the last full evaluation (``cache.reuse``), the other blocks' residual
        from that evaluation is added instead of running them. The decision covers the whole
        batch, so CFG's conditional and unconditional halves always skip together."""
        x, context, T = self.embed(latents, t, context)
        first, skips = self.run_blocks(x, context, T, 0, 1, [])
        first_residual = first - x
        if cache.reuse(first_residual):
            out = first + cache.rest_residual
        else:
            out, _ = self.run_blocks(first, context, T, 1, len(self.blocks), skips)
            cache.store(first_residual, out - first)
        return self.final_layer(out).reshape(latents.shape)

    def _check_shapes(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> None:
        cfg = self.config
        if latents.dim() != 4 or latents.shape[-1] != cfg.in_channels:
            raise ValueError(f"latents must be [B, T, P, {cfg.in_channels}], got {tuple(latents.shape)}")
        B, T, P, _ = latents.shape
        if t.shape != (B,):
            raise ValueError(f"t must be [B]=[{B}], got {tuple(t.shape)}")
        if context.dim() != 4 or context.shape[:2] != (B, T) or context.shape[-1] != cfg.context_dim:
            raise ValueError(f"context must be [B, T, L, {cfg.context_dim}] = [{B}, {T}, L, {cfg.context_dim}], "
                             f"got {tuple(context.shape)}")
        if self.has_temporal and P % cfg.temporal.block_size:
            raise ValueError(f"latent tokens per frame ({P}) must be a multiple of the temporal block size "
                             f"({cfg.temporal.block_size})")


# the public API; the building blocks above are named for the checkpoint layout and stay internal
__all__ = ["FirstBlockCache", "Sculpt4DDiT", "Sculpt4DBlock", "TemporalBlockSparseAttention", "sinusoidal_timestep_embedding", "split_heads_concatenated"]
