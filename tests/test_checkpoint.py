"""Checkpoint layouts: round trips, per-frame mode, and clear errors for bad files."""

import os
import pickle
import warnings

import pytest
import torch
from safetensors.torch import save_file

from sdk.models.checkpoint import (CheckpointError, PerFrameModeWarning, build_dit, detect_layout, load_checkpoint,
                            save_checkpoint)
from sdk.models.config import DiTConfig, TemporalConfig
from sdk.models.dit import Sculpt4DDiT



@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield
TINY_TEMPORAL = TemporalConfig(block_size=16)


def random_dit(cfg=None, seed=0):
    model = Sculpt4DDiT(cfg or DiTConfig.tiny()).eval()
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def dit_inputs(cfg, T=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, T, cfg.input_size, cfg.in_channels, generator=g), torch.rand(1, generator=g),
            torch.randn(1, T, 6, cfg.context_dim, generator=g))


def test_sculpt4d_layout_round_trip(tmp_path):
    dit = random_dit()
    path = save_checkpoint(tmp_path / "ckpt", dit, metadata={"note": "test"})
    assert detect_layout(path)[0] == "sculpt4d"
    assert not list(tmp_path.glob(".ckpt.*")), "no temp dir left behind"
    ckpt = load_checkpoint(path)
    assert ckpt.metadata == {"note": "test"} and ckpt.dit_config == dit.config
    loaded = build_dit(ckpt)
    x = dit_inputs(dit.config)
    assert torch.equal(loaded(*x), dit(*x))
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(path, dit)


def test_temporal_override_can_run_a_4d_checkpoint_per_frame(tmp_path):
    dit = random_dit()
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "ckpt", dit))
    per_frame = build_dit(ckpt, temporal=TemporalConfig(enabled=False, block_size=16))
    assert not per_frame.has_temporal
    # Reference: the same weights with the temporal modules removed by hand.
    cfg = DiTConfig.tiny(temporal=TemporalConfig(enabled=False))
    ref = Sculpt4DDiT(cfg).eval()
    ref.load_state_dict({k: v for k, v in dit.state_dict().items() if ".temporal_" not in k})
    x = dit_inputs(dit.config)
    assert torch.equal(per_frame(*x), ref(*x))
    assert not torch.equal(per_frame(*x), dit(*x))  # the random temporal path did contribute
    full = build_dit(ckpt, temporal=TemporalConfig(schedule="full", block_size=16))
    assert full.has_temporal and full.config.temporal.schedule == (1,)


@pytest.mark.parametrize("layout", ["hunyuan-ckpt", "hunyuan-safetensors"])
@pytest.mark.parametrize("with_temporal", [True, False])
def test_official_layouts_round_trip(tmp_path, layout, with_temporal):
    cfg = DiTConfig.tiny(temporal=TINY_TEMPORAL if with_temporal else TemporalConfig(enabled=False))
    dit = random_dit(cfg)
    sd = dit.state_dict()
    if layout == "hunyuan-ckpt":
        path = tmp_path / "model.fp16.ckpt"
        torch.save({"model": sd}, path)
    else:
        path = tmp_path / "model.fp16.safetensors"
        save_file({f"model.{k}": v.contiguous() for k, v in sd.items()}, str(path))
    ckpt = load_checkpoint(tmp_path)  # the directory form finds the file
    assert ckpt.layout == layout and ckpt.has_temporal == with_temporal
    assert ckpt.dit_config.num_heads == cfg.num_heads and ckpt.dit_config.num_moe_layers == cfg.num_moe_layers
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = build_dit(ckpt, temporal=TINY_TEMPORAL)
    per_frame = [w for w in caught if issubclass(w.category, PerFrameModeWarning)]
    assert len(per_frame) == (0 if with_temporal else 1)
    assert loaded.has_temporal == with_temporal
    x = dit_inputs(cfg)
    torch.testing.assert_close(loaded(*x), dit(*x), atol=0, rtol=0)


def test_fp16_official_checkpoint_loads_into_fp32(tmp_path):
    dit = random_dit(DiTConfig.tiny(temporal=TemporalConfig(enabled=False)))
    torch.save({"model": {k: v.half() for k, v in dit.state_dict().items()}}, tmp_path / "model.fp16.ckpt")
    with pytest.warns(PerFrameModeWarning):
        loaded = build_dit(load_checkpoint(tmp_path / "model.fp16.ckpt"))
    assert loaded.x_embedder.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.x_embedder.weight, dit.x_embedder.weight.half().float())


def test_missing_and_misshaped_keys_are_listed(tmp_path):
    dit = random_dit()
    sd = dict(dit.state_dict())
    del sd["blocks.1.attn1.to_q.weight"]
    sd["blocks.2.norm1.weight"] = torch.randn(7)
    torch.save({"model": sd}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="does not fit the Sculpt4DDiT model") as err:
        build_dit(load_checkpoint(tmp_path / "bad.ckpt"), temporal=TINY_TEMPORAL)
    msg = str(err.value)
    assert "bad.ckpt" in msg and "1 missing key(s): blocks.1.attn1.to_q.weight" in msg
    assert "blocks.2.norm1.weight: checkpoint (7,) vs model (64,)" in msg


