"""``s4d-eval``: compare a predicted mesh sequence with a ground-truth one (SPEC section 7).

Both directories hold ``frame_XXXX.{glb,obj,ply}`` as written by :class:`sdk.outputs.meshseq.MeshSequence`
(where one frame exists in several formats, glb is read, then obj, then ply). Frames are matched by
index. Prints per-frame and mean Chamfer, F-score and voxel IoU plus the temporal jitter of both
sequences, as a table or (``--json``) as JSON on stdout. Conventions: see :mod:`sdk.evaluation.metrics`.

Exit codes: 0 success, 2 usage/input errors (missing directory, no meshes, frame counts or indices
that differ, unreadable or garbage mesh, non-finite vertex coordinates, bad option values). An
empty predicted frame (how s4d-convert writes a frame without a surface) is scored, not refused:
it is listed in ``empty_pred_frames`` and a warning on stderr says so.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import typer

from ..outputs.meshseq import MESH_FORMATS  # also the preference order when a frame exists in several
from . import run, usage_error

# upper bounds of the size options: beyond them the samples or voxels alone take gigabytes
MAX_POINTS = 2_000_000
MAX_IOU_RESOLUTION = 512

_FRAME_RE = re.compile(r"^frame_(\d+)\.(" + "|".join(MESH_FORMATS) + r")$", re.IGNORECASE)

app = typer.Typer(add_completion=False, rich_markup_mode=None)


class InputError(Exception):
    """A problem with the input directories (exit code 2)."""


def find_frames(directory: Path) -> dict[int, Path]:
    """``{frame index: mesh file}`` for ``frame_XXXX.{glb,obj,ply}`` in ``directory``."""
    if not directory.exists():
        raise InputError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory")
    found: dict[int, Path] = {}
    for path in sorted(directory.iterdir()):
        m = _FRAME_RE.match(path.name)
        if not m or not path.is_file():
            continue
        index, fmt = int(m.group(1)), m.group(2).lower()
        old = found.get(index)
        if old is None or MESH_FORMATS.index(fmt) < MESH_FORMATS.index(old.suffix[1:].lower()):
            found[index] = path
    if not found:
        raise InputError(f"{directory}: no frame_XXXX.{{{','.join(MESH_FORMATS)}}} meshes")
    return found


def load_mesh(path: Path):
    """Read one frame. Unreadable or garbage files, point clouds and non-finite coordinates are
    input errors; a file that really declares an empty mesh (how s4d-convert writes a frame without
    a surface) loads as an empty mesh, which the result flags."""
    import numpy as np
    import trimesh

    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)  # processing would drop NaN vertices
    except Exception as exc:  # noqa: BLE001 - any loader failure is an input error
        if _declares_empty_mesh(path):
            return trimesh.Trimesh()
        raise InputError(f"{path}: cannot read mesh ({exc})") from exc
    if not isinstance(mesh, trimesh.Trimesh):
        raise InputError(f"{path}: not a triangle mesh")
    vertices = np.asarray(mesh.vertices)
    bad = int((~np.isfinite(vertices)).any(axis=1).sum()) if len(vertices) else 0
    if bad:
        raise InputError(f"{path}: {bad} of {len(vertices)} vertices have non-finite (NaN/inf) coordinates; "
                         "expected finite positions")
    if len(mesh.faces) == 0 and not _declares_empty_mesh(path):
        raise InputError(f"{path}: no triangles could be read (garbage, a point cloud or an unsupported variant); "
                         f"expected a triangle mesh ({', '.join(MESH_FORMATS)})")
    mesh.merge_vertices()  # what trimesh's default processing does, now that the input is known to be sound
    return mesh


def _declares_empty_mesh(path: Path) -> bool:
    """True if the file states that it holds no surface: an OBJ of only comments / blank lines, a
    PLY whose header declares zero faces, or a glTF without geometry (it parsed, so it is glTF)."""
    suffix = path.suffix.lower()
    if suffix == ".glb":
        return True
    try:
        head = path.read_bytes()[:65536].decode("utf-8", errors="replace")
    except OSError:
        return False
    if suffix == ".obj":
        return all(not line.strip() or line.lstrip().startswith("#") for line in head.splitlines())
    if suffix == ".ply":
        header = head.split("end_header", 1)[0].split()
        return header[:1] == ["ply"] and any(header[i:i + 3] == ["element", "face", "0"] for i in range(len(header)))
    return False


def match_frames(pred: dict[int, Path], gt: dict[int, Path]) -> list[int]:
    if len(pred) != len(gt):
        raise InputError(f"frame counts differ: {len(pred)} predicted, {len(gt)} ground truth")
    if sorted(pred) != sorted(gt):
        only_p = sorted(set(pred) - set(gt))[:5]
        only_g = sorted(set(gt) - set(pred))[:5]
        raise InputError(f"frame indices differ (only predicted: {only_p}, only ground truth: {only_g})")
    return sorted(pred)


def _finite_or_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    return x


def _fmt(x: float, digits: int = 5) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def format_table(result: dict) -> str:
    t = result["settings"]["threshold"]
    head = f"{'frame':>6}  {'chamfer':>9}  {'F@' + format(t, 'g'):>8}  {'precision':>9}  {'recall':>7}  {'IoU':>7}"
    lines = [head, "-" * len(head)]

    def line(label, r):
        return (f"{label:>6}  {_fmt(r['chamfer']):>9}  {_fmt(r['fscore'], 4):>8}  {_fmt(r['precision'], 4):>9}  "
                f"{_fmt(r['recall'], 4):>7}  {_fmt(r['iou'], 4):>7}")

    lines += [line(str(r["frame"]), r) for r in result["frames"]]
    lines += ["-" * len(head), line("mean", result["mean"])]
    j = result["jitter"]
    lines.append(f"jitter: pred {_fmt(j['pred'])}  gt {_fmt(j['gt'])}  (world units)")
    s = result["settings"]
    lines.append(f"registration: {s['register']}{' + scale' if s['with_scale'] else ''}; "
                 f"{s['n_points']} points/frame; IoU grid {s['iou_resolution']}^3")
    return "\n".join(lines)


@app.command()
def evaluate(
    pred_dir: Path = typer.Argument(..., help="Directory of predicted frame_XXXX.{glb,obj,ply} meshes."),
    gt_dir: Path = typer.Argument(..., help="Directory of ground-truth frame_XXXX.{glb,obj,ply} meshes."),
    register: bool = typer.Option(False, "--register", help="Rigidly align the prediction to the ground truth "
                                  "first (one ICP transform for the whole sequence)."),
    per_frame: bool = typer.Option(False, "--per-frame-registration", help="With --register: one transform "
                                   "per frame instead of one for the sequence."),
    with_scale: bool = typer.Option(False, "--scale", help="With --register: also fit a uniform scale."),
    points: int = typer.Option(50_000, "--points", help=f"Surface samples per frame and side, 1 to {MAX_POINTS}."),
    threshold: float = typer.Option(0.01, "--threshold", help="F-score distance threshold, world units."),
    iou_resolution: int = typer.Option(64, "--iou-resolution", help="Voxel IoU grid resolution over the box, 1 to "
                                       f"{MAX_IOU_RESOLUTION}."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout instead of a table."),
) -> None:
    from ..evaluation.metrics import evaluate_sequence

    for option, value, high in (("--points", points, MAX_POINTS), ("--iou-resolution", iou_resolution,
                                                                     MAX_IOU_RESOLUTION)):
        if not 1 <= value <= high:  # beyond: gigabytes of samples or voxels before the first number
            usage_error(f"{option} must be between 1 and {high}, got {value}")
    if not (threshold > 0 and math.isfinite(threshold)):
        usage_error(f"--threshold must be a positive number, got {threshold}")
    if (per_frame or with_scale) and not register:
        usage_error("--per-frame-registration and --scale need --register")
    try:
        pred, gt = find_frames(pred_dir), find_frames(gt_dir)
        indices = match_frames(pred, gt)
        pred_meshes = [load_mesh(pred[i]) for i in indices]
        gt_meshes = [load_mesh(gt[i]) for i in indices]
        result = evaluate_sequence(pred_meshes, gt_meshes,
                                   register=("frame" if per_frame else "sequence") if register else False,
                                   n_points=points, seed=seed, threshold=threshold,
                                   iou_resolution=iou_resolution, with_scale=with_scale, frame_indices=indices)
    except (InputError, ValueError) as exc:
        usage_error(str(exc))
    result["pred_dir"], result["gt_dir"] = str(pred_dir), str(gt_dir)
    empty = [i for i, mesh in zip(indices, pred_meshes) if len(mesh.faces) == 0]
    result["empty_pred_frames"] = empty
    if as_json:
        typer.echo(json.dumps(_finite_or_none(result), indent=2))
    else:
        typer.echo(format_table(result))
    if empty:
        typer.echo(f"warning: {len(empty)} of {len(indices)} predicted frames are empty meshes (frames {empty}): "
                   "they score Chamfer inf (null in JSON), F-score 0 and IoU 0, so the mean Chamfer is inf",
                   err=True)
    raise typer.Exit(code=0)


def main() -> None:
    run(app)
