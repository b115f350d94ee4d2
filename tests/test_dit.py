"""Sculpt4DDiT: official key names and numerics, the 4D extension, RoPE and the MoE forms."""

import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F

from sdk.models.config import DiTConfig, TemporalConfig
from sdk.models.dit import MoEFeedForward, Sculpt4DDiT, sinusoidal_timestep_embedding
from sdk.sparse import SparsePattern, reference_block_sparse_attention



@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def randomize(model, seed=0):
    """Fresh random values everywhere (incl. norms and the zero-initialised temporal out_proj)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(max(1, p.shape[-1]))) + (1.0 if p.dim() == 1 and p.shape[0] < 64 else 0.0))
    return model


def zero_temporal_out(model):
    for block in model.blocks:
        block.temporal_attn.out_proj.weight.zero_()
        block.temporal_attn.out_proj.bias.zero_()
    return model


def inputs(cfg, B, T, L=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, cfg.input_size, cfg.in_channels, generator=g),
            torch.rand(B, generator=g),
            torch.randn(B, T, L, cfg.context_dim, generator=g))


# ---------------------------------------------------------------------------------------
# Official state_dict names
# ---------------------------------------------------------------------------------------
def official_keys(cfg: DiTConfig) -> set[str]:
    """The HunYuanDiTPlain key set, written out from SPEC section 2."""
    keys = {"x_embedder.weight", "x_embedder.bias", "final_layer.norm_final.weight", "final_layer.norm_final.bias",
            "final_layer.linear.weight", "final_layer.linear.bias"}
    keys |= {f"t_embedder.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    for n in range(cfg.depth):
        b = f"blocks.{n}."
        keys |= {b + f"{norm}.{p}" for norm in ("norm1", "norm2", "norm3") for p in ("weight", "bias")}
        for attn in ("attn1", "attn2"):
            keys |= {b + f"{attn}.{m}.weight" for m in ("to_q", "to_k", "to_v", "q_norm", "k_norm")}
            keys |= {b + f"{attn}.out_proj.weight", b + f"{attn}.out_proj.bias"}
        if n > cfg.depth // 2:
            keys |= {b + f"{m}.{p}" for m in ("skip_linear", "skip_norm") for p in ("weight", "bias")}
        if n >= cfg.depth - cfg.num_moe_layers:
            keys.add(b + "moe.gate.weight")
            experts = [f"moe.experts.{e}." for e in range(cfg.num_experts)] + ["moe.shared_experts."]
            keys |= {b + e + f"{layer}.{p}" for e in experts for layer in ("net.0.proj", "net.2")
                     for p in ("weight", "bias")}
        else:
            keys |= {b + f"mlp.{fc}.{p}" for fc in ("fc1", "fc2") for p in ("weight", "bias")}
    return keys


@pytest.mark.parametrize("which", ["tiny", "full"])
def test_official_keys_and_only_temporal_extra(which):
    cfg = DiTConfig.tiny() if which == "tiny" else DiTConfig.full()
    with torch.device("meta"):
        model = Sculpt4DDiT(cfg)
    sd = model.state_dict()
    temporal = {k for k in sd if re.match(r"blocks\.\d+\.temporal_(norm|attn)\.", k)}
    assert set(sd) - temporal == official_keys(cfg)
    assert len(temporal) == cfg.depth * 9  # norm w/b, q/k/v, q_norm, k_norm, out w/b
    if which == "full":
        assert sd["blocks.0.attn2.to_k.weight"].shape == (2048, 1024)
        assert sd["blocks.15.moe.experts.7.net.0.proj.weight"].shape == (8192, 2048)
        assert sd["t_embedder.mlp.0.weight"].shape == (8192, 2048)
        n_3d = sum(v.numel() for k, v in sd.items() if k not in temporal)
        assert 3.0e9 < n_3d < 3.1e9  # the released DiT has 3.05B parameters (SPEC section 1)


def test_official_state_dict_loads_with_only_temporal_missing():
    cfg = DiTConfig.tiny()
    three_d = Sculpt4DDiT(dataclasses.replace(cfg, temporal=TemporalConfig(enabled=False)))
    result = Sculpt4DDiT(cfg).load_state_dict(three_d.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(".temporal_" in k for k in result.missing_keys)


# ---------------------------------------------------------------------------------------
# An independent functional reference of the official forward (per frame, 3D)
# ---------------------------------------------------------------------------------------
def ref_linear(sd, name, x):
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))


def ref_layernorm(sd, name, x, eps=1e-6):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def ref_rms(sd, name, x, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * sd[name + ".weight"]


def ref_attention(q, k, v):
    """q,k,v [B, N, H, d] -> [B, N, H*d] with plain softmax attention."""
    s = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhnm,bmhd->bnhd", s.softmax(-1), v).flatten(2)


def ref_self_attention(sd, name, x, H):
    """Official layout: cat(to_q, to_k, to_v) viewed [B, N, H, 3d]; head h = [q|k|v] of 3d."""
    qkv = torch.cat([ref_linear(sd, f"{name}.to_{c}", x) for c in "qkv"], -1)
    B, N, C3 = qkv.shape
    d = C3 // 3 // H
    per_head = qkv.view(B, N, H, 3 * d)
    q, k, v = per_head[..., :d], per_head[..., d:2 * d], per_head[..., 2 * d:]
    q, k = ref_rms(sd, f"{name}.q_norm", q), ref_rms(sd, f"{name}.k_norm", k)
    return ref_linear(sd, f"{name}.out_proj", ref_attention(q, k, v))


def ref_cross_attention(sd, name, x, ctx, H):
    B, N, C = x.shape
    d = C // H
    q = ref_linear(sd, f"{name}.to_q", x).view(B, N, H, d)
    kv = torch.cat([ref_linear(sd, f"{name}.to_k", ctx), ref_linear(sd, f"{name}.to_v", ctx)], -1)
    kv = kv.view(B, ctx.shape[1], H, 2 * d)
    k, v = kv[..., :d], kv[..., d:]
    q, k = ref_rms(sd, f"{name}.q_norm", q), ref_rms(sd, f"{name}.k_norm", k)
    return ref_linear(sd, f"{name}.out_proj", ref_attention(q, k, v))


def ref_moe(sd, name, x, top_k):
    """Official moe_infer: tokens sorted by expert, each expert on its tokens, weighted sum."""
    flat = x.reshape(-1, x.shape[-1])
    scores = F.linear(flat, sd[f"{name}.gate.weight"]).softmax(-1)
    w, idx = torch.topk(scores, top_k, dim=-1, sorted=False)
    flat_idx, flat_w = idx.reshape(-1), w.reshape(-1, 1)
    order = flat_idx.argsort()
    ends = flat_idx.bincount().cumsum(0).tolist()
    out = torch.zeros_like(flat)
    start = 0
    for e, end in enumerate(ends):
        if end > start:
            tok = order[start:end] // top_k
            h = F.gelu(ref_linear(sd, f"{name}.experts.{e}.net.0.proj", flat[tok]))
            y = ref_linear(sd, f"{name}.experts.{e}.net.2", h) * flat_w[order[start:end]]
            out.index_add_(0, tok, y)
        start = end
    shared = ref_linear(sd, f"{name}.shared_experts.net.2",
                        F.gelu(ref_linear(sd, f"{name}.shared_experts.net.0.proj", flat)))
    return (out + shared).view_as(x)


def ref_hunyuan_forward(sd, cfg, x, t, ctx):
    """One frame: x [B, P, C], t [B], ctx [B, L, Cc] -> [B, P, C]."""
    H, half = cfg.num_heads, cfg.hidden_size // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    temb = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], -1)
    temb = ref_linear(sd, "t_embedder.mlp.2", F.gelu(ref_linear(sd, "t_embedder.mlp.0", temb)))
    h = torch.cat([temb[:, None], ref_linear(sd, "x_embedder", x)], 1)
    stack = []
    for n in range(cfg.depth):
        b = f"blocks.{n}"
        if n > cfg.depth // 2:
            h = ref_layernorm(sd, f"{b}.skip_norm", ref_linear(sd, f"{b}.skip_linear", torch.cat([stack.pop(), h], -1)))
        h = h + ref_self_attention(sd, f"{b}.attn1", ref_layernorm(sd, f"{b}.norm1", h), H)
        h = h + ref_cross_attention(sd, f"{b}.attn2", ref_layernorm(sd, f"{b}.norm2", h), ctx, H)
        m = ref_layernorm(sd, f"{b}.norm3", h)
        if f"{b}.moe.gate.weight" in sd:
            h = h + ref_moe(sd, f"{b}.moe", m, cfg.moe_top_k)
        else:
            h = h + ref_linear(sd, f"{b}.mlp.fc2", F.gelu(ref_linear(sd, f"{b}.mlp.fc1", m)))
        if n < cfg.depth // 2:
            stack.append(h)
    h = ref_layernorm(sd, "final_layer.norm_final", h)[:, 1:]
    return ref_linear(sd, "final_layer.linear", h)


def test_3d_model_matches_independent_official_reference():
    cfg = DiTConfig.tiny(temporal=TemporalConfig(enabled=False))
    model = randomize(Sculpt4DDiT(cfg).eval(), seed=3)
    x, t, ctx = inputs(cfg, B=2, T=1)
    out = model(x, t, ctx)[:, 0]
    ref = ref_hunyuan_forward(model.state_dict(), cfg, x[:, 0], t, ctx[:, 0])
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_timestep_embedding_is_sin_then_cos():
    t = torch.rand(3)
    emb = sinusoidal_timestep_embedding(t, 8)
    f = torch.tensor([10000.0 ** (-i / 4) for i in range(4)])
    torch.testing.assert_close(emb, torch.cat([torch.sin(t[:, None] * f), torch.cos(t[:, None] * f)], -1))


# ---------------------------------------------------------------------------------------
# The 4D extension
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1, 3, 8])
def test_zero_temporal_out_proj_equals_per_frame_3d(T):
    cfg = DiTConfig.tiny()
    model4d = zero_temporal_out(randomize(Sculpt4DDiT(cfg).eval(), seed=T))
    model3d = Sculpt4DDiT(dataclasses.replace(cfg, temporal=TemporalConfig(enabled=False))).eval()
    model3d.load_state_dict(model4d.state_dict(), strict=False)
    x, t, ctx = inputs(cfg, B=2, T=T, seed=T + 10)
    out4d = model4d(x, t, ctx)
    per_frame = torch.stack([model3d(x[:, i:i + 1], t, ctx[:, i:i + 1])[:, 0] for i in range(T)], 1)
    assert (out4d - per_frame).abs().max() < 5e-6


def test_temporal_module_changes_output_and_mixes_frames():
    cfg = DiTConfig.tiny()
    model = randomize(Sculpt4DDiT(cfg).eval(), seed=5)
    x, t, ctx = inputs(cfg, B=1, T=3)
    base = model(x, t, ctx)
    x2 = x.clone()
    x2[:, 0] += 1.0  # perturb frame 0 only
    moved = model(x2, t, ctx)
    assert (moved[:, 2] - base[:, 2]).abs().max() > 1e-4, "frame 2 must see frame 0 through temporal attention"


def ref_rope(x, frames_of_token, theta=10000.0):
    """Pairs (2i, 2i+1) rotate by angle frame * theta^(-2i/d), in float64."""
    d = x.shape[-1]
    out = x.double().clone()
    for i in range(d // 2):
        ang = frames_of_token.double() * theta ** (-2 * i / d)
        c, s = torch.cos(ang)[:, None], torch.sin(ang)[:, None]
        a, b = x[..., 2 * i].double(), x[..., 2 * i + 1].double()
        out[..., 2 * i] = a * c[:, 0] - b * s[:, 0]
        out[..., 2 * i + 1] = a * s[:, 0] + b * c[:, 0]
    return out


def test_temporal_attention_matches_reference_with_rope():
    cfg = DiTConfig.tiny()
    model = randomize(Sculpt4DDiT(cfg).eval(), seed=7)
    attn = model.blocks[0].temporal_attn
    T, P, H = 4, cfg.input_size, cfg.num_heads
    x = torch.randn(2, T * P, cfg.hidden_size)
    sd = {k[len("blocks.0.temporal_attn."):]: v for k, v in model.state_dict().items()
          if k.startswith("blocks.0.temporal_attn.")}
    qkv = torch.cat([F.linear(x, sd[f"to_{c}.weight"]) for c in "qkv"], -1).view(2, T * P, H, -1)
    d = qkv.shape[-1] // 3
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    q, k = ref_rms(sd, "q_norm", q), ref_rms(sd, "k_norm", k)
    frame = torch.arange(T).repeat_interleave(P)
    q = ref_rope(q.transpose(1, 2), frame).float()
    k = ref_rope(k.transpose(1, 2), frame).float()
    pattern = SparsePattern.for_tokens(T, P, cfg.temporal.block_size)
    o = reference_block_sparse_attention(q, k, v.transpose(1, 2), pattern, cfg.temporal.block_size)
    ref = F.linear(o.transpose(1, 2).flatten(2), sd["out_proj.weight"], sd["out_proj.bias"])
    torch.testing.assert_close(attn(x, T), ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_attention_backend_choice_does_not_change_the_model(backend):
    cfg = DiTConfig.tiny()
    # the comparison model runs the dense fp32 reference, whatever the tiny config's default is
    ref_cfg = dataclasses.replace(cfg, temporal=dataclasses.replace(cfg.temporal, attention_backend="reference"))
    base = randomize(Sculpt4DDiT(ref_cfg).eval(), seed=9)
    other = Sculpt4DDiT(dataclasses.replace(cfg, temporal=dataclasses.replace(cfg.temporal, attention_backend=backend))).eval()
    other.load_state_dict(base.state_dict())
    x, t, ctx = inputs(cfg, B=1, T=5)
    torch.testing.assert_close(other(x, t, ctx), base(x, t, ctx), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# MoE: dense (export) form == dispatch form == official algorithm
# ---------------------------------------------------------------------------------------
def test_moe_dense_equals_dispatch_equals_official():
    cfg = DiTConfig.tiny(num_experts=6, moe_top_k=2)
    moe = MoEFeedForward(cfg)
    randomize(moe, seed=11)
    x = torch.randn(3, 17, cfg.hidden_size)
    sd = {f"m.{k}": v for k, v in moe.state_dict().items()}
    official = ref_moe(sd, "m", x, cfg.moe_top_k)
    for impl in ("dispatch", "dense"):
        moe.impl = impl
        torch.testing.assert_close(moe(x), official, atol=1e-6, rtol=1e-5)


def test_moe_auto_uses_dense_under_compile_tracing():
    cfg = DiTConfig.tiny()
    moe = randomize(MoEFeedForward(cfg), seed=12)
    x = torch.randn(2, 5, cfg.hidden_size)
    eager = moe(x)
    exported = torch.export.export(moe, (x,))  # fails on data-dependent shapes unless dense
    torch.testing.assert_close(exported.module()(x), eager, atol=1e-6, rtol=1e-5)


def test_bad_shapes_are_named():
    cfg = DiTConfig.tiny()
    model = Sculpt4DDiT(cfg)
    x, t, ctx = inputs(cfg, B=1, T=2)
    with pytest.raises(ValueError, match="latents must be"):
        model(x[0], t, ctx)
    with pytest.raises(ValueError, match="context must be"):
        model(x, t, ctx[:, :1])
    with pytest.raises(ValueError, match="multiple of the temporal block size"):
        model(x[:, :, :40], t, ctx)
