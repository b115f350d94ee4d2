"""Rotary position embedding by frame index (Sculpt4D temporal attention only).

For head dim d there are d/2 frequencies ``theta^(-2i/d)``; the angle of frame f is
``f * freq_i``. cos/sin are interleaved-and-duplicated along the channel axis
(``[c0, c0, c1, c1, ...]``) so adjacent channel pairs (2i, 2i+1) rotate together.
The rotation runs in float32 and is cast back (SPEC section 3).
"""

from __future__ import annotations

import torch


def frame_rope_tables(num_frames: int, tokens_per_frame: int, head_dim: int, theta: float = 10000.0,
                      device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(cos, sin)`` of shape ``[T*P, head_dim]`` for frame-major tokens."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    inv_freq = theta ** (-exponent)  # [d/2]
    frames = torch.arange(num_frames, dtype=torch.float32, device=device)
    angles = frames[:, None] * inv_freq[None, :]  # [T, d/2]
    angles = angles.repeat_interleave(2, dim=-1)  # [T, d], pairs duplicated
    angles = angles.repeat_interleave(tokens_per_frame, dim=0)  # [T*P, d]
    return angles.cos(), angles.sin()


def rotate_adjacent_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x[..., N, d]`` by tables ``[N, d]``; computed in fp32, returned in x's dtype."""
    xf = x.float()
    return (xf * cos + rotate_adjacent_pairs(xf) * sin).to(x.dtype)
