"""``s4d-convert``: batch video -> mesh-sequence converter.

Each input writes ``OUTDIR/<input name>/`` (meshes, sequence, conditioning images, manifest).
A failing input is reported (what and why) and the batch goes on. Exit code: 0 when every
input succeeded or was skipped, 1 when any failed, 2 for usage errors (bad options, no model).
"""

from __future__ import annotations

import glob
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import typer

from . import usage_error

VIDEO_EXTENSIONS = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif", ".m4v"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp"}

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@dataclass
class Item:
    """One conversion job: a video file or a directory of frames."""

    input: str
    name: str
    output: str = ""
    status: str = "pending"  # ok | failed | skipped
    error: str | None = None
    frames: int = 0
    seconds: float = 0.0


def expand_inputs(inputs: List[str]) -> List[Item]:
    """Globs, directories of videos (one item per video), directories of frames (one item),
    and plain files. Unusable arguments become failed items, so the batch still runs."""
    items: List[Item] = []
    for raw in inputs:
        path = Path(raw)
        label = path.resolve().name or raw  # "..", "." -> the directory's real name
        if not path.exists() and any(c in raw for c in "*?["):
            matches = sorted(glob.glob(raw))
            if not matches:
                items.append(Item(raw, path.name or raw, status="failed", error="no file matches this pattern"))
            items.extend(Item(m, Path(m).stem) for m in matches)
        elif path.is_dir():
            children = sorted(p for p in path.iterdir() if p.is_file())
            videos = [p for p in children if p.suffix.lower() in VIDEO_EXTENSIONS]
            if videos:
                items.extend(Item(str(v), v.stem) for v in videos)
            elif any(p.suffix.lower() in IMAGE_EXTENSIONS for p in children):
                items.append(Item(str(path), label))
            else:
                items.append(Item(raw, label, status="failed",
                                  error="directory has no videos " f"({', '.join(sorted(VIDEO_EXTENSIONS))}) "
                                        f"and no frames ({', '.join(sorted(IMAGE_EXTENSIONS))})"))
        else:
            items.append(Item(raw, path.stem or raw))  # missing files fail later with a clear error
    seen: dict[str, int] = {}
    for item in items:  # a.mp4 and a.mov must not share an output directory
        count = seen.get(item.name, 0)
        seen[item.name] = count + 1
        if count:
            item.name = f"{item.name}-{count}"
    return items


