"""Quickstart: a Sculpt4D DiT forward with block-sparse temporal attention on the CPU.

THE MODEL HERE HAS TINY RANDOM WEIGHTS (same code as the released model, small widths): it
shows the API and checks the backends agree; it does not produce meaningful shapes.

    python examples/quickstart.py [--frames 8] [--schedule sculpt4d]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from sdk.models.config import DiTConfig
from sdk.models.flops import estimate_flops
from sdk.models import Sculpt4DDiT
from sdk.sparse import PRESETS, SparsePattern


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--schedule", default="sculpt4d", choices=sorted(PRESETS))
    args = parser.parse_args()

    torch.manual_seed(0)
    base = DiTConfig.tiny()
    cfg = dataclasses.replace(base, temporal=dataclasses.replace(base.temporal, schedule=PRESETS[args.schedule]))
    model = Sculpt4DDiT(cfg).eval()
    for block in model.blocks:  # a fresh module has a zero out_proj; make the temporal path visible
        torch.nn.init.normal_(block.temporal_attn.out_proj.weight, std=0.02)

    T, P = args.frames, cfg.input_size
    latents = torch.randn(1, T, P, cfg.in_channels)
    t = torch.rand(1)
    context = torch.randn(1, T, 17, cfg.context_dim)
    pattern = SparsePattern.for_tokens(T, P, cfg.temporal.block_size, cfg.temporal.schedule)
    print("[tiny random-weight model] " + pattern.describe())

    outputs = {}
    for backend in ("reference", "torch", "auto"):
        model_b = Sculpt4DDiT(dataclasses.replace(
            cfg, temporal=dataclasses.replace(cfg.temporal, attention_backend=backend))).eval()
        model_b.load_state_dict(model.state_dict())
        with torch.no_grad():
            model_b(latents, t, context)  # warm-up (builds the C++ kernel on first use)
            start = time.perf_counter()
            outputs[backend] = model_b(latents, t, context)
            ms = (time.perf_counter() - start) * 1e3
        diff = (outputs[backend] - outputs["reference"]).abs().max().item()
        print(f"  backend {backend:<9} forward {ms:7.1f} ms   max |diff vs reference| = {diff:.2e}")

    report = estimate_flops(num_frames=16, schedule=args.schedule)
    print(f"full-size model at 16 frames: sparse/full network FLOPs = {report.network_ratio:.3f}, "
          f"temporal attention density = {report.density:.3f} (s4d-export flops --frames 16 for the table)")


if __name__ == "__main__":
    main()
