"""``s4d-track``: make per-frame mesh sequences topology-consistent.

Each INPUT is a directory of per-frame mesh files (ply, obj, off, stl, glb; taken in natural sort
order: frame_2 before frame_10) or an ``s4d-convert`` output directory (its manifest lists the
frames, their times and conditioning images). The template (frame 0 unless --template) is deformed
through the sequence (rigid alignment, then as-rigid-as-possible fitting: sdk.tracking), and
OUT/<input name>/ gets every frame with the template's faces, in each --format, plus
sequence.glb (one mesh, a morph target per frame), viewer.html, preview.mp4 when conditioning
images are known, and manifest.json with each frame's fit, distortion and flags.

Exit code: 0 when every frame of every input was tracked, 1 when some frames are flagged (their
outputs are written, the flags are in manifest.json and the summary) or an input failed, 2 for
bad input or options (unreadable or empty mesh files, fewer than 2 frames, a bad --template).
Outputs follow s4d-convert's file-safety rules: written to a hidden temporary sibling and
renamed; --overwrite replaces only a directory this tool wrote; an output never is, contains or
sits inside an input.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import run, usage_error

app = typer.Typer(add_completion=False, rich_markup_mode=None)
MESH_EXTENSIONS = (".ply", ".obj", ".off", ".stl", ".glb")
PREFERRED = (".ply", ".obj", ".off", ".stl", ".glb")  # of an s4d-convert output: the cheapest to read first
MAX_MESH_BYTES = 2 << 30  # one frame's file


class TrackInputError(ValueError):
    """An input that cannot be tracked; the message names the file and what was expected."""


def _load_mesh(path: Path):
    import trimesh

    from ..core.jsonfile import special_file_reason

    reason = special_file_reason(path)
    if reason:
        raise TrackInputError(f"{path} is {reason}, not a mesh file")
    size = path.stat().st_size
    if size == 0:
        raise TrackInputError(f"{path} is empty (0 bytes), not a mesh file")
    if size > MAX_MESH_BYTES:
        raise TrackInputError(f"{path} is {size} bytes; one frame may be at most {MAX_MESH_BYTES} bytes")
    with open(path, "rb") as handle:
        head = handle.read(256)
    if head.startswith(b"ply") and re.search(rb"element vertex 0\s", head):
        return trimesh.Trimesh()  # the empty frame s4d-convert writes when a frame had no surface
    try:
        mesh = trimesh.load(str(path), force="mesh")  # parsers only: no file format here runs code
    except Exception as exc:
        raise TrackInputError(f"{path} is not a readable mesh file ({type(exc).__name__}: {exc})") from None
    if not isinstance(mesh, trimesh.Trimesh):
        raise TrackInputError(f"{path} holds no triangle mesh")
    # one vertex per surface point: OBJ / glTF split vertices at normal and UV seams, which would
    # tear the surface into pieces for tracking
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    return mesh


def read_sequence(directory: str | os.PathLike):
    """``(meshes, frame_times, conditioning_images, source)`` of an input directory."""
    import numpy as np

    from ..core.jsonfile import JSONFileError, read_json
    from ..inputs.frames import natural_sort_key
    from ..outputs.meshseq import SEQUENCE_FORMAT, SEQUENCE_MANIFEST

    root = Path(directory)
    if not root.is_dir():
        raise TrackInputError(f"{directory} is not a directory (expected per-frame mesh files or an "
                              "s4d-convert output)")
    times, images, source = [], [], str(directory)
    manifest = None
    if (root / SEQUENCE_MANIFEST).is_file():
        try:
            data = read_json(root / SEQUENCE_MANIFEST)
        except (JSONFileError, OSError):
            data = None
        if isinstance(data, dict) and data.get("format") == SEQUENCE_FORMAT:
            manifest = data
    if (root / SEQUENCE_MANIFEST).exists() and manifest is None:
        raise TrackInputError(f"{root / SEQUENCE_MANIFEST} is not a readable s4d-convert manifest; pass a directory "
                              "of mesh files or an s4d-convert output")
    if manifest is not None:  # an s4d-convert (or s4d-track) output: the manifest says what is there
        listed = manifest.get("files")
        if not isinstance(listed, list):
            raise TrackInputError(f"{root / SEQUENCE_MANIFEST}: 'files' is not a list")
        files = {f for f in listed if isinstance(f, str)}
        n = manifest.get("num_frames")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise TrackInputError(f"{root / SEQUENCE_MANIFEST}: num_frames is missing or not a count")
        paths = []
        for i in range(n):
            names = [f"frame_{i:04d}{ext}" for ext in PREFERRED if f"frame_{i:04d}{ext}" in files]
            if not names:
                raise TrackInputError(f"{root}: frame {i} has no mesh file (ply, obj, off, stl or glb) in its "
                                      "manifest; write the input with --format ply")
            paths.append(root / names[0])
        ft = manifest.get("frame_times")
        times = list(ft) if isinstance(ft, list) and len(ft) == n else [None] * n
        times = [t if isinstance(t, (int, float)) and not isinstance(t, bool) else None for t in times]
        cond = [root / f"conditioning/cond_{i:04d}.png" for i in range(n)]
        if all(f"conditioning/cond_{i:04d}.png" in files and p.is_file() for i, p in enumerate(cond)):
            from PIL import Image

            try:
                images = [np.asarray(Image.open(p).convert("RGB")) for p in cond]
            except Exception:  # a preview input only: without it, no preview.mp4
                images = []
        source = str(manifest.get("source") or directory)
    else:
        paths = sorted((p for p in root.iterdir() if p.suffix.lower() in MESH_EXTENSIONS and not p.name.startswith(".")),
                       key=lambda p: natural_sort_key(p.name))
        stems = [p.stem.lower() for p in paths]
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:
            raise TrackInputError(f"{directory}: frame {twice[0]!r} is there in more than one format; keep one "
                                  "file per frame")
        if not paths:
            raise TrackInputError(f"{directory} holds no mesh files ({', '.join(MESH_EXTENSIONS)})")
        times = [None] * len(paths)
    if len(paths) < 2:
        raise TrackInputError(f"{directory} has {len(paths)} frame; tracking needs at least 2")
    meshes = [_load_mesh(p) for p in paths]
    if not any(len(m.faces) for m in meshes):
        raise TrackInputError(f"{directory}: no frame has a surface (every mesh is empty)")
    return meshes, times, images, source


@app.command(help=__doc__)
def track(
    inputs: Optional[List[str]] = typer.Argument(None, help="Directories of per-frame mesh files, or s4d-convert "
                                                 "output directories."),
    outdir: str = typer.Option(..., "--output", "-o", help="Output directory; each input writes OUTDIR/<name>/."),
    formats: List[str] = typer.Option(["ply"], "--format", "-f", help="Per-frame mesh formats, repeatable: ply, obj, "
                                      "glb, usd/usda, usdc."),
    template: int = typer.Option(0, "--template", help="The frame whose mesh is deformed through the sequence "
                                 "(negative counts from the end)."),
    alignment: str = typer.Option("similarity", "--alignment", help="Per-frame global motion: similarity (rigid "
                                  "+ one scale), rigid or none."),
    on_failure: str = typer.Option("continue", "--on-failure", help="After a flagged frame: continue (keep "
                                   "deforming the same template; one mesh, flagged frames marked) or retemplate "
                                   "(start a new segment from the flagged frame's own mesh)."),
    max_fit: float = typer.Option(0.01, "--max-fit", help="Flag a frame whose mean surface distance exceeds this "
                                  "share of the template's bounding-box diagonal."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output directories (only ones "
                                   "this tool or s4d-convert wrote)."),
    sequence_glb: bool = typer.Option(True, "--sequence-glb/--no-sequence-glb", help="Write sequence.glb."),
    viewer: bool = typer.Option(True, "--viewer/--no-viewer", help="Write viewer.html."),
    preview: bool = typer.Option(True, "--preview/--no-preview", help="Write preview.mp4 (s4d-convert inputs "
                                 "with conditioning images only)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-input lines."),
) -> None:
    from ..batch.clips import Item, assign_output_names, existing_owners, input_identity, overlapping_input
    from ..batch.storage import check_writable, local_path
    from ..core.atomic import clean_stale_partials
    from ..outputs.meshseq import MeshSequence, OutputExistsError, check_formats
    from ..tracking import ALIGNMENTS, ON_FAILURE, TrackingError, TrackingOptions, check_trackable, track_meshes

    # 1. options
    if not inputs:
        usage_error("missing INPUTS: give at least one directory of mesh files")
    if alignment not in ALIGNMENTS:
        usage_error(f"--alignment must be one of {', '.join(ALIGNMENTS)}, got {alignment!r}")
    if on_failure not in ON_FAILURE:
        usage_error(f"--on-failure must be one of {', '.join(ON_FAILURE)}, got {on_failure!r}")
    if not 0 < max_fit <= 1:  # also refuses nan
        usage_error(f"--max-fit must be in (0, 1], got {max_fit}")
    try:
        formats = check_formats(formats)
    except ValueError as exc:
        usage_error(str(exc))
    try:
        out = local_path(outdir)
    except ValueError as exc:
        usage_error(str(exc))
    if out is None:
        usage_error(f"--output {outdir}: s4d-track writes to a local directory (or a file:// URI), not an object store")
    if os.path.lexists(out) and not out.is_dir():
        usage_error(f"--output {outdir} exists and is not a directory")
    try:
        check_writable(outdir, 30.0)
    except (OSError, ValueError) as exc:
        usage_error(f"cannot use --output {outdir}: {exc}")
    options = TrackingOptions(template=template, alignment=alignment, on_failure=on_failure, max_fit=max_fit)

    # 2. inputs: every one read and checked before any output is written
    loaded = {}
    for raw in inputs:
        try:
            loaded[raw] = read_sequence(raw)
            check_trackable(loaded[raw][0], options)
        except (TrackInputError, TrackingError) as exc:
            usage_error(str(exc))
        except OSError as exc:
            usage_error(f"cannot read {raw}: {exc}")
    items = [Item(raw, Path(os.path.realpath(raw)).name) for raw in inputs]
    for stale in clean_stale_partials(out):
        typer.echo(f"removed {stale}: the temporary output of a run that was killed", err=True)
    assign_output_names(items, existing_owners(outdir, items))

    # 3. track and write
    results = []
    for item in items:
        entry = {"input": item.input, "output": None, "status": item.status, "error": item.error,
                 "flagged": [], "frames": 0}
        if item.status == "pending":
            target = out / item.name
            item.output = str(target)
            entry["output"] = str(target)
            why = overlapping_input(target, list(inputs), list(inputs))
            meshes, times, images, source = loaded[item.input]
            try:
                if why:
                    raise OutputExistsError(f"cannot write {target}: {why}")
                tracked = track_meshes(meshes, options)
                seq = MeshSequence(tracked.meshes(), list(range(len(meshes))), times, images, source=source,
                                   model={"name": "s4d-track"}, tracking=tracked.report(),
                                   timings={"track": tracked.seconds}, input_identity=input_identity(item.input))
                seq.save(target, formats, overwrite=overwrite, animated_glb=sequence_glb,
                         preview=preview and bool(images), viewer=viewer, contact_sheet=False)
                entry.update(status="ok", flagged=tracked.flagged, frames=len(meshes),
                             mean_fit=seq.tracking["mean_fit"], seconds=round(tracked.seconds, 3),
                             reasons={f.frame: f.reasons for f in tracked.frames if f.flagged})
            except (OutputExistsError, TrackingError, OSError) as exc:
                entry.update(status="failed", error=str(exc))
            except Exception as exc:  # one input's failure is reported; the batch goes on
                entry.update(status="failed", error=f"internal error ({type(exc).__name__}): {exc}")
        results.append(entry)
        if not quiet:
            if entry["status"] == "ok":
                flagged = entry["flagged"]
                note = (f"{len(flagged)} of {entry['frames']} frames FLAGGED: "
                        + "; ".join(f"{k}: {' / '.join(v)}" for k, v in entry["reasons"].items())
                        if flagged else f"all {entry['frames']} frames tracked")
                typer.echo(f"ok      {item.input} -> {entry['output']} ({note}; mean fit {entry['mean_fit']:.5f})",
                           err=True)
            else:
                typer.echo(f"{'skipped' if entry['status'] == 'skipped' else 'FAILED '} {item.input}: {entry['error']}",
                           err=True)

    # 4. summary
    summary = {"outdir": str(outdir), "items": results,
               "tracked": sum(r["status"] == "ok" and not r["flagged"] for r in results),
               "flagged": sum(r["status"] == "ok" and bool(r["flagged"]) for r in results),
               "failed": sum(r["status"] == "failed" for r in results)}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    elif not quiet:
        typer.echo(f"{summary['tracked']} tracked, {summary['flagged']} with flagged frames, {summary['failed']} "
                   f"failed -> {outdir}", err=True)
    raise typer.Exit(code=1 if summary["flagged"] or summary["failed"] else 0)


def main() -> None:
    run(app)