@app.command(help=__doc__)
def convert(
    inputs: List[str] = typer.Argument(..., help="Video files, globs, directories of videos, or directories of "
                                                 "frames (png/jpg/webp)."),
    outdir: Path = typer.Option(..., "--output", "-o", help="Output directory; each input writes OUTDIR/<name>/."),
    model: str = typer.Option("default", "--model", "-m", help="Checkpoint file/directory, an s4d-export "
                              "directory, 'default' (the embedded demo model trained on synthetic primitives) "
                              "or 'tiny-random' (random weights, for smoke tests)."),
    frames: Optional[int] = typer.Option(None, "--frames", "-n", help="Frames sampled evenly over the video "
                                         "[default: the model's, else 16]."),
    steps: Optional[int] = typer.Option(None, help="Flow-matching sampler steps [default: the model's, else 50]."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale, 1 disables CFG "
                                             "[default: the model's, else 5.0]."),
    resolution: Optional[int] = typer.Option(None, help="Marching-cubes grid resolution R, 256 fast, 384 quality "
                                             "[default: the model's, else 256]."),
    seed: int = typer.Option(0, help="Random seed of the initial noise."),
    formats: List[str] = typer.Option(["glb"], "--format", "-f", help="Mesh formats, repeatable: glb, obj, ply, "
                                                                       "usd/usda, usdc."),
    backend: str = typer.Option("auto", help="Inference backend: auto (from what --model is), torch, onnxruntime "
                                             "(an s4d-export onnx directory), tensorrt (an s4d-export build "
                                             "directory; needs a GPU)."),
    device: Optional[str] = typer.Option(None, help="Device, e.g. cpu or cuda:0 (default: cuda if available)."),
    matting: Optional[str] = typer.Option(None, help="Background removal: auto (alpha, else rembg if its model "
                                          "is on disk, else border-colour key), border, rembg, none "
                                          "[default: the model's, else auto]."),
    decode: str = typer.Option("hierarchical", help="Field decoding: hierarchical or dense."),
    noise: str = typer.Option("shared", help="Initial noise: shared (one tensor for all frames) or independent."),
    start: Optional[float] = typer.Option(None, help="Start time in seconds (videos)."),
    end: Optional[float] = typer.Option(None, help="End time in seconds (videos)."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose output directory exists."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output directories."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    sequence_glb: bool = typer.Option(True, "--sequence-glb/--no-sequence-glb", help="Write sequence.glb (the "
                                      "whole sequence as one animated glTF)."),
    preview: bool = typer.Option(True, "--preview/--no-preview", help="Write preview.mp4 (conditioning frame | "
                                 "rendered mesh, at the clip's frame rate)."),
    viewer: bool = typer.Option(True, "--viewer/--no-viewer", help="Write viewer.html (a self-contained page "
                                "that plays the sequence)."),
) -> None:
    from ..meshseq import _check_formats
    from ..pipeline import Generator, GeneratorError, check_run_settings

    from ..pipeline import BACKENDS, DECODE_METHODS
    from ..sampling import NOISE_MODES
    from ..video import MATTING_METHODS

    if skip_existing and overwrite:
        usage_error("--skip-existing and --overwrite exclude each other")
    for option, value, allowed in (("--decode", decode, DECODE_METHODS), ("--noise", noise, NOISE_MODES),
                                   ("--matting", matting, MATTING_METHODS), ("--backend", backend, BACKENDS)):
        if value is not None and value not in allowed:
            usage_error(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    for option, value, low in (("--frames", frames, 1), ("--steps", steps, 1), ("--resolution", resolution, 8)):
        if value is not None and value < low:
            usage_error(f"{option} must be >= {low}, got {value}")
    try:
        formats = _check_formats(formats)
    except ValueError as exc:
        usage_error(str(exc))
    try:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generator = Generator.from_pretrained(model, backend=backend, device=device)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
    except Exception as exc:  # any failure to load the model is a bad --model / --backend choice
        usage_error(f"cannot load model {model!r}: {exc}")
    try:  # options left out take the model's own defaults; check the resolved values once
        defaults = generator.defaults
        frames, steps, guidance, resolution, matting = (
            defaults[key] if value is None else value
            for key, value in (("num_frames", frames), ("steps", steps), ("guidance", guidance),
                               ("resolution", resolution), ("matting", matting)))
        check_run_settings(frames, steps, guidance, resolution, matting)
    except GeneratorError as exc:
        usage_error(str(exc).replace("num_frames", "--frames"))
    fixed = generator.runtime.fixed_frames
    if fixed is not None and fixed != frames:
        usage_error(f"model {model!r} was exported for {fixed} frames; pass --frames {fixed} or export another")

    items = expand_inputs(inputs)
    reporter = None
    if not quiet and sys.stderr.isatty():  # one overall bar plus one bar per stage of the current input
        from ..progress import RichProgress

        reporter = RichProgress()
        reporter.start("inputs", len(items))
    for index, item in enumerate(items):
        if reporter is not None and index:
            reporter.advance("inputs")
        if item.status == "failed":
            _report(item, as_json)
            continue
        target = outdir / item.name
        item.output = str(target)
        if target.exists() and skip_existing:
            item.status = "skipped"
            _report(item, as_json)
            continue
        if target.exists() and not overwrite:
            item.status, item.error = "failed", f"output {target} exists (use --overwrite or --skip-existing)"
            _report(item, as_json)
            continue
        t0 = time.perf_counter()
        try:
            if not quiet:
                typer.echo(f"[{index + 1}/{len(items)}] {item.input}", err=True)
            seq = generator(item.input, num_frames=frames, steps=steps, guidance=guidance, seed=seed,
                            resolution=resolution, decode=decode, noise=noise, matting=matting, start=start,
                            end=end, progress=reporter)
            seq.save(target, formats=formats, overwrite=overwrite, animated_glb=sequence_glb, preview=preview,
                     viewer=viewer)
            item.status, item.frames = "ok", len(seq)
        except (ValueError, OSError, RuntimeError) as exc:
            item.status, item.error = "failed", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # keep the batch going; say it is ours
            item.status, item.error = "failed", f"internal error ({type(exc).__name__}): {exc}"
        item.seconds = round(time.perf_counter() - t0, 3)
        _report(item, as_json)

    if reporter is not None:
        reporter.advance("inputs")
        reporter.finish("inputs")
    summary = {"outdir": str(outdir), "model": model, "items": [asdict(i) for i in items],
               "succeeded": sum(i.status == "ok" for i in items), "skipped": sum(i.status == "skipped" for i in items),
               "failed": sum(i.status == "failed" for i in items)}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(f"{summary['succeeded']} converted, {summary['skipped']} skipped, {summary['failed']} failed "
                   f"-> {outdir}", err=True)
    raise typer.Exit(code=1 if summary["failed"] else 0)


def _report(item: Item, as_json: bool) -> None:
    if item.status == "ok":
        line = f"ok      {item.input} -> {item.output} ({item.frames} meshes, {item.seconds:.1f} s)"
    elif item.status == "skipped":
        line = f"skipped {item.input}: {item.output} exists"
    else:
        line = f"FAILED  {item.input}: {item.error}"
    typer.echo(line, err=True)


def main() -> None:
    app()
