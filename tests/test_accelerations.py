"""The fast path's approximations, each against its exact reference: first-block step caching
(DiT), temporal narrow-band decoding (field decoder), adaptive KV selection (VAE cross-attention),
and ``exact=True`` / ``--exact`` turning them all off."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from sdk.generation.decode import (_crossing_cells, decode_field_banded, decode_field_dense,
                                   decode_field_hierarchical, vae_query_fn)
from sdk.generation.pipeline import Generator, GeneratorError
from sdk.generation.sampling import SamplerSettings, sample_flow
from sdk.generation.settings import Accelerations, RunSettings
from sdk.models.config import DiTConfig, VAEConfig
from sdk.models.dit import FirstBlockCache, Sculpt4DDiT
from sdk.models.vae import CrossAttention, KeySelection, LatentKV, ShapeVAE

from conftest import FAST, write_clip


# ----------------------------------------------------------------------------------------------
# step caching
# ----------------------------------------------------------------------------------------------

def _dit(seed: int, **overrides) -> Sculpt4DDiT:
    torch.manual_seed(seed)
    if "depth" in overrides:
        overrides.setdefault("num_moe_layers", min(2, overrides["depth"]))
    model = Sculpt4DDiT(DiTConfig.tiny(**overrides)).eval()
    with torch.no_grad():  # the temporal out_proj is zero-initialised: give it weight to test with
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.mark.parametrize("frames", [1, 2, 4])
@pytest.mark.parametrize("guidance", [1.0, 3.5])
@pytest.mark.parametrize("depth", [1, 3, 5])
def test_step_cache_off_is_bitwise_the_plain_forward(frames, guidance, depth):
    model = _dit(frames + depth, depth=depth)
    cfg = model.config
    context = torch.randn(1, frames, 5, cfg.context_dim)
    settings = SamplerSettings(steps=6, guidance=guidance, seed=frames)
    cache = FirstBlockCache(0.0)
    with torch.no_grad():
        plain = sample_flow(model, context, (cfg.input_size, cfg.in_channels), settings)
        cached = sample_flow(lambda x, t, c: model.forward_cached(x, t, c, cache), context,
                             (cfg.input_size, cfg.in_channels), settings)
    assert torch.equal(plain, cached)
    assert cache.reused == 0 and cache.evaluated == 5 and len(cache.changes) == 4


def test_step_cache_reuses_below_threshold_with_a_cap():
    model = _dit(1)
    cfg = model.config
    context = torch.randn(1, 2, 5, cfg.context_dim)
    shape = (cfg.input_size, cfg.in_channels)
    settings = SamplerSettings(steps=12, guidance=2.0, seed=4)
    for max_skips in (0, 1, 2, 3):
        cache = FirstBlockCache(1e9, max_skips=max_skips)  # every step qualifies: only the cap limits
        calls = []

        def velocity(x, t, c):
            calls.append(x.shape[0])
            return model.forward_cached(x, t, c, cache)
        with torch.no_grad():
            out = sample_flow(velocity, context, shape, settings)
        assert torch.isfinite(out).all()
        # 11 evaluations: one full, then runs of max_skips reuses, each closed by a full step
        assert cache.evaluated + cache.reused == 11
        period = max_skips + 1
        assert cache.reused == 10 // period * max_skips + min(10 % period, max_skips)
        assert set(calls) == {2}, "cond and uncond halves go through as one batch (one decision)"


def test_step_cache_reuse_equals_adding_the_cached_residual():
    """A reused step is exactly block 0 + the cached residual of the other blocks, put through
    the final layer: the reference written out by hand."""
    model = _dit(2, depth=3)
    cfg = model.config
    x = torch.randn(2, 2, cfg.input_size, cfg.in_channels)
    context = torch.randn(2, 2, 5, cfg.context_dim)
    cache = FirstBlockCache(1e9)
    with torch.no_grad():
        first = model.forward_cached(x, torch.full((2,), 0.2), context, cache)
        assert torch.allclose(first, model(x, torch.full((2,), 0.2), context), atol=1e-6)
        reused = model.forward_cached(x * 1.01, torch.full((2,), 0.25), context, cache)
        h, ctx, T = model.embed(x * 1.01, torch.full((2,), 0.25), context)
        block0, _ = model.run_blocks(h, ctx, T, 0, 1, [])
        expected = model.final_layer(block0 + cache.rest_residual).reshape(x.shape)
    assert cache.reused == 1 and torch.equal(reused, expected)


def test_step_cache_rejects_bad_settings():
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="threshold"):
            FirstBlockCache(bad)
    with pytest.raises(ValueError, match="max_skips"):
        FirstBlockCache(0.1, max_skips=-1)


# ----------------------------------------------------------------------------------------------
# temporal narrow band
# ----------------------------------------------------------------------------------------------

def _ball(centre, radius):
    c = torch.tensor(centre, dtype=torch.float32)
    return lambda p: radius - (p - c).norm(dim=1)


def _union(*fns):
    return lambda p: torch.stack([f(p) for f in fns]).amax(0)


MOTIONS = {  # previous frame's shape -> this frame's
    "still": (_ball([0, 0, 0], 0.5), _ball([0, 0, 0], 0.5)),
    "small step": (_ball([0, 0, 0], 0.5), _ball([0.04, -0.02, 0.01], 0.5)),
    "large step": (_ball([0, 0, 0], 0.5), _ball([0.3, 0.1, 0], 0.45)),
    "grows": (_ball([0, 0, 0], 0.3), _ball([0, 0, 0], 0.6)),
    # larger than the R/8 safety cells' half-diagonal at every resolution below: what the safety
    # pass is sure to see (smaller parts appearing from nothing may be missed, as documented)
    "part enters": (_ball([0, 0, 0], 0.5), _union(_ball([0, 0, 0], 0.5), _ball([0.65, 0.6, 0], 0.3))),
    "merge": (_union(_ball([-0.5, 0, 0], 0.3), _ball([0.5, 0, 0], 0.3)),
              _union(_ball([-0.25, 0, 0], 0.3), _ball([0.25, 0, 0], 0.3))),
    "vanishes": (_union(_ball([0, 0, 0], 0.4), _ball([0.7, 0.6, 0], 0.2)), _ball([0, 0, 0], 0.4)),
}


@pytest.mark.parametrize("motion", sorted(MOTIONS))
@pytest.mark.parametrize("resolution", [48, 64, 96])
@pytest.mark.parametrize("margin,follow", [(0, 0), (0, 1), (1, 1)])
def test_banded_decode_finds_every_surface_cell_of_the_dense_decode(motion, resolution, margin, follow):
    before, after = MOTIONS[motion]
    previous, _ = decode_field_dense(before, resolution)
    dense, dense_stats = decode_field_dense(after, resolution)
    # band 0.05: these are signed distances (the default 0.95 is in the VAE field's logit units)
    banded, stats = decode_field_banded(after, resolution, previous, margin=margin, follow=follow, band=0.05)
    crossing = _crossing_cells(dense)
    assert torch.equal(_crossing_cells(banded), crossing)
    # every corner of every surface cell holds the dense value: the same mesh
    corners = torch.zeros_like(dense, dtype=torch.bool)
    r = resolution
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                corners[dx:dx + r, dy:dy + r, dz:dz + r] |= crossing
    assert torch.equal(banded[corners], dense[corners])
    assert stats.method == "banded" and stats.num_queries == sum(n for _, n in stats.levels)
    assert stats.levels[0] == (resolution // 8, (resolution // 8 + 1) ** 3)
    if motion in ("still", "small step"):
        assert stats.num_queries < 0.5 * decode_field_hierarchical(after, resolution, band=0.05)[1].num_queries


def test_banded_decode_counts_each_point_once():
    seen = []

    def counting(p):
        seen.append(p.clone())
        return _ball([0.1, 0, 0], 0.5)(p)
    previous, _ = decode_field_dense(_ball([0, 0, 0], 0.5), 40)
    _, stats = decode_field_banded(counting, 40, previous)
    points = torch.cat(seen)
    assert len(torch.unique(points, dim=0)) == len(points) == stats.num_queries


def test_banded_decode_rejects_bad_inputs():
    previous, _ = decode_field_dense(_ball([0, 0, 0], 0.5), 16)
    with pytest.raises(ValueError, match="previous frame's field"):
        decode_field_banded(_ball([0, 0, 0], 0.5), 32, previous)
    for name in ("margin", "follow", "max_rounds"):
        with pytest.raises(ValueError, match=name):
            decode_field_banded(_ball([0, 0, 0], 0.5), 16, previous, **{name: -1})
    with pytest.raises(ValueError, match="safety_resolution"):
        decode_field_banded(_ball([0, 0, 0], 0.5), 16, previous, safety_resolution=3)
    with pytest.raises(ValueError, match="band"):
        decode_field_banded(_ball([0, 0, 0], 0.5), 16, previous, band=math.nan)


def test_banded_decode_reports_cells_it_could_not_follow():
    """With no follow rounds a large step leaves surface cells on interpolated corners: counted,
    not hidden; with rounds the same step resolves."""
    previous, _ = decode_field_dense(_ball([0, 0, 0], 0.5), 64)
    moved = _ball([0.25, 0, 0], 0.5)
    _, stuck = decode_field_banded(moved, 64, previous, max_rounds=0)
    _, free = decode_field_banded(moved, 64, previous)
    assert stuck.unresolved_cells > 0 and free.unresolved_cells == 0


@pytest.mark.parametrize("resolution", [64, 72, 80])
def test_banded_decode_of_a_noisy_field_matches_the_hierarchical_one(resolution):
    """A random-weight VAE's field: many small pieces, not a smooth ball. Frame 1 decoded from
    frame 0's field finds the surface cells the hierarchical decoder finds, up to a few cells of
    pieces smaller than a safety cell."""
    torch.manual_seed(resolution)
    vae = ShapeVAE(VAEConfig.tiny()).eval()
    base = torch.randn(1, vae.config.num_latents, vae.config.embed_dim)
    with torch.no_grad():
        frames = [vae_query_fn(vae, vae.decode(base + 0.05 * k * torch.randn_like(base))) for k in range(2)]
    first, _ = decode_field_hierarchical(frames[0], resolution)
    hier, hier_stats = decode_field_hierarchical(frames[1], resolution)
    banded, stats = decode_field_banded(frames[1], resolution, first)
    a, b = _crossing_cells(hier), _crossing_cells(banded)
    assert int((a ^ b).sum()) <= 0.01 * int(a.sum())
    assert stats.unresolved_cells == 0 and stats.num_queries < hier_stats.num_queries


# ----------------------------------------------------------------------------------------------
# adaptive KV selection
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("B,H,M,P,D", [(1, 1, 5, 4, 8), (1, 4, 1000, 128, 32), (2, 2, 257, 64, 16)])
@pytest.mark.parametrize("group,stride", [(128, 8), (16, 1), (100, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("transposed", [False, True])
def test_key_selection_of_every_key_is_full_attention(B, H, M, P, D, group, stride, dtype, transposed):
    g = torch.Generator().manual_seed(M + P)
    q = torch.randn(B, H, M, D, generator=g, dtype=dtype)
    if transposed:  # as CrossAttention.attend passes it: a [B, M, H, D] view, not contiguous
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
    kv = LatentKV(torch.randn(B, H, P, D, generator=g, dtype=dtype), torch.randn(B, H, P, D, generator=g, dtype=dtype))
    ours = CrossAttention.attend_selected(q, kv, KeySelection(P, group, stride))
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, kv.key, kv.value))


def test_key_selection_is_close_when_few_keys_carry_the_weight():
    """Each region of space attends to a few keys (peaked attention, as in a trained decoder):
    keeping those keys gives the full attention's result."""
    g = torch.Generator().manual_seed(0)
    P, D, M = 256, 32, 1024
    key = torch.randn(1, 1, P, D, generator=g)
    value = torch.randn(1, 1, P, D, generator=g)
    owner = torch.arange(M) // 128 * 8  # group i attends mostly to keys 8i .. 8i+3
    q = 4 * key[0, 0, owner + torch.randint(4, (M,), generator=g)][None, None] + 0.1 * torch.randn(1, 1, M, D, generator=g)
    full = F.scaled_dot_product_attention(q, key, value)
    for keys, tol in ((64, 1e-2), (16, 5e-2)):
        ours = CrossAttention.attend_selected(q, LatentKV(key, value), KeySelection(keys, 128, 4))
        assert (ours - full).abs().max() < tol


