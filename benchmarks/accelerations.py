"""The default fast path vs ``--exact`` on the demo model: time per stage and shape quality.

    python examples/train_demo/train.py data --splits validation,heldout    # once: clips + GT meshes
    python benchmarks/accelerations.py --split validation --seeds 0          # decisions
    python benchmarks/accelerations.py --split heldout --seeds 0,1 --out benchmarks/results_accelerations.json
    python benchmarks/accelerations.py --split validation --variants exact,cache=0.1,cache=0.15,cache=0.2

Every clip of the split runs through ``Generator`` (demo model, its defaults, per-frame topology:
tracking is downstream of every acceleration and unchanged by them) once per variant, in one
process, variants interleaved per clip so load changes hit them alike:

    exact        ``exact=True``: no step cache, no narrow band, no KV selection
    default      ``Generator.accelerations`` as shipped
    cache=X      the default with the step-cache threshold X (0: off)
    band=0|1     the default with the temporal narrow band off / on
    keys=K       the default with adaptive KV selection of K keys (0: off)

Per row: seconds per stage, field queries, reused sampler steps, and Chamfer / IoU / F-score
(``sdk.evaluation.metrics``) against the GT meshes and temporal jitter. The summary gives the mean
± std over sequences and, for every variant, the paired difference to ``exact``. Prints a table;
``--out`` writes the rows and the summary as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdk.evaluation.metrics import evaluate_sequence, temporal_jitter  # noqa: E402
from sdk.generation.pipeline import Generator  # noqa: E402
from sdk.generation.settings import Accelerations  # noqa: E402

DATA = ROOT / "examples" / "train_demo" / "work" / "data"
STAGES = ("frames", "condition", "sample", "decode", "mesh")
QUALITY = ("chamfer", "iou", "fscore", "jitter")


def variant_settings(name: str, default: Accelerations) -> tuple[bool, Accelerations]:
    """``(exact, accelerations)`` of a variant name (see the module docstring)."""
    if name == "exact":
        return True, default
    if name == "default":
        return False, default
    key, _, value = name.partition("=")
    field = {"cache": "step_cache", "band": "temporal_band", "keys": "kv_keys"}.get(key)
    if field is None or not value:
        raise typer.BadParameter(f"unknown variant {name!r}: exact, default, cache=X, band=0|1 or keys=K")
    cast = {"step_cache": float, "temporal_band": lambda v: bool(int(v)), "kv_keys": int}[field]
    extra = {"kv_min_tokens": 0} if field == "kv_keys" else {}  # keys=K also on the demo's 128 tokens
    return False, dataclasses.replace(default, **{field: cast(value)}, **extra)


def run_clip(gen: Generator, clip: Path, gt: list, seed: int, exact: bool) -> tuple[dict, list]:
    t0 = time.perf_counter()
    seq = gen(str(clip), seed=seed, topology="per-frame", exact=exact)
    total = time.perf_counter() - t0
    accel = seq.stats["acceleration"]
    report = evaluate_sequence(seq.meshes, gt, seed=seed, jitter_points=0)
    jitter = float("nan") if any(len(m.faces) == 0 for m in seq.meshes) else \
        temporal_jitter(seq.meshes, 10_000, seed, target_points=100_000)
    return {**{s: seq.timings[s] for s in STAGES}, "total": total,
            "sample+decode": seq.timings["sample"] + seq.timings["decode"],
            "field_queries": accel["field_queries"], "reused_steps": accel["step_cache"].get("reused", 0),
            **{k: report["mean"][k] for k in QUALITY[:3]}, "jitter": jitter}, seq.meshes


def to_exact(meshes: list, exact: list, seed: int) -> dict:
    """Chamfer and IoU of a variant's meshes against the exact run's (the approximation's own error)."""
    try:
        m = evaluate_sequence(meshes, exact, seed=seed, jitter_points=0)["mean"]
    except ValueError:  # the exact run left a frame empty
        return {"chamfer_to_exact": float("nan"), "iou_to_exact": float("nan")}
    return {"chamfer_to_exact": m["chamfer"], "iou_to_exact": m["iou"]}


def summarize(rows: list[dict], variants: list[str]) -> dict:
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("variant", "sequence", "seed")))
    out = {}
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        per_seq: dict[str, list[dict]] = {}
        for r in mine:
            per_seq.setdefault(r["sequence"], []).append(r)
        out[v] = {}
        for k in keys:
            means = [float(np.nanmean([r.get(k, np.nan) for r in rs])) for rs in per_seq.values()]
            out[v][k] = {"mean": float(np.nanmean([r.get(k, np.nan) for r in mine])),
                         "std": float(np.std(means, ddof=1)) if len(means) > 1 else 0.0}
        if v != "exact" and "exact" in variants:
            base = {(r["sequence"], r["seed"]): r for r in rows if r["variant"] == "exact"}
            diffs = {k: [r[k] - base[(r["sequence"], r["seed"])][k] for r in mine] for k in QUALITY}
            out[v]["vs_exact"] = {k: {"mean": float(np.nanmean(d)),
                                      "se": float(np.nanstd(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0}
                                  for k, d in diffs.items()}
            speed = [base[(r["sequence"], r["seed"])]["sample+decode"] / r["sample+decode"] for r in mine]
            out[v]["sample+decode_speedup"] = {"mean": float(np.mean(speed)), "min": float(np.min(speed))}
    return out


def print_table(summary: dict) -> None:
    cols = list(STAGES) + ["total", "field_queries", "reused_steps", "chamfer", "iou", "jitter", "chamfer_to_exact"]
    print("| variant | " + " | ".join(cols) + " | sample+decode speed-up |")
    print("|" + "---|" * (len(cols) + 2))
    for v, s in summary.items():
        cells = []
        for c in cols:
            if c not in s:
                cells.append("-")
                continue
            m, d = s[c]["mean"], s[c]["std"]
            cells.append(f"{m:,.0f}" if c == "field_queries" else f"{m:.1f}" if c == "reused_steps"
                         else f"{m:.4f} ± {d:.4f}" if c in QUALITY + ("chamfer_to_exact",) else f"{m:.2f} ± {d:.2f}")
        speed = s.get("sample+decode_speedup")
        cells.append(f"{speed['mean']:.2f}x (min {speed['min']:.2f}x)" if speed else "1 (reference)")
        print(f"| {v} | " + " | ".join(cells) + " |")
    for v, s in summary.items():
        if "vs_exact" in s:
            d = s["vs_exact"]
            print(f"{v} - exact: " + ", ".join(f"{k} {d[k]['mean']:+.4f} ± {d[k]['se']:.4f}" for k in QUALITY))


def main(split: str = typer.Option("validation", help="validation (decisions) or heldout (the final table)"),
         seeds: str = typer.Option("0", help="sampler seeds, comma-separated"),
         variants: str = typer.Option("exact,default", help="comma-separated (see the module docstring)"),
         limit: int = typer.Option(0, help="only the first N clips (0: all)"),
         threads: int = typer.Option(2, help="torch threads"),
         out: Path = typer.Option(None, help="write rows + summary as JSON here")) -> None:
    """Time and score the default accelerations against --exact on a split of the demo's data."""
    torch.set_num_threads(threads)
    split_dir = DATA / split
    clips = sorted(split_dir.glob("*.mp4"))[: limit or None]
    if not clips:
        raise typer.BadParameter(f"no clips in {split_dir}: run examples/train_demo/train.py data --splits {split}")
    names = [v.strip() for v in variants.split(",") if v.strip()]
    gen = Generator.default()
    shipped = gen.accelerations
    settings = {v: variant_settings(v, shipped) for v in names}
    rows = []
    for clip in clips:
        gt = [trimesh.load(p, process=False) for p in sorted((split_dir / clip.stem).glob("frame_*.ply"))]
        for seed in (int(s) for s in seeds.split(",")):
            reference = None
            for v in names:
                exact, gen.accelerations = settings[v]
                row, meshes = run_clip(gen, clip, gt, seed, exact)
                if v == "exact":
                    reference = meshes
                if reference is not None:
                    row.update(to_exact(meshes, reference, seed))
                rows.append({"variant": v, "sequence": clip.stem, "seed": seed, **row})
                print(f"{clip.stem} seed {seed} {v}: sample+decode {rows[-1]['sample+decode']:.2f} s, "
                      f"chamfer {rows[-1]['chamfer']:.4f}, iou {rows[-1]['iou']:.3f}", file=sys.stderr)
    summary = summarize(rows, names)
    print(f"{split} split, {len(clips)} clips x seeds {seeds}; {platform.processor() or platform.machine()}, "
          f"{threads} torch threads; shipped accelerations {dataclasses.asdict(shipped)}")
    print_table(summary)
    if out:
        out.write_text(json.dumps({"split": split, "clips": len(clips), "seeds": seeds, "threads": threads,
                                   "machine": platform.platform(), "accelerations": dataclasses.asdict(shipped),
                                   "variants": {v: {"exact": settings[v][0],
                                                    "accelerations": dataclasses.asdict(settings[v][1])}
                                                for v in names},
                                   "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    typer.run(main)
