"""Accuracy and speed of topology-consistent tracking (sdk.tracking) against ground truth.

    python benchmarks/tracking.py                       # 20 held-out sequences per motion (the README table)
    python benchmarks/tracking.py --sequences 5 --motions bend_twist scaling
    python benchmarks/tracking.py --demo 5              # also through the demo model: video -> meshes -> tracking
    python benchmarks/tracking.py --speed               # seconds per frame for 10k, 50k and 200k-vertex templates

Every sequence of ``sdk.data.synthetic`` has one true topology, so where each surface point of
frame 0 is at frame t is known (``Sequence4D.carry``). The tracker gets what a model outputs:
independent watertight marching-cubes meshes per frame (R = 96, like the demo's decode). Per
sequence, with v the tracked vertices and g the true positions of the surface points v_0 lies on:

    drift    = mean over vertices and frames of |(v_t - v_0) - (g_t - g_0)| / (frame-0 box diagonal)
    baseline = the same for "frame 0 copied" (v_t = v_0): how far the surface really moved
    fit      = mean over frames of the symmetric mean surface distance to that frame's own mesh

Seeds 910000 + i are used by nothing else (training and evaluation take theirs elsewhere).
``merge_split`` sequences change topology on purpose: the table reports how many of their
frames were flagged, and their drift is not part of the target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_MOTIONS = ("rigid", "articulated", "bend_twist", "scaling")
SEED0 = 910000


def drift_of(vertices: list, truth: list) -> tuple[float, float]:
    """(drift, baseline) of tracked ``vertices`` against true positions ``truth`` (frame 0 first)."""
    v0, g0 = vertices[0], truth[0]
    diag = float(np.linalg.norm(v0.max(0) - v0.min(0)))
    drift = [np.linalg.norm((v - v0) - (g - g0), axis=1).mean() / diag for v, g in zip(vertices[1:], truth[1:])]
    base = [np.linalg.norm(g - g0, axis=1).mean() / diag for g in truth[1:]]
    return float(np.mean(drift)), float(np.mean(base))


def one_sequence(args: tuple[str, int, int, int]) -> dict:
    from sdk.data.synthetic import random_sequence
    from sdk.tracking import track_meshes

    motion, index, frames, resolution = args
    seq = random_sequence(SEED0 + index, motion, frames)
    meshes = [seq.watertight_mesh(t, resolution) for t in range(frames)]
    t0 = time.perf_counter()
    tracked = track_meshes(meshes)
    seconds = time.perf_counter() - t0
    truth = [seq.carry(tracked.vertices[0], 0, t) for t in range(frames)]
    drift, base = drift_of(tracked.vertices, truth)
    fits = [f.fit for f in tracked.frames[1:] if f.fit is not None]
    return {"motion": motion, "seed": SEED0 + index, "vertices": int(len(tracked.vertices[0])), "drift": drift,
            "baseline": base, "fit": float(np.mean(fits)), "flagged": len(tracked.flagged),
            "frames": frames - 1, "seconds": seconds}


def demo_sequence(args: tuple[str, int]) -> dict:
    """Video of a held-out sequence -> the demo model -> tracking; drift against the true motion of
    the ground-truth surface point closest to each tracked vertex of frame 0."""
    import torch

    from sdk.data.synthetic import random_sequence, render_frames
    from sdk.generation.pipeline import Generator
    from sdk.tracking import track_meshes
    from sdk.tracking.closest import SurfaceIndex

    torch.set_num_threads(1)
    motion, index = args
    seq = random_sequence(SEED0 + 500 + index, motion, 16)
    generator = Generator.default()
    out = generator(render_frames(seq), topology="per-frame")
    t0 = time.perf_counter()
    tracked = track_meshes(out.meshes)
    seconds = time.perf_counter() - t0
    gt0 = seq.watertight_mesh(0, 96)
    _, anchor = SurfaceIndex(gt0.vertices, gt0.faces).closest(tracked.vertices[0])
    truth = [seq.carry(anchor, 0, t) for t in range(16)]
    drift, base = drift_of(tracked.vertices, truth)
    fits = [f.fit for f in tracked.frames[1:] if f.fit is not None]
    return {"motion": motion, "seed": SEED0 + 500 + index, "vertices": int(len(tracked.vertices[0])),
            "drift": drift, "baseline": base, "fit": float(np.mean(fits)), "flagged": len(tracked.flagged),
            "frames": 15, "seconds": seconds}


def table(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "",
             "| motion | sequences | drift mean ± std | drift median | frame 0 copied (mean) | fit mean | "
             "flagged frames | seconds / sequence |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    groups = {}
    for row in rows:
        groups.setdefault(row["motion"], []).append(row)
    targets = [r for r in rows if r["motion"] in TARGET_MOTIONS]
    if len(groups) > 1 and targets:
        groups["all four target motions"] = targets
    for motion, group in groups.items():
        d = [r["drift"] for r in group]
        lines.append(f"| {motion} | {len(group)} | {np.mean(d):.4f} ± {np.std(d):.4f} | {np.median(d):.4f} | "
                     f"{np.mean([r['baseline'] for r in group]):.4f} | {np.mean([r['fit'] for r in group]):.5f} | "
                     f"{sum(r['flagged'] for r in group)} / {sum(r['frames'] for r in group)} | "
                     f"{np.mean([r['seconds'] for r in group]):.2f} |")
    return "\n".join(lines)


def speed(sizes=(10_000, 50_000, 200_000), frames: int = 4) -> str:
    """Seconds per tracked frame for templates of about ``sizes`` vertices (a bend_twist bar's
    marching-cubes meshes, subdivided until they reach the size; every frame its own topology)."""
    import trimesh

    from sdk.data.synthetic import random_sequence
    from sdk.tracking import track_meshes

    seq = random_sequence(SEED0 + 999, "bend_twist", frames)
    base = [seq.watertight_mesh(t, 64) for t in range(frames)]  # ~2.8k vertices: x4 per subdivision
    lines = ["### Speed", "", "| template vertices | faces | seconds / frame | peak extra memory |", "| --- | --- | --- | --- |"]
    for size in sizes:
        meshes = []
        for m in base:
            v, f = np.asarray(m.vertices), np.asarray(m.faces)
            while len(v) < size * 0.7:
                v, f = trimesh.remesh.subdivide(v, f)
            meshes.append(trimesh.Trimesh(v, f, process=False))
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        track_meshes(meshes)
        per_frame = (time.perf_counter() - t0) / (frames - 1)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        lines.append(f"| {len(meshes[0].vertices)} | {len(meshes[0].faces)} | {per_frame:.2f} | {grown:.0f} MB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=20, help="held-out sequences per motion")
    parser.add_argument("--motions", nargs="+", default=[*TARGET_MOTIONS, "merge_split"])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--jobs", type=int, default=1, help="sequences tracked at once (processes)")
    parser.add_argument("--demo", type=int, default=0, help="sequences per target motion through the demo model")
    parser.add_argument("--speed", action="store_true", help="only the template-size speed table")
    parser.add_argument("--json", type=Path, help="also write every row to this file")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}\n")
    if args.speed:
        print(speed())
        return
    work = [(m, i, args.frames, args.resolution) for m in args.motions for i in range(args.sequences)]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = []
        for row in pool.map(one_sequence, work):
            rows.append(row)
            print(f"{row['motion']:12s} {row['seed']} drift {row['drift']:.4f} baseline {row['baseline']:.4f} "
                  f"fit {row['fit']:.5f} flagged {row['flagged']} {row['seconds']:.1f} s", file=sys.stderr, flush=True)
    if rows:
        print(table(rows, f"Synthetic held-out sequences ({args.frames} frames, marching cubes R = {args.resolution})"))
    demo_rows = []
    if args.demo:
        with ProcessPoolExecutor(args.jobs) as pool:
            demo_rows = list(pool.map(demo_sequence, [(m, i) for m in TARGET_MOTIONS for i in range(args.demo)]))
        print()
        print(table(demo_rows, "Through the demo model (video -> per-frame meshes -> tracking)"))
    if args.json:
        args.json.write_text(json.dumps({"synthetic": rows, "demo": demo_rows}, indent=1))


if __name__ == "__main__":
    main()
