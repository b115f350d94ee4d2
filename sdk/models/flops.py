"""Compute planner: FLOPs of a Sculpt4D DiT forward and of a whole sampled sequence.

Conventions (printed with every report, SPEC section 3 "Compute model"):

* A multiply-accumulate is 2 FLOPs. A linear layer costs ``2 * tokens * in * out``.
* Attention costs ``4 * Nq * Nk * D_model`` summed over heads (QK^T and PV); softmax, norms,
  RoPE, GELU, biases and residual adds are not counted (they are O(tokens * width)).
* Spatial self-attention and all per-frame linears run on the 1 + P tokens of a frame (the
  timestep token included); temporal attention runs on the T * P latent tokens only.
* Cross-attention K/V projections of the L image tokens are counted once per frame.
* Sparse temporal attention costs ``density(T, schedule, anchor)`` x the full cost (whole
  blocks are computed or skipped).
* The MoE is counted as executed by the reference/eager path: gate + top-k routed experts +
  the shared expert. The export-friendly dense form runs every expert; its extra cost is
  reported separately (``moe_dense_extra``).
* "Per forward" is one sequence (batch 1) at one timestep; "per sequence" multiplies by
  ``steps`` x ``cfg_batch`` (2 with classifier-free guidance: cond + uncond).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import DiTConfig
from ..sparse import SparsePattern, resolve_schedule, schedule_name

CONVENTIONS = __doc__.split("Conventions (printed with every report, SPEC section 3 \"Compute model\"):")[1].strip()


@dataclass(frozen=True)
class FlopsReport:
    """FLOPs of the DiT per forward, sparse vs full temporal attention, split by part, with the
    ratios the paper reports; ``as_dict`` gives them with the counting conventions."""
    num_frames: int
    tokens_per_frame: int
    context_tokens: int
    schedule: tuple[int, ...]
    anchor: bool
    density: float
    steps: int
    cfg_batch: int
    # per forward (batch 1), FLOPs
    spatial_attention: float
    cross_attention: float
    temporal_attention_sparse: float
    temporal_attention_full: float
    linear: float
    moe: float
    moe_dense_extra: float

    @property
    def total_sparse(self) -> float:
        """FLOPs of one forward with block-sparse temporal attention."""
        return self.spatial_attention + self.cross_attention + self.temporal_attention_sparse + self.linear + self.moe

    @property
    def total_full(self) -> float:
        """FLOPs of one forward with full temporal attention."""
        return self.total_sparse - self.temporal_attention_sparse + self.temporal_attention_full

    @property
    def temporal_ratio(self) -> float:
        """Sparse / full temporal-attention FLOPs."""
        return self.temporal_attention_sparse / self.temporal_attention_full

    @property
    def network_ratio(self) -> float:
        """Sparse / full FLOPs of the whole network."""
        return self.total_sparse / self.total_full

    @property
    def per_sequence_factor(self) -> int:
        """Forwards per sequence: sampler steps x the CFG batch."""
        return self.steps * self.cfg_batch

    def as_dict(self) -> dict:
        """Every figure as JSON-ready numbers, plus per-sequence totals and the counting conventions."""
        d = asdict(self)
        d["schedule"] = list(self.schedule)
        d["schedule_name"] = schedule_name(self.schedule)
        d.update(total_sparse=self.total_sparse, total_full=self.total_full, temporal_ratio=self.temporal_ratio,
                 network_ratio=self.network_ratio,
                 per_sequence_sparse=self.total_sparse * self.per_sequence_factor,
                 per_sequence_full=self.total_full * self.per_sequence_factor,
                 conventions=CONVENTIONS)
        return d

    def table(self) -> str:
        """A plain-text table (TFLOPs) for humans."""
        f = self.per_sequence_factor
        rows = [
            ("spatial self-attention", self.spatial_attention, self.spatial_attention),
            ("cross-attention", self.cross_attention, self.cross_attention),
            ("temporal attention", self.temporal_attention_sparse, self.temporal_attention_full),
            ("linear layers", self.linear, self.linear),
            ("MoE (gate + top-k + shared)", self.moe, self.moe),
            ("total", self.total_sparse, self.total_full),
        ]
        name = schedule_name(self.schedule) or "custom"
        lines = [
            f"Sculpt4D DiT FLOPs: T={self.num_frames} frames x P={self.tokens_per_frame} tokens, "
            f"schedule {name} {list(self.schedule)}, anchor={'on' if self.anchor else 'off'}, "
            f"density {self.density:.4f}",
            f"{'component':<30}{'sparse/fwd':>14}{'full/fwd':>14}{'sparse/seq':>14}{'full/seq':>14}  (TFLOP)",
        ]
        for label, sparse, full in rows:
            lines.append(f"{label:<30}{sparse / 1e12:>14.2f}{full / 1e12:>14.2f}"
                         f"{sparse * f / 1e12:>14.1f}{full * f / 1e12:>14.1f}")
        lines += [
            f"temporal-attention ratio sparse/full: {self.temporal_ratio:.4f} (per layer and overall)",
            f"whole-network ratio sparse/full:      {self.network_ratio:.4f} "
            f"({(1 - self.network_ratio) * 100:.1f}% less compute)",
            f"per sequence = {self.steps} steps x {self.cfg_batch} (CFG batch)",
            f"MoE dense (export) form adds {self.moe_dense_extra / 1e12:.2f} TFLOP per forward",
            "",
            "Counting conventions:",
            CONVENTIONS,
        ]
        return "\n".join(lines)


def estimate_flops(cfg: DiTConfig | None = None, num_frames: int = 16,
                   schedule: str | tuple[int, ...] = "sculpt4d", anchor: bool = True, steps: int = 50,
                   cfg_batch: int = 2, context_tokens: int = 1370, tokens_per_frame: int | None = None,
                   block_size: int | None = None) -> FlopsReport:
    """FLOPs of one forward (batch 1) of ``cfg`` (default: the full released config)."""
    cfg = cfg or DiTConfig.full()
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    strides = resolve_schedule(schedule)
    P = tokens_per_frame or cfg.input_size
    bs = block_size or cfg.temporal.block_size
    pattern = SparsePattern.for_tokens(num_frames, P, bs, strides, anchor)
    T, C, Cc, L = num_frames, cfg.hidden_size, cfg.context_dim, context_tokens
    N = P + 1  # latent tokens + timestep token
    hidden = cfg.mlp_hidden
    depth = cfg.depth

    spatial = depth * T * 4 * N * N * C
    cross = depth * T * 4 * N * L * C
    temporal_full = depth * 4 * (T * P) ** 2 * C
    temporal_sparse = temporal_full * pattern.density()

    def lin(tokens: int, fan_in: int, fan_out: int) -> float:
        return 2.0 * tokens * fan_in * fan_out

    per_block_linear = (4 * lin(N, C, C)  # attn1 q, k, v, out
                        + 2 * lin(N, C, C) + 2 * lin(L, Cc, C)  # attn2 q, out; k, v
                        + 4 * lin(P, C, C))  # temporal q, k, v, out
    ffn = 2 * lin(N, C, hidden)  # fc1 + fc2
    n_moe = cfg.num_moe_layers
    n_skip = depth - (depth // 2 + 1)
    linear = T * (depth * per_block_linear + (depth - n_moe) * ffn + n_skip * lin(N, 2 * C, C)
                  + lin(P, cfg.in_channels, C) + lin(P, C, cfg.in_channels))
    linear += lin(1, C, 4 * C) + lin(1, 4 * C, C)  # timestep MLP, once per sequence
    moe = T * n_moe * (lin(N, C, cfg.num_experts) + (cfg.moe_top_k + 1) * ffn)
    moe_dense_extra = T * n_moe * (cfg.num_experts - cfg.moe_top_k) * ffn

    return FlopsReport(num_frames=T, tokens_per_frame=P, context_tokens=L, schedule=strides, anchor=anchor,
                       density=pattern.density(), steps=steps, cfg_batch=cfg_batch,
                       spatial_attention=float(spatial), cross_attention=float(cross),
                       temporal_attention_sparse=float(temporal_sparse),
                       temporal_attention_full=float(temporal_full), linear=float(linear), moe=float(moe),
                       moe_dense_extra=float(moe_dense_extra))