def test_unexpected_keys_are_listed_with_count(tmp_path):
    dit = random_dit()
    sd = dict(dit.state_dict())
    for i in range(12):
        sd[f"extra.{i}"] = torch.zeros(1)
    path = save_checkpoint(tmp_path / "ck", dit)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "dit.safetensors"))
    with pytest.raises(CheckpointError, match=r"12 unexpected key\(s\): extra\.0, .*, \.\.\."):
        build_dit(load_checkpoint(path))


def test_truncated_and_corrupted_files(tmp_path):
    dit = random_dit()
    good = tmp_path / "good.ckpt"
    torch.save({"model": dit.state_dict()}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(4096))
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match=f"cannot read checkpoint .*{path.name}"):
            load_checkpoint(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickles_cannot_execute_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.ckpt"
    torch.save({"model": {"x": _Exploit()}}, evil, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


def test_unknown_layouts(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="unknown checkpoint file type"):
        load_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_checkpoint(tmp_path)
    torch.save({"weights": {"a": torch.zeros(1)}}, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="no known parts"):
        load_checkpoint(tmp_path / "odd.ckpt")


# ---------------------------------------------------------------------------------------
# All three parts: DiT + ShapeVAE + DINOv2 conditioner
# ---------------------------------------------------------------------------------------
def all_parts(seed=0):
    from sdk.models.config import ConditionerConfig, VAEConfig
    from sdk.models import ImageConditioner, ShapeVAE

    g = torch.Generator().manual_seed(seed)
    models = [random_dit(seed=seed), ShapeVAE(VAEConfig.tiny()).eval(), ImageConditioner(ConditionerConfig.tiny()).eval()]
    for m in models[1:]:
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return models


def part_outputs(dit, vae, cond):
    """Outputs on fixed inputs sized by the tiny configs (shape-inferred configs cannot know
    the token counts P and num_latents; the models accept any)."""
    from sdk.models.config import ConditionerConfig, VAEConfig

    g = torch.Generator().manual_seed(5)
    size = ConditionerConfig.tiny().image_size
    image = torch.randn(1, 3, size, size, generator=g)
    latents = torch.randn(1, VAEConfig.tiny().num_latents, VAEConfig.tiny().embed_dim, generator=g)
    xyz = torch.rand(1, 50, 3, generator=g) * 2 - 1
    return [dit(*dit_inputs(DiTConfig.tiny())), vae.query(vae.decode(latents), xyz), cond(image)]


@pytest.mark.parametrize("layout", ["sculpt4d", "hunyuan-ckpt", "hunyuan-safetensors"])
def test_all_parts_round_trip(tmp_path, layout):
    from sdk.models.checkpoint import build_conditioner, build_vae

    dit, vae, cond = all_parts()
    if layout == "sculpt4d":
        path = save_checkpoint(tmp_path / "ck", dit, vae, cond)
    elif layout == "hunyuan-ckpt":
        path = tmp_path / "model.fp16.ckpt"
        torch.save({"model": dit.state_dict(), "vae": vae.state_dict(), "conditioner": cond.state_dict()}, path)
    else:
        path = tmp_path / "model.fp16.safetensors"
        flat = {f"{part}.{k}": v.contiguous() for part, m in (("model", dit), ("vae", vae), ("conditioner", cond))
                for k, v in m.state_dict().items()}
        save_file(flat, str(path))
    ckpt = load_checkpoint(path)
    assert ckpt.layout == layout
    # configs inferred from shapes (official layouts) must rebuild the same architectures
    loaded = [build_dit(ckpt, temporal=TINY_TEMPORAL), build_vae(ckpt), build_conditioner(ckpt)]
    for a, b in zip(part_outputs(*loaded), part_outputs(dit, vae, cond)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_vae_wrong_shape_is_named(tmp_path):
    from sdk.models.checkpoint import build_vae

    dit, vae, cond = all_parts()
    sd = dict(vae.state_dict())
    sd["transformer.resblocks.0.ln_1.weight"] = torch.randn(3)
    torch.save({"model": dit.state_dict(), "vae": sd}, tmp_path / "m.ckpt")
    with pytest.raises(CheckpointError, match=r"\(vae\) .*transformer\.resblocks\.0\.ln_1\.weight: checkpoint \(3,\)"):
        build_vae(load_checkpoint(tmp_path / "m.ckpt"))


def test_malformed_official_config_yaml(tmp_path):
    torch.save({"model": random_dit().state_dict()}, tmp_path / "model.fp16.ckpt")
    (tmp_path / "config.yaml").write_text("- just\n- a list\n")
    with pytest.raises(CheckpointError, match="expected a mapping"):
        load_checkpoint(tmp_path)


def test_temporal_config_schedule_validation():
    from sdk.models.config import ConfigError

    assert TemporalConfig(schedule="fixed4").schedule == (4,)
    for bad in ([1.5, 2], "nope", [0]):
        with pytest.raises(ConfigError, match="TemporalConfig.schedule"):
            TemporalConfig(schedule=bad)