def test_query_fn_with_key_selection_restores_the_point_order():
    torch.manual_seed(0)
    vae = ShapeVAE(VAEConfig.tiny()).eval()
    latents = torch.randn(1, vae.config.num_latents, vae.config.embed_dim)
    with torch.no_grad():
        decoded = vae.decode(latents)
    tokens = vae.config.num_latents
    exact = vae_query_fn(vae, decoded)
    points = torch.rand(3000, 3) * 2 - 1
    # every key, through the tile sort, the grouped attention and the unsort: the exact field
    every = vae_query_fn(vae, decoded)
    every.selection = KeySelection(tokens, group=32, stride=2)
    torch.testing.assert_close(every(points), exact(points), rtol=1e-5, atol=1e-5)
    assert every(points[:0]).shape == (0,)
    selected = vae_query_fn(vae, decoded, KeySelection(tokens - 1, group=32, stride=2))
    a, b = exact(points), selected(points)
    assert selected.selection is not None and selected.keys_attended == 3000 * (tokens - 1)
    assert exact.keys_attended == 2 * 3000 * tokens
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.99
    # as many keys as tokens: selection is skipped, the exact path runs
    assert vae_query_fn(vae, decoded, KeySelection(tokens)).selection is None


def test_key_selection_rejects_bad_sizes():
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="KeySelection"):
            KeySelection(bad)


