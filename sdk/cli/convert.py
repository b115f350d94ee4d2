"""``s4d-convert``: batch video -> mesh-sequence converter.

Each input writes ``OUTDIR/<input name>/`` (meshes, sequence, conditioning images, manifest).
A failing input is reported (what and why) and the batch goes on. Exit code: 0 when every
input succeeded or was skipped, 1 when any failed, 2 for usage errors (bad options, no model;
all found before the model loads where they can be).

Safety: an output is written to a hidden temporary sibling and published with an atomic
no-replace rename. ``--overwrite`` replaces only a directory this tool wrote (its manifest's
format tag, and no file the manifest does not list). An output never is, contains or sits inside
an input. Output names are always one plain child of OUTDIR. Temporary directories of runs that
were killed are removed by the next run into the same OUTDIR.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import typer

from . import run, usage_error

# Only typer at import: --help and usage errors must not pay for torch (sdk.video imports it);
# everything heavy is imported inside the functions that do work.

app = typer.Typer(add_completion=False, rich_markup_mode=None)
RAN_KEYS = ("attention_backend", "mcubes_backend", "matting", "threads", "fallbacks")
OPTION_LABELS = {"num_frames": "--frames", "steps": "--steps", "guidance": "--guidance", "resolution": "--resolution",
                 "matting": "--matting", "start": "--start", "end": "--end", "seed": "--seed"}


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
    # what ran: attention_backend, mcubes_backend, matting, threads, fallbacks (also in the manifest)
    ran: dict | None = None


def safe_output_name(stem: str) -> str:
    """An output name that is always ONE plain child of OUTDIR: no path separators or control
    characters, never empty, '.', '..' or hidden (a leading dot becomes '_'; temporaries are hidden)."""
    name = "".join("_" if c in "/\\" or ord(c) < 32 or ord(c) == 127 else c for c in stem).strip()
    bare = name.lstrip(".")
    if not bare.strip("_ "):
        return "input"
    return (bare if bare == name else "_" + bare)[:200]


def _classify(raw: str) -> List[Item]:
    """One path argument (or glob match) -> items; raises OSError if a directory cannot be listed."""
    from ..video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, broken_link_reason

    path = Path(raw)
    link = broken_link_reason(path)
    if link:
        return [Item(raw, path.stem or raw, status="failed",
                     error=f"{raw!r} is {link}; expected a video file or a directory")]
    if not path.is_dir():
        return [Item(raw, path.stem or raw)]  # missing files fail later with a clear error
    label = Path(os.path.realpath(path)).name or raw  # "..", "." -> the directory's real name
    children = sorted(path.iterdir())
    videos = [p for p in children if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
    frames_dir = not videos and any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in children)
    items = [Item(str(v), v.stem) for v in videos]
    if frames_dir:
        items.append(Item(str(path), label))
    for child in children:  # unresolvable links are reported, not skipped silently
        link = broken_link_reason(child)
        if link and not (frames_dir and child.suffix.lower() in IMAGE_EXTENSIONS):  # those fail the frames item
            items.append(Item(str(child), child.stem or child.name, status="failed",
                              error=f"{link} inside input directory {raw!r}; skipped"))
    if not videos and not frames_dir:
        items.append(Item(raw, label, status="failed",
                          error="directory has no videos " f"({', '.join(sorted(VIDEO_EXTENSIONS))}) "
                                f"and no frames ({', '.join(sorted(IMAGE_EXTENSIONS))})"))
    return items


def expand_inputs(inputs: List[str]) -> List[Item]:
    """Globs, directories of videos (one item per video), directories of frames (one item),
    and plain files. Unusable arguments become failed items, so the batch still runs."""
    items: List[Item] = []
    for raw in inputs:
        try:
            if not os.path.lexists(raw) and any(c in raw for c in "*?["):
                matches = sorted(glob.glob(raw))
                if not matches:
                    items.append(Item(raw, Path(raw).name or raw, status="failed", error="no file matches this pattern"))
                for match in matches:
                    items.extend(_classify(match))
            else:
                items.extend(_classify(raw))
        except (OSError, RuntimeError) as exc:  # an unreadable directory, a loop on the way
            items.append(Item(raw, Path(raw).name or raw, status="failed",
                              error=f"cannot read {raw!r}: {getattr(exc, 'strerror', None) or exc}"))
    seen: dict[str, int] = {}
    for item in items:  # a.mp4 and a.mov must not share an output directory
        item.name = safe_output_name(item.name)
        count = seen.get(item.name, 0)
        seen[item.name] = count + 1
        if count:
            item.name = f"{item.name}-{count}"
    return items


def overlapping_input(target: Path, inputs: List[str], frame_dirs: List[str]) -> str | None:
    """Why ``target`` may not be written (it is, contains, or sits inside an input), or None."""
    real = Path(os.path.realpath(target))
    for raw in inputs:
        path = Path(os.path.realpath(raw))
        if path == real:
            return f"it is the input {raw}"
        if path.is_relative_to(real):
            return f"it contains the input {raw}"
    for raw in frame_dirs:
        if real.is_relative_to(os.path.realpath(raw)):
            return f"it is inside the input frame directory {raw}"
    return None


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
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale, finite and >= 0; 1 "
                                             "disables CFG [default: the model's, else 5.0]."),
    resolution: Optional[int] = typer.Option(None, help="Marching-cubes grid resolution R, 8..1024; 256 fast, "
                                             "384 quality [default: the model's, else 256]."),
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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output directories (only ones "
                                "s4d-convert wrote)."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="CPU threads for torch's intra-op work and "
                                          "the C++ attention kernel [default: torch's, one per physical core; "
                                          "$OMP_NUM_THREADS if set]."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    sequence_glb: bool = typer.Option(True, "--sequence-glb/--no-sequence-glb", help="Write sequence.glb (the "
                                      "whole sequence as one animated glTF)."),
    preview: bool = typer.Option(True, "--preview/--no-preview", help="Write preview.mp4 (conditioning frame | "
                                 "rendered mesh, at the clip's frame rate)."),
    viewer: bool = typer.Option(True, "--viewer/--no-viewer", help="Write viewer.html (a self-contained page "
                                "that plays the sequence)."),
) -> None:
    from ..atomic import check_target, clean_stale_partials
    from ..meshseq import OutputExistsError, _check_formats, written_sequence
    from ..settings import BACKENDS, DECODE_METHODS, NOISE_MODES, GeneratorError, check_run_settings
    from ..video import MATTING_METHODS

    if skip_existing and overwrite:
        usage_error("--skip-existing and --overwrite exclude each other")
    if threads is not None and not 1 <= threads <= 1024:
        usage_error(f"--threads must be between 1 and 1024, got {threads}")
    for option, value, allowed in (("--decode", decode, DECODE_METHODS), ("--noise", noise, NOISE_MODES),
                                   ("--matting", matting, MATTING_METHODS), ("--backend", backend, BACKENDS)):
        if value is not None and value not in allowed:
            usage_error(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    try:  # every setting given is checked before anything loads
        check_run_settings(frames, steps, guidance, resolution, matting, start, end, seed, labels=OPTION_LABELS)
    except GeneratorError as exc:
        usage_error(str(exc))
    try:
        formats = _check_formats(formats)
    except ValueError as exc:
        usage_error(str(exc))
    if os.path.lexists(outdir) and not outdir.is_dir():
        usage_error(f"--output {outdir} exists and is not a directory")
    try:
        import warnings

        from ..pipeline import Generator  # the heavy imports (torch, transformers) start here

        if threads is not None:  # the C++ kernel takes torch's count on every call
            import torch

            torch.set_num_threads(threads)

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
        check_run_settings(frames, steps, guidance, resolution, matting, labels=OPTION_LABELS)
    except GeneratorError as exc:
        usage_error(str(exc))
    fixed = generator.runtime.fixed_frames
    if fixed is not None and fixed != frames:
        usage_error(f"model {model!r} was exported for {fixed} frames; pass --frames {fixed} or export another")

    items = expand_inputs(inputs)
    inputs_used = [raw for raw in inputs if os.path.lexists(raw)] + [i.input for i in items if i.status != "failed"]
    frame_dirs = [i.input for i in items if i.status != "failed" and Path(i.input).is_dir()]
    for stale in clean_stale_partials(outdir):
        typer.echo(f"removed {stale}: the temporary output of a run that was killed", err=True)
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
        overlap = overlapping_input(target, inputs_used, frame_dirs)
        if overlap:
            item.status, item.error = "failed", f"refusing to write output {target}: {overlap}; choose another -o"
        elif os.path.lexists(target) and skip_existing:
            item.status = "skipped"
        elif os.path.lexists(target) and not overwrite:
            item.status, item.error = "failed", f"output {target} exists (use --overwrite or --skip-existing)"
        elif overwrite:
            try:  # fail now, not after minutes of work, if the target is not ours to replace
                check_target(target, overwrite, written_sequence, OutputExistsError)
            except ValueError as exc:
                item.status, item.error = "failed", str(exc)
            except OutputExistsError as exc:
                item.status, item.error = "failed", f"{exc} (--overwrite replaces only earlier s4d-convert outputs)"
        if item.status != "pending":
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
            item.ran = {key: seq.settings.get(key) for key in RAN_KEYS}
        except OutputExistsError as exc:  # it was absent when this item started
            item.status, item.error = "failed", str(exc) if overwrite else (
                f"output {target} appeared meanwhile (another run wrote it while this one worked); nothing was "
                "replaced (use --overwrite to replace it)")
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
    run(app)
