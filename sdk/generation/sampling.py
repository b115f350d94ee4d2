"""Flow-matching Euler sampler with classifier-free guidance (Hunyuan3D 2.1 conventions).

``x_t = t * x1 + (1 - t) * noise`` (t = 0 noise, t = 1 data); the model predicts the velocity.
Sigmas are ``linspace(0, 1, steps)`` with a final 1 appended and each step does
``x += (s_next - s) * v`` in fp32 (SPEC section 5). The official loop also evaluates the
model on the last interval, where ``s_next - s = 0``; we skip that evaluation, which leaves the
result bit-identical and saves one forward per sequence.

CFG: conditional and unconditional branches run as one batch ``[cond, uncond]``, combined as
``uncond + w * (cond - uncond)``; the unconditional context is zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .settings import NOISE_MODES  # one home, torch-free for the CLIs

# velocity = model(latents [B,T,P,C], t [B], context [B,T,L,Cc])
VelocityModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerSettings:
    """Settings of the flow-matching sampler: Euler ``steps``, classifier-free ``guidance``
    (``uncond + w * (cond - uncond)``), ``noise`` (``shared`` by all frames or ``independent``) and ``seed``."""
    steps: int = 50
    guidance: float = 5.0
    noise: str = "shared"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {self.noise!r}")


def flow_sigmas(steps: int) -> torch.Tensor:
    """``linspace(0, 1, steps)`` then 1 appended: ``steps + 1`` float32 values."""
    return torch.cat([torch.linspace(0.0, 1.0, steps), torch.ones(1)])


def initial_noise(shape: tuple[int, int, int, int], mode: str, seed: int) -> torch.Tensor:
    """fp32 CPU noise ``[B, T, P, C]`` from ``torch.Generator().manual_seed(seed)`` (same values on
    every device). ``shared``: one ``[B, 1, P, C]`` draw repeated over frames (token k of every
    frame starts from the same noise, matching the shared-noise VAE latents); ``independent``:
    one draw per frame."""
    if mode not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES}, got {mode!r}")
    B, T, P, C = shape
    gen = torch.Generator().manual_seed(int(seed))
    if mode == "shared":
        return torch.randn((B, 1, P, C), generator=gen).expand(B, T, P, C).clone()
    return torch.randn((B, T, P, C), generator=gen)


def sample_flow(model: VelocityModel, context: torch.Tensor, latent_shape: tuple[int, int], settings: SamplerSettings,
                model_dtype: torch.dtype = torch.float32,
                step_callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Sample data latents ``[B, T, P, C]`` (fp32) for ``context [B, T, L, Cc]``.

    ``latent_shape = (P, C)``. ``guidance == 1`` runs the conditional branch only (no CFG batch).
    ``step_callback(done, total)`` is called after every model evaluation.
    """
    B, T = context.shape[:2]
    device = context.device
    x = initial_noise((B, T, *latent_shape), settings.noise, settings.seed).to(device)
    use_cfg = settings.guidance != 1.0
    if use_cfg:
        context = torch.cat([context, torch.zeros_like(context)], dim=0)  # [cond, uncond]
    sigmas = flow_sigmas(settings.steps).tolist()
    active = [i for i in range(settings.steps) if sigmas[i + 1] != sigmas[i]]
    for n, i in enumerate(active):
        s, s_next = sigmas[i], sigmas[i + 1]
        model_in = torch.cat([x, x], dim=0) if use_cfg else x
        t = torch.full((model_in.shape[0],), s, device=device, dtype=torch.float32)
        with torch.no_grad():
            v = model(model_in.to(model_dtype), t.to(model_dtype), context.to(model_dtype)).float()
        if use_cfg:
            cond, uncond = v.chunk(2, dim=0)
            v = uncond + settings.guidance * (cond - uncond)
        x = x + (s_next - s) * v
        if step_callback is not None:
            step_callback(n + 1, len(active))
    return x