# ----------------------------------------------------------------------------------------------
# exact=True / --exact and the record of what ran
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generator():
    return Generator.tiny_random(seed=0)


def _reference_meshes(gen, video, seed, num_frames, steps, resolution):
    """The pipeline written out from its parts with no acceleration anywhere: plain DiT forward
    at every step, every frame decoded coarse-to-fine from scratch with full attention."""
    from sdk.generation.decode import decode_field
    from sdk.generation.mcubes import marching_cubes
    from sdk.inputs.conditioning import prepare_sequence
    from sdk.inputs.frames import load_frames

    d = gen.defaults
    prepared = prepare_sequence(load_frames(video, num_frames).frames, matting=d["matting"])
    context = torch.cat([gen.runtime.condition(prepared.images[i:i + 4]).float()
                         for i in range(0, num_frames, 4)])
    vc = gen.runtime.vae_config
    latents = sample_flow(gen.dit, context[None], (vc.num_latents, vc.embed_dim),
                          SamplerSettings(steps, d["guidance"], "shared", seed))[0]
    return [marching_cubes(decode_field(vae_query_fn(gen.vae, gen.vae.decode(lat[None])), resolution)[0])
            for lat in latents / vc.scale_factor]


def test_exact_run_is_the_reference_and_the_default_says_what_it_skipped(tmp_path, generator):
    video = write_clip(tmp_path / "clip.mp4")
    run = dict(num_frames=4, steps=6, resolution=64)
    exact = generator(video, seed=1, topology="per-frame", exact=True, **run)
    reference = _reference_meshes(generator, video, 1, **run)
    for a, b in zip(reference, exact.meshes):
        np.testing.assert_array_equal(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.faces, b.faces)
    record = exact.stats["acceleration"]
    assert record["exact"] is True and exact.settings["exact"] is True
    assert record["step_cache"] == {"on": False, "why_not": "off"}
    assert record["temporal_band"]["on"] is False and record["temporal_band"]["why_not"] == "off"
    assert record["kv_selection"]["on"] is False and record["kv_selection"]["why_not"] == "off"
    assert record["field_queries"] == sum(exact.stats["field_queries"])

    generator.accelerations = Accelerations(step_cache=1e9, kv_keys=2, kv_min_tokens=0)  # everything fires
    try:
        fast = generator(video, seed=1, topology="per-frame", **run)
    finally:
        generator.accelerations = Accelerations()
    record = fast.stats["acceleration"]
    assert record["exact"] is False and fast.settings["exact"] is False
    assert record["settings"]["kv_keys"] == 2
    assert record["step_cache"]["on"] and record["step_cache"]["reused"] == 3  # 5 evaluations, 2 in a row at most
    assert record["step_cache"]["evaluations"] == run["steps"] - 1
    assert record["temporal_band"] == {"on": True, "frames": len(fast.meshes) - 1, "unresolved_cells": 0,
                                       "why_not": None}
    assert record["field_queries"] < record["dense_queries"]
    kv = record["kv_selection"]
    assert kv["on"] and kv["keys_per_query"] == 2 and kv["keys_attended"] == 2 * record["field_queries"]
    assert kv["keys_full_attention"] == kv["latent_tokens"] * record["field_queries"]
    json.dumps(record)  # goes into manifest.json as is


