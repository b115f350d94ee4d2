"""Evaluate the demo model on a split it never trained on: the temporal model vs per-frame generation.

    python examples/train_demo/evaluate.py --split heldout --seeds 0,1 --out examples/train_demo/eval.json
    python examples/train_demo/evaluate.py --rebuild examples/train_demo/eval.json   # summary from its rows

Every sequence of the split goes through the whole pipeline from its mp4 (decode, border-key
matting, one crop, conditioner, sampler, hierarchical decode, marching cubes) at the model's
default settings, with the SAME weights and seed in every variant; only the temporal attention
and the initial noise change:

    sparse                  the sculpt4d block-sparse schedule the model was trained with
    per-frame-shared        temporal module disabled: each frame generated on its own, all from
                            the same initial noise tensor
    per-frame-independent   the same with independent noise per frame (classic per-frame)
    full                    full temporal attention (schedule "full") instead of block-sparse
    recon                   the ceiling: encode the GT surface and decode it (no diffusion)

Metrics (``sdk.evaluation.metrics``, no registration: the model predicts in the sequence's normalised
frame): Chamfer, F-score@0.01 and voxel IoU@64 per frame, averaged over the frames, and temporal
jitter from 10k query samples to ``--jitter-points`` samples of the neighbouring frame.

Jitter's sampling noise: per sequence we also score a STATIC sequence (GT's middle frame repeated,
sampled independently per frame). That is the value of a perfectly still object, and an upper
bound on what sampling adds to a moving one: the nearest-sample error adds fully only when
frames do not move and shrinks as the motion between frames grows. Smooth GT motion has a true
jitter near zero, so GT can sit below this value; predictions well above it are measured
jitter, not sampling noise. (Distances to the exact neighbouring surface instead of its samples
would have no floor at all and make GT's jitter meaningful; not done yet: too slow on 2 cores.)

Summary: mean over every (sequence, seed) run, the sample standard deviation (ddof=1) over
sequences of each sequence's mean over seeds, the mean of each seed, and for every variant the
paired difference to ``sparse`` (mean over sequences and its standard error). Rows are appended
to ``OUT.rows.jsonl`` (beside the output) as they arrive. The validation split decides; the held-out
split is for the final table only.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
import typer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sdk.models.config import TemporalConfig  # noqa: E402
from sdk.data import encode_sequence  # noqa: E402
from sdk.generation.decode import decode_frame  # noqa: E402
from sdk.generation.mcubes import marching_cubes  # noqa: E402
from sdk.evaluation.metrics import evaluate_sequence, temporal_jitter  # noqa: E402
from sdk.generation.pipeline import Generator  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from train import seed_of, split_seeds  # noqa: E402

# key -> (label, temporal override, initial noise)
VARIANTS = {
    "sparse": ("sparse (as trained)", None, "shared"),
    "per-frame-shared": ("per-frame, shared noise", TemporalConfig(enabled=False), "shared"),
    "per-frame-independent": ("per-frame, independent noise", TemporalConfig(enabled=False), "independent"),
    "full": ("full attention", TemporalConfig(schedule="full", block_size=32), "shared"),
}
METRICS = ("chamfer", "iou", "fscore", "jitter", "seconds")


JITTER_QUERY_POINTS = 10_000  # per frame; distances go to --jitter-points samples of the other frame


def _gt(split_dir: Path, name: str) -> list:
    return [trimesh.load(p, process=False) for p in sorted((split_dir / name).glob("frame_*.ply"))]


def _jitter(meshes, points: int, seed: int) -> float:
    if any(len(m.faces) == 0 for m in meshes):  # a frame without surface: no jitter to measure
        return float("nan")
    return temporal_jitter(meshes, JITTER_QUERY_POINTS, seed, target_points=points)


_GENERATORS: dict = {}


def _generator(model: str, key: str):
    """One Generator per variant and worker process, loaded on first use."""
    if key not in _GENERATORS:
        temporal = VARIANTS[key][1] if key in VARIANTS else None
        _GENERATORS[key] = Generator.from_pretrained(model, backend="torch", temporal=temporal)
    return _GENERATORS[key]


def run_job(job: tuple) -> dict:
    """One unit of work: ("gt", seq) -> GT's jitter and a static object's; (variant, seq, seed) -> a row."""
    torch.set_num_threads(1)  # the workers share the cores; the metrics are single-threaded anyway
    kind, model, split_dir, name, seed, points, guidance = job
    gt = _gt(Path(split_dir), name)
    if kind == "gt":
        # A STATIC sequence (GT's middle frame repeated) sampled independently per frame.
        return {"sequence": name, "motion": name.rsplit("_", 1)[0], "jitter_gt": _jitter(gt, points, 0),
                "jitter_static": _jitter([gt[len(gt) // 2]] * len(gt), points, 0)}
    gen = _generator(model, kind)
    t0 = time.perf_counter()
    if kind == "recon":
        with np.load(Path(split_dir) / f"{name}.npz") as z:
            surface = z["surface"]
        res = gen.defaults["resolution"]
        with torch.no_grad():
            latents = encode_sequence(gen.vae, surface, seed=seed)
            meshes = [marching_cubes(decode_frame(gen.vae, gen.vae.decode(lat[None]), res)[0]) for lat in latents]
    else:
        meshes = gen(str(Path(split_dir) / f"{name}.mp4"), num_frames=len(gt), seed=seed, noise=VARIANTS[kind][2],
                     guidance=guidance, progress=False).meshes
    seconds = time.perf_counter() - t0
    report = evaluate_sequence(meshes, gt, seed=seed, jitter_points=0)
    return {"variant": kind, "sequence": name, "motion": name.rsplit("_", 1)[0], "seed": seed,
            "chamfer": report["mean"]["chamfer"], "iou": report["mean"]["iou"], "fscore": report["mean"]["fscore"],
            "jitter": _jitter(meshes, points, seed), "seconds": seconds}


def summarize(rows: list[dict], keys=METRICS) -> dict:
    """Mean over runs, sample std over sequences (each sequence's mean over seeds), mean per seed.
    NaN (a frame without surface) is left out of the means."""
    by_seq: dict[str, list[dict]] = {}
    for r in rows:
        by_seq.setdefault(r["sequence"], []).append(r)
    seeds = sorted({r["seed"] for r in rows})
    out = {}
    for k in keys:
        per_seq = [np.nanmean([r[k] for r in rs]) for rs in by_seq.values()]
        out[k] = {"mean": float(np.nanmean([r[k] for r in rows])),
                  "std_over_sequences": float(np.nanstd(per_seq, ddof=1)) if len(per_seq) > 1 else float("nan"),
                  "per_seed": {str(s): float(np.nanmean([r[k] for r in rows if r["seed"] == s])) for s in seeds}}
    return out


def paired_difference(rows: list[dict], variant: str, baseline: str, keys=("chamfer", "iou", "fscore", "jitter")):
    """variant minus baseline per sequence (means over seeds): mean over sequences and its
    standard error. Pairing removes the spread between sequences that both rows share."""
    out = {}
    for k in keys:
        diffs = []
        for name in sorted({r["sequence"] for r in rows}):
            a = [r[k] for r in rows if r["variant"] == variant and r["sequence"] == name]
            b = [r[k] for r in rows if r["variant"] == baseline and r["sequence"] == name]
            if a and b:
                diffs.append(np.nanmean(a) - np.nanmean(b))
        diffs = np.array(diffs)
        out[k] = {"mean": float(np.nanmean(diffs)), "standard_error":
                  float(np.nanstd(diffs, ddof=1) / np.sqrt(np.sum(~np.isnan(diffs)))) if len(diffs) > 1 else float("nan"),
                  "sequences": int(len(diffs))}
    return out


def write_report(rows: list[dict], gt_rows: list[dict], wanted: list[str], settings: dict, command: str,
                 target: Path) -> str:
    """Summary, table and every row as one JSON file (written to a temp file, then renamed)."""
    summary = {v: summarize([r for r in rows if r["variant"] == v]) for v in wanted}
    paired = {f"{v} - sparse": paired_difference(rows, v, "sparse") for v in wanted
              if v not in ("sparse", "recon") and "sparse" in wanted}
    ground_truth = {k: {"mean": float(np.mean([g[k] for g in gt_rows])),
                        "std_over_sequences": float(np.std([g[k] for g in gt_rows], ddof=1))}
                    for k in ("jitter_gt", "jitter_static")}
    motions = sorted({g["motion"] for g in gt_rows})
    by_motion = {v: {m: {k: float(np.nanmean([r[k] for r in rows if r["variant"] == v and r["motion"] == m]))
                         for k in ("chamfer", "iou", "jitter")} for m in motions} for v in wanted}
    by_motion["ground truth"] = {m: {k: float(np.mean([g[k] for g in gt_rows if g["motion"] == m]))
                                     for k in ("jitter_gt", "jitter_static")} for m in motions}

    def cell(m: dict, k: str, digits: int) -> str:
        return f"{m[k]['mean']:.{digits}f} ± {m[k]['std_over_sequences']:.{digits}f}"

    lines = ["| variant | Chamfer (lower better) | IoU | F-score@0.01 | jitter (lower smoother) | s / sequence |",
             "|---|---|---|---|---|---|"]
    for v in wanted:
        m = summary[v]
        label = "VAE reconstruction (ceiling)" if v == "recon" else VARIANTS[v][0]
        lines.append(f"| {label} | {cell(m, 'chamfer', 4)} | {cell(m, 'iou', 3)} | {cell(m, 'fscore', 3)} | "
                     f"{cell(m, 'jitter', 4)} | {m['seconds']['mean']:.1f} |")
    lines.append(f"| ground truth | | | | {cell(ground_truth, 'jitter_gt', 4)} | |")
    lines.append(f"| a static object (sampling noise, upper bound) | | | | {cell(ground_truth, 'jitter_static', 4)} | |")
    table = "\n".join(lines)
    print(table)
    for name, d in paired.items():
        print(f"{name}: " + ", ".join(f"{k} {v['mean']:+.4f} ± {v['standard_error']:.4f}" for k, v in d.items()))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    tmp.write_text(json.dumps({
        "command": command, "table": table, "summary": summary, "paired_difference": paired,
        "ground_truth": ground_truth, "by_motion": by_motion, "settings": settings,
        "per_sequence": rows, "ground_truth_per_sequence": gt_rows}, indent=2))
    tmp.rename(target)
    print(f"wrote {target}")
    return table


def rebuild(path: Path, out: Path | None) -> None:
    """Recompute summary and table of an eval.json from its rows, keeping its command and settings."""
    data = json.loads(path.read_text())
    gt_rows = [{**g, "jitter_static": g.get("jitter_static", g.get("jitter_floor"))} for g in
               data["ground_truth_per_sequence"]]
    for g in gt_rows:
        g.pop("jitter_floor", None)
        g.setdefault("motion", g["sequence"].rsplit("_", 1)[0])
    rows = data["per_sequence"]
    wanted = data["settings"].get("variants") or list(dict.fromkeys(r["variant"] for r in rows))
    settings = {**data["settings"], "variants": wanted,
                "summary": "evaluate.py --rebuild: mean, sample std (ddof=1) over sequences, paired differences"}
    write_report(rows, gt_rows, wanted, settings, data["command"], out or path)


def main(model: str = typer.Option("default", help="model directory or 'default' (the embedded demo)"),
         work: Path = typer.Option(Path(__file__).parent / "work", help="train.py's work directory"),
         split: str = typer.Option("validation", help="validation (decisions) or heldout (final table)"),
         seeds: str = typer.Option("0,1", help="sampler seeds, comma-separated"),
         variants: str = typer.Option("recon,sparse,per-frame-shared", help="comma-separated: recon, "
                                      + ", ".join(VARIANTS)),
         jitter_points: int = typer.Option(200_000, help="target samples per frame for jitter (queries: "
                                           f"{JITTER_QUERY_POINTS}); sets the sampling floor"),
         recon_all_seeds: bool = typer.Option(False, help="the VAE ceiling with every seed (default: the first)"),
         workers: int = typer.Option(2, help="processes (one torch thread each)"),
         guidance: float = typer.Option(None, help="classifier-free guidance (default: the model's)"),
         limit: int = typer.Option(0, help="only the first N sequences (0: all)"),
         out: Path = typer.Option(None, help="where eval.json goes (default: WORK/eval_SPLIT.json)"),
         rebuild_from: Path = typer.Option(None, "--rebuild", help="only recompute the summary of this "
                                           "eval.json from its rows (written to --out, default: in place)")) -> None:
    if rebuild_from is not None:
        return rebuild(rebuild_from, out)
    if split not in ("validation", "heldout"):
        raise typer.BadParameter(f"--split must be validation or heldout, got {split!r}")
    split_dir = work / "data" / split
    own = set(split_seeds(split))
    videos = sorted(split_dir.glob("*.mp4"))
    foreign = [v.name for v in videos if seed_of(v.stem) not in own]
    if foreign:  # e.g. an old work directory whose "heldout" seeds are this recipe's validation split
        raise SystemExit(f"{split_dir} holds videos outside the recipe's {split} seeds: {foreign[:3]}")
    if len(videos) != len(own):
        raise SystemExit(f"{len(videos)} of {len(own)} {split} videos in {split_dir}; run `train.py data` first")
    videos = videos[: limit or None]
    seed_list = [int(s) for s in seeds.split(",")]
    wanted = variants.split(",")
    unknown = [v for v in wanted if v != "recon" and v not in VARIANTS]
    if unknown:
        raise typer.BadParameter(f"unknown variant(s) {unknown}; expected recon or one of {list(VARIANTS)}")
    jobs = [("gt", model, str(split_dir), v.stem, 0, jitter_points, None) for v in videos]
    for key in wanted:
        jobs += [(key, model, str(split_dir), v.stem, seed, jitter_points, guidance) for v in videos
                 for seed in (seed_list[:1] if key == "recon" and not recon_all_seeds else seed_list)]
    rows: list[dict] = []
    gt_rows: list[dict] = []
    t0 = time.time()
    target = out or work / f"eval_{split}.json"
    log = target.with_suffix(".rows.jsonl")
    log.parent.mkdir(parents=True, exist_ok=True)
    with mp.get_context("spawn").Pool(workers) as pool, log.open("a") as rows_file:
        for i, row in enumerate(pool.imap_unordered(run_job, jobs), 1):
            (gt_rows if "jitter_gt" in row else rows).append(row)
            rows_file.write(json.dumps(row) + "\n")  # nothing is lost if a later job fails
            rows_file.flush()
            if "jitter_gt" in row:
                text = f"jitter {row['jitter_gt']:.4f} (static object {row['jitter_static']:.4f})"
            else:
                text = (f"seed {row['seed']} chamfer {row['chamfer']:.4f} iou {row['iou']:.3f} f@0.01 "
                        f"{row['fscore']:.3f} jitter {row['jitter']:.4f} {row['seconds']:.1f}s")
            print(f"[{i}/{len(jobs)} {time.time() - t0:.0f}s] {row.get('variant', 'ground truth'):22s} "
                  f"{row['sequence']:22s} {text}", flush=True)
    rows.sort(key=lambda r: (wanted.index(r["variant"]), r["sequence"], r["seed"]))
    gt_rows.sort(key=lambda r: r["sequence"])
    defaults = Generator.from_pretrained(model, backend="torch").defaults

    settings = {"model": model, "split": split, "seeds": seed_list, "variants": wanted, "guidance": guidance,
                "jitter_points": jitter_points, "jitter_query_points": JITTER_QUERY_POINTS, "defaults": defaults,
                "sequences": [v.stem for v in videos],
                "metrics": "sdk.evaluation.metrics.evaluate_sequence: 50k samples per frame and side, F-score at 0.01, voxel "
                           "IoU at 64^3, no registration; jitter: sdk.evaluation.metrics.temporal_jitter with "
                           f"{JITTER_QUERY_POINTS} query and {jitter_points} target samples per frame; mean ± "
                           "sample std over sequences"}
    command = ("python examples/train_demo/evaluate.py " + " ".join(sys.argv[1:])).strip()
    write_report(rows, gt_rows, wanted, settings, command, target)


if __name__ == "__main__":
    typer.run(main)
