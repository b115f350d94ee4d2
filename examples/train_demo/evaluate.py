"""Held-out evaluation of the demo model: sparse (as trained) vs per-frame vs full attention.

    python examples/train_demo/evaluate.py [--model default] [--work examples/train_demo/work]

Every held-out sequence (never trained on) goes through the whole pipeline from its mp4
(decode, border-key matting, one crop, conditioner, sampler, hierarchical decode, marching
cubes) with the SAME weights, seed and settings, varying only the temporal attention:

    sparse (as trained)           the sculpt4d schedule the model was trained with
    per-frame, shared noise       temporal module disabled: each frame generated on its own
                                  (from the same initial noise tensor)
    per-frame, independent noise  the same with independent noise per frame (classic per-frame)
    full attention                full temporal attention (schedule "full") instead of block-sparse

plus the ceiling: "vae-reconstruction" encodes the GT surface and decodes it (no diffusion).
Each is scored against the ground-truth watertight meshes with ``sdk.metrics.evaluate_sequence``
(Chamfer, F-score@0.01, voxel IoU@64; no registration: the model predicts in the sequence's
normalised frame) plus temporal jitter. Prints a markdown table; writes ``eval.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
import typer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sdk.config import TemporalConfig  # noqa: E402
from sdk.data import encode_sequence  # noqa: E402
from sdk.decode import decode_frame  # noqa: E402
from sdk.mcubes import marching_cubes  # noqa: E402
from sdk.metrics import evaluate_sequence  # noqa: E402
from sdk.pipeline import Generator  # noqa: E402

# name -> (temporal override, initial noise)
VARIANTS = {
    "sparse (as trained)": (None, "shared"),
    "per-frame, shared noise": (TemporalConfig(enabled=False), "shared"),
    "per-frame, independent noise": (TemporalConfig(enabled=False), "independent"),
    "full attention": (TemporalConfig(schedule="full", block_size=32), "shared"),
}


def score(variant: str, sequence: str, meshes, gt, seconds: float) -> dict:
    """Mean metrics of one sequence (F-score at 0.01 and at 0.05) and temporal jitter."""
    report = evaluate_sequence(meshes, gt)
    loose = evaluate_sequence(meshes, gt, threshold=0.05)
    row = {"sequence": sequence, "seconds": seconds, **report["mean"], "fscore_05": loose["mean"]["fscore"],
           "jitter": report["jitter"]["pred"], "jitter_gt": report["jitter"]["gt"]}
    print(f"{variant:28s} {sequence:22s} chamfer {row['chamfer']:.4f} iou {row['iou']:.3f} f@0.01 {row['fscore']:.3f} "
          f"f@0.05 {row['fscore_05']:.3f} jitter {row['jitter']:.4f} (gt {row['jitter_gt']:.4f}) {seconds:.1f}s",
          flush=True)
    return row


def main(model: str = "default", work: Path = Path(__file__).parent / "work", limit: int = 0,
         steps: int = 0, resolution: int = 0, seed: int = 0) -> None:
    heldout = work / "data" / "heldout"
    videos = sorted(heldout.glob("*.mp4"))[: limit or None]
    if not videos:
        raise SystemExit(f"no held-out videos in {heldout}; run train.py data first")
    results: dict[str, list[dict]] = {"vae-reconstruction": [], **{v: [] for v in VARIANTS}}
    # The ceiling: encode the GT surface (shared-noise encoding) and decode, no diffusion.
    gen = Generator.from_pretrained(model, backend="torch")
    res = resolution or gen.defaults["resolution"]
    for video in videos:
        gt = [trimesh.load(p, process=False) for p in sorted((heldout / video.stem).glob("frame_*.ply"))]
        with np.load(heldout / f"{video.stem}.npz") as z:
            latents = encode_sequence(gen.vae, z["surface"], seed=seed)
        t0 = time.perf_counter()
        with torch.no_grad():
            meshes = [marching_cubes(decode_frame(gen.vae, gen.vae.decode(lat[None]), res)[0]) for lat in latents]
        results["vae-reconstruction"].append(score("vae-reconstruction", video.stem, meshes, gt,
                                                   time.perf_counter() - t0))
    for name, (temporal, noise) in VARIANTS.items():
        gen = Generator.from_pretrained(model, backend="torch", temporal=temporal)
        for video in videos:
            gt = [trimesh.load(p, process=False) for p in sorted((heldout / video.stem).glob("frame_*.ply"))]
            t0 = time.perf_counter()
            seq = gen(str(video), num_frames=len(gt), seed=seed, steps=steps or None, resolution=resolution or None,
                      noise=noise)
            seconds = time.perf_counter() - t0
            results[name].append(score(name, video.stem, seq.meshes, gt, seconds))
    summary = {}
    for name, rows in results.items():
        summary[name] = {k: float(np.mean([r[k] for r in rows]))
                         for k in ("chamfer", "iou", "fscore", "fscore_05", "jitter", "jitter_gt", "seconds")}
    lines = ["| variant | Chamfer (lower better) | IoU | F-score@0.01 | F-score@0.05 | jitter (GT) | s / sequence |",
             "|---|---|---|---|---|---|---|"]
    for name, m in summary.items():
        lines.append(f"| {name} | {m['chamfer']:.4f} | {m['iou']:.3f} | {m['fscore']:.3f} | {m['fscore_05']:.3f} | "
                     f"{m['jitter']:.4f} ({m['jitter_gt']:.4f}) | {m['seconds']:.1f} |")
    table = "\n".join(lines)
    print(table)
    out = work / "eval.json"
    out.write_text(json.dumps({"summary": summary, "per_sequence": results, "table": table,
                               "settings": {"model": model, "seed": seed, "steps": steps or "model default",
                                            "resolution": resolution or "model default",
                                            "sequences": [v.stem for v in videos]}}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