def test_dense_decode_and_few_tokens_turn_their_accelerations_off(tmp_path, generator):
    video = write_clip(tmp_path / "clip.mp4")
    generator.accelerations = Accelerations(kv_keys=256)
    try:
        seq = generator(video, seed=1, topology="per-frame", decode="dense", **FAST)
    finally:
        generator.accelerations = Accelerations()
    record = seq.stats["acceleration"]
    assert record["temporal_band"]["why_not"] == "decode dense"
    assert "kv_min_tokens" in record["kv_selection"]["why_not"]
    low = generator(video, seed=1, topology="per-frame", **FAST)  # R = 24: below the band's minimum
    assert low.stats["acceleration"]["temporal_band"]["why_not"] == "resolution 24 < 64"


def test_accelerations_and_exact_setting_are_checked():
    with pytest.raises(GeneratorError, match="step_cache"):
        Accelerations(step_cache=-1)
    with pytest.raises(GeneratorError, match="kv_group"):
        Accelerations(kv_group=0)
    with pytest.raises(GeneratorError, match="--exact must be true or false"):
        RunSettings(exact="yes").check({"exact": "--exact"})
    assert not Accelerations.exact().any and Accelerations().any


def test_convert_cli_exact_flag_reaches_the_manifest(tmp_path):
    from conftest import CLI_FAST
    from sdk.cli.convert import app

    video = write_clip(tmp_path / "clip.mp4")
    runner = CliRunner()
    for flag, expected in ((["--exact"], True), ([], False)):
        out = tmp_path / f"out{len(flag)}"
        result = runner.invoke(app, [str(video), "-o", str(out), *CLI_FAST, *flag])
        assert result.exit_code == 0, result.output
        manifest = json.loads(next(out.glob("*/manifest.json")).read_text())
        assert manifest["settings"]["exact"] is expected
        assert manifest["stats"]["acceleration"]["exact"] is expected


def test_serve_exact_field():
    from sdk.serve.jobs import FieldError, parse_request

    assert parse_request([("exact", "true")])["settings"] == {"exact": True}
    assert parse_request([("exact", "0")])["settings"] == {"exact": False}
    with pytest.raises(FieldError, match="exact must be true or false") as info:
        parse_request([("exact", "maybe")])
    assert info.value.field == "exact"
    # the output switches parse the same way, once each
    assert parse_request([("preview", "off")])["outputs"] == {"preview": False}
    with pytest.raises(FieldError, match="preview given more than once"):
        parse_request([("preview", "true"), ("preview", "false")])
    with pytest.raises(FieldError, match="viewer must be true or false"):
        parse_request([("viewer", "maybe")])
