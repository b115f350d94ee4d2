"""Full-size cost model of the accelerations: one 16-frame sampler step and the decode at R = 384,
each with and without its approximation, in FLOPs and CPU seconds.

    python benchmarks/fullsize_cost.py [--threads 2] [--out benchmarks/results_fullsize_cost.json]

A full-size step (16 frames x 4096 latents x CFG batch 2 through 21 blocks of width 2048) takes
far too long on 2 cores to run whole, and dense decoding at R = 384 is 57 M queries; so:

* FLOPs come from ``sdk.models.flops`` (the DiT) and from the geometry decoder's layer sizes
  (per query: Fourier projection, q/out projections, attention to the latent tokens, MLP);
* CPU time = FLOPs / the FLOP rate measured here on the same modules at full width with random
  weights (one full-size DiT block on one frame; 4096 queries through the full geometry decoder
  with every key and with adaptive KV selection);
* field queries at R = 384 are COUNTED on a real shape: the embedded demo model's fields of the
  README clip (frames 0 and 1) decoded at R = 384 dense / hierarchical / banded. Query counts
  depend on the surface, not on the decoder's size;
* step caching's saving at full size uses the reuse share measured on the demo's validation split
  (``--reuse``, from benchmarks/accelerations.py); a reused step runs block 0 + the final layer.

The accuracy of adaptive KV selection is measured on the demo VAE (128 latents: the trained
decoder at hand) with 16 / 32 / 64 keys, as the share of decoded points whose inside/outside
sign flips and the largest field change on the hierarchical points of the README clip.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdk.generation.decode import (decode_field_banded, decode_field_hierarchical,  # noqa: E402
                                   default_safety_resolution, grid_points, vae_query_fn)
from sdk.models.config import DiTConfig, VAEConfig  # noqa: E402
from sdk.models.dit import Sculpt4DBlock  # noqa: E402
from sdk.models.flops import estimate_flops  # noqa: E402
from sdk.models.vae import KeySelection, ShapeVAE  # noqa: E402

CLIP = ROOT / "examples" / "data" / "bend_twist_200002.mp4"


def decoder_flops_per_query(cfg: VAEConfig, keys: int, selection: KeySelection | None = None) -> float:
    """FLOPs of one query through the geometry decoder attending ``keys`` latent tokens (plus, with
    ``selection``, the probes' share of scoring all ``cfg.num_latents`` keys)."""
    w = cfg.width // cfg.geo_decoder_downsample_ratio
    hidden = w * cfg.geo_decoder_mlp_expand_ratio
    linear = 2 * (cfg.fourier_dim * w + 2 * w * w + 2 * w * hidden + w)
    attention = 4 * keys * w
    probe = 0.0 if selection is None else 2 * cfg.num_latents * w / selection.stride
    return float(linear + attention + probe)


def time_call(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def dit_part(threads: int, reuse: float) -> dict:
    cfg = DiTConfig.full()
    total = estimate_flops(cfg, num_frames=16, steps=1, cfg_batch=2).total_sparse  # one forward, batch 1
    one_frame_total = estimate_flops(cfg, num_frames=1, steps=1, cfg_batch=1).total_sparse
    torch.manual_seed(0)
    block = Sculpt4DBlock(cfg, 0).eval()
    x = torch.randn(1, cfg.input_size + 1, cfg.hidden_size)
    context = torch.randn(1, 1370, cfg.context_dim)
    with torch.no_grad():
        seconds = time_call(lambda: block(x, context, 1), repeats=2)
    # one non-MoE block on one frame: its share of a one-frame forward
    block_flops = one_frame_total / cfg.depth
    rate = block_flops / seconds
    step_flops = 2 * total  # CFG: cond + uncond
    reused_flops = step_flops / cfg.depth  # block 0 (+ embed and final layer, negligible)
    cached = (1 - reuse) * step_flops + reuse * reused_flops
    return {"config": "DiTConfig.full(): 21 blocks, width 2048, 4096 latents, 16 frames, CFG batch 2",
            "flops_per_step": step_flops, "flops_per_reused_step": reused_flops,
            "measured_block_seconds_one_frame": seconds, "flop_rate": rate,
            "cpu_seconds_per_step": step_flops / rate,
            "reuse_share": reuse, "flops_per_step_with_cache": cached,
            "cpu_seconds_per_step_with_cache": cached / rate, "step_speedup": step_flops / cached}


def demo_fields_at(resolution: int):
    """Query functions of the README clip's frames 0 and 1 (embedded demo model, its defaults)."""
    from sdk import Generator
    from sdk.generation.sampling import SamplerSettings, sample_flow
    from sdk.inputs.conditioning import prepare_sequence
    from sdk.inputs.frames import load_frames

    gen = Generator.default()
    d = gen.defaults
    frames = load_frames(str(CLIP), d["num_frames"])
    prepared = prepare_sequence(frames.frames, matting=d["matting"])
    context = gen._condition(prepared.images, lambda n: None)
    vc = gen.runtime.vae_config
    latents = sample_flow(gen.runtime.velocity, context[None], (vc.num_latents, vc.embed_dim),
                          SamplerSettings(d["steps"], d["guidance"], "shared", 0))[0] / vc.scale_factor
    return gen, latents


def decode_part(threads: int, resolution: int) -> dict:
    gen, latents = demo_fields_at(resolution)
    q0, q1 = (gen.runtime.frame_query_fn(latents[i][None]) for i in (0, 1))
    f0, s0 = decode_field_hierarchical(q0, resolution)
    f1, s1 = decode_field_hierarchical(q1, resolution)
    b1, sb = decode_field_banded(q1, resolution, f0)
    dense = (resolution + 1) ** 3
    counts = {"dense": dense, "hierarchical": (s0.num_queries + s1.num_queries) / 2,
              "banded (frame 1 from frame 0)": sb.num_queries}

    cfg = VAEConfig.full()
    torch.manual_seed(0)
    vae = ShapeVAE(cfg).eval()
    with torch.no_grad():
        decoded = torch.randn(1, cfg.num_latents, cfg.width)
        exact = vae_query_fn(vae, decoded)
        selections = {k: KeySelection(k) for k in (256, 512)}
        points = torch.rand(4096, 3) * 2 - 1
        per_query = {"every key": time_call(lambda: exact(points)) / len(points)}
        flops = {"every key": decoder_flops_per_query(cfg, cfg.num_latents)}
        for k, sel in selections.items():
            fn = vae_query_fn(vae, decoded, sel)
            per_query[f"{k} keys"] = time_call(lambda: fn(points)) / len(points)
            flops[f"{k} keys"] = decoder_flops_per_query(cfg, k, sel)
    table = {}
    for name, n in counts.items():
        for attn, seconds in per_query.items():
            table[f"{name}, {attn}"] = {"queries": n, "flops": n * flops[attn], "cpu_seconds": n * seconds}
    base = table["dense, every key"]
    for row in table.values():
        row["flops_cut_vs_dense"] = base["flops"] / row["flops"]
        row["queries_cut_vs_dense"] = base["queries"] / row["queries"]
    return {"resolution": resolution, "safety_resolution": default_safety_resolution(resolution),
            "levels": {"hierarchical frame 1": s1.levels, "banded frame 1": sb.levels},
            "cpu_seconds_per_query": per_query, "flops_per_query": flops, "per_frame": table}


def accuracy_part() -> dict:
    gen, latents = demo_fields_at(96)
    out = {}
    frames = latents[:4]
    for keys in (16, 32, 64):
        flips, worst, total = 0, 0.0, 0
        for lat in frames:
            exact = gen.runtime.frame_query_fn(lat[None])
            points = grid_points(96)[::7]
            a = exact(points)
            b = gen.runtime.frame_query_fn(lat[None], KeySelection(keys))(points)
            flips += int(((a > 0) != (b > 0)).sum())
            worst = max(worst, float((a - b).abs().max()))
            total += len(points)
        out[f"{keys} of 128 keys"] = {"sign_flips": flips / total, "max_field_change": worst, "points": total}
    return out


def main(threads: int = typer.Option(2, help="torch threads"),
         reuse: float = typer.Option(0.47, help="share of sampler steps the step cache reuses (measured on the "
                                     "demo's validation split by benchmarks/accelerations.py)"),
         resolution: int = typer.Option(384, help="decode resolution"),
         out: Path = typer.Option(None, help="write the numbers as JSON here")) -> None:
    """Print the full-size cost model (see the module docstring)."""
    torch.set_num_threads(threads)
    result = {"machine": platform.platform(), "threads": threads,
              "dit_step": dit_part(threads, reuse), "decode": decode_part(threads, resolution),
              "kv_selection_accuracy_demo": accuracy_part()}
    d = result["dit_step"]
    print(f"DiT step (16 frames, CFG): {d['flops_per_step'] / 1e12:.1f} TFLOP, {d['cpu_seconds_per_step']:.0f} CPU-s "
          f"at {d['flop_rate'] / 1e9:.0f} GFLOP/s; with step caching (reuse {reuse:.0%}): "
          f"{d['flops_per_step_with_cache'] / 1e12:.1f} TFLOP, {d['cpu_seconds_per_step_with_cache']:.0f} CPU-s "
          f"({d['step_speedup']:.2f}x)")
    print(f"\nDecode per frame at R = {resolution} (full geometry decoder, 4096 latents):")
    print("| queries, attention | queries | TFLOP | CPU-s | FLOPs cut vs dense |")
    print("|---|---|---|---|---|")
    for name, row in result["decode"]["per_frame"].items():
        print(f"| {name} | {row['queries']:,.0f} | {row['flops'] / 1e12:.2f} | {row['cpu_seconds']:,.0f} | "
              f"{row['flops_cut_vs_dense']:.1f}x |")
    print("\nAdaptive KV selection on the demo VAE (README clip, frames 0-3):")
    for name, row in result["kv_selection_accuracy_demo"].items():
        print(f"  {name}: sign flips {row['sign_flips']:.2e}, max field change {row['max_field_change']:.3f}")
    if out:
        out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    typer.run(main)
