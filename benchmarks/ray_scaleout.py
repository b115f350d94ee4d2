"""Clips per minute: ``s4d-convert`` in one process vs ``s4d-convert --ray`` with 1 and 2 actors.

    python benchmarks/ray_scaleout.py                       # the demo model, the five held-out sample clips
    python benchmarks/ray_scaleout.py --model tiny --clips 8

Every run is a fresh ``s4d-convert`` process on the same clips (the shipped samples, repeated
if --clips asks for more), writing a fresh output directory. The table gives wall time of the
whole command, clips per minute, the mean time of one clip's own conversion (its ``seconds`` in
the summary), the overhead (wall time minus the clips' own time divided among the workers:
process start, model loading, and for Ray the cluster and its actors), and for Ray the local
cluster's start-up (``ray.init``, from the --json summary). Tests never run this; it needs the
[ray] extra.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIPS = sorted((ROOT / "examples" / "data").glob("*_2000*.mp4"))
MODELS = {
    "demo": [],  # the embedded demo model at its own defaults (the README main command)
    "tiny": ["--model", "tiny-random", "--frames", "8", "--steps", "4", "--resolution", "48"],
}
SETUPS = {"cli": [], "ray-1": ["--ray", "--workers", "1"], "ray-1x2cpu": ["--ray", "--workers", "1", "--cpus-per-worker", "2"],
          "ray-2": ["--ray", "--workers", "2"]}


def run(setup: str, model: str, clips: list[Path], work: Path) -> dict:
    out = work / f"out-{setup}"
    cmd = [sys.executable, "-c", "from sdk.cli.convert import main; main()", *map(str, clips), "-o", str(out),
           "--json", "--quiet", "--no-preview", "--no-viewer", *MODELS[model], *SETUPS[setup]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{setup} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    shutil.rmtree(out)
    seconds = [item["seconds"] for item in summary["items"]]
    ray = summary.get("ray", {})
    workers = ray.get("workers", 1)
    return {"setup": setup, "clips": len(seconds), "wall_s": wall, "clips_per_min": 60 * len(seconds) / wall,
            "clip_s_mean": sum(seconds) / len(seconds), "overhead_s": wall - sum(seconds) / workers,
            "connect_s": ray.get("connect_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="demo")
    parser.add_argument("--clips", type=int, default=len(CLIPS))
    parser.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=list(SETUPS))
    args = parser.parse_args()
    clips = [CLIPS[i % len(CLIPS)] for i in range(args.clips)]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="s4d-ray-bench-") as tmp:
        work = Path(tmp)
        linked = []
        for i, clip in enumerate(clips):  # distinct names: one output directory per clip
            link = work / f"clip{i:03d}{clip.suffix}"
            link.symlink_to(clip)
            linked.append(link)
        rows = [run(setup, args.model, linked, work) for setup in args.setups]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, model {args.model}, "
          f"{len(clips)} clips, 1-minute load average before the runs: {load_before:.2f}")
    print(f"{'setup':<11} {'wall s':>8} {'clips/min':>10} {'mean clip s':>12} {'overhead s':>11} {'ray start s':>12}")
    for r in rows:
        start = f"{r['connect_s']:.1f}" if r["connect_s"] is not None else "-"
        print(f"{r['setup']:<11} {r['wall_s']:>8.1f} {r['clips_per_min']:>10.2f} {r['clip_s_mean']:>12.1f} "
              f"{r['overhead_s']:>11.1f} {start:>12}")


if __name__ == "__main__":
    main()
