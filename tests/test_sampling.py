"""Flow-matching Euler sampler with CFG, against an independent loop of the official algorithm."""

import pytest
import torch

from sdk.generation.sampling import SamplerSettings, flow_sigmas, initial_noise, sample_flow


class RecordingModel:
    """v = A x + b * t + context mean; records every call."""

    def __init__(self, C, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(C, C, generator=g) * 0.3
        self.b = torch.randn(C, generator=g)
        self.calls = []

    def __call__(self, x, t, ctx):
        self.calls.append((x.clone(), t.clone(), ctx.clone()))
        return x @ self.A + self.b * t[:, None, None, None] + ctx.mean(dim=(2, 3))[:, :, None, None]


def official_loop(model, ctx, noise, steps, w):
    """Official: sigmas linspace(0,1,steps)+[1]; evaluate at every sigma (incl. the last, dt=0);
    batched [cond, uncond]; Euler in fp32."""
    sigmas = torch.cat([torch.linspace(0, 1, steps), torch.ones(1)])
    x = noise.clone()
    ctx2 = torch.cat([ctx, torch.zeros_like(ctx)])
    for i in range(steps):
        v = model(torch.cat([x, x]), torch.full((2 * x.shape[0],), float(sigmas[i])), ctx2)
        cond, uncond = v.chunk(2)
        x = x + (sigmas[i + 1] - sigmas[i]) * (uncond + w * (cond - uncond))
    return x


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("noise_mode", ["shared", "independent"])
def test_matches_official_loop(steps, noise_mode):
    B, T, P, C = 2, 3, 5, 4
    ctx = torch.randn(B, T, 6, 8)
    ours_model, ref_model = RecordingModel(C), RecordingModel(C)
    settings = SamplerSettings(steps=steps, guidance=4.5, noise=noise_mode, seed=11)
    ours = sample_flow(ours_model, ctx, (P, C), settings)
    noise = initial_noise((B, T, P, C), noise_mode, 11)
    ref = official_loop(ref_model, ctx, noise, steps, 4.5)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    assert len(ours_model.calls) == max(steps - 1, 1), "the dt = 0 final evaluation is skipped"
    x, t, c = ours_model.calls[0]
    assert x.shape[0] == 2 * B and torch.equal(c[B:], torch.zeros_like(c[B:])), "[cond, uncond] batch"


def test_exact_velocity_reaches_the_target():
    target = torch.randn(1, 2, 3, 4)
    noise = initial_noise((1, 2, 3, 4), "independent", 3)

    def straight(x, t, ctx):  # exact flow velocity towards `target` from x at time t
        return (target - x) / (1 - t[:, None, None, None]).clamp_min(1e-6)

    out = sample_flow(straight, torch.randn(1, 2, 1, 1), (3, 4), SamplerSettings(steps=10, guidance=1.0,
                                                                                    noise="independent", seed=3))
    torch.testing.assert_close(out, target, atol=1e-5, rtol=1e-5)
    assert not torch.equal(noise, target)


def test_noise_modes_and_seeds():
    shared = initial_noise((2, 4, 5, 3), "shared", 0)
    assert torch.equal(shared[:, 0], shared[:, 3]) and not torch.equal(shared[0], shared[1])
    indep = initial_noise((2, 4, 5, 3), "independent", 0)
    assert not torch.equal(indep[:, 0], indep[:, 1])
    assert torch.equal(initial_noise((1, 2, 3, 4), "shared", 5), initial_noise((1, 2, 3, 4), "shared", 5))
    assert not torch.equal(initial_noise((1, 2, 3, 4), "shared", 5), initial_noise((1, 2, 3, 4), "shared", 6))


def test_sigmas_and_validation():
    assert flow_sigmas(5).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    with pytest.raises(ValueError, match="steps"):
        SamplerSettings(steps=0)
    with pytest.raises(ValueError, match="noise"):
        SamplerSettings(noise="pink")
