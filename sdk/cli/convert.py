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

Scale-out: --ray converts on a Ray cluster (Ray Data, one actor per --workers, each loading the
model once); same outputs, exit codes and --json summary. A clip whose worker crashes is retried
--retries times, then reported failed. Inputs and -o may be file://, s3:// or gs:// URIs; in an
object store manifest.json is written last and marks a finished clip (--skip-existing resumes).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..batch.clips import (RAN_KEYS, Item, OutputOptions, expand_inputs, overlapping_input,  # noqa: F401 (public here too)
                     report_line, safe_output_name)
from . import run, usage_error

# Only typer at import: --help and usage errors must not pay for torch (the pipeline imports it);
# everything heavy is imported inside the functions that do work.

app = typer.Typer(add_completion=False, rich_markup_mode=None)
MAX_TIMEOUT = 7 * 24 * 3600  # seconds; threading timers overflow on larger values
OPTION_LABELS = {"num_frames": "--frames", "steps": "--steps", "guidance": "--guidance", "resolution": "--resolution",
                 "matting": "--matting", "start": "--start", "end": "--end", "seed": "--seed",
                 "decode": "--decode", "noise": "--noise", "topology": "--topology", "exact": "--exact"}


@app.command(help=__doc__)
def convert(
    inputs: Optional[List[str]] = typer.Argument(None, help="Video files, globs, directories of videos, or directories of "
                                                 "frames (png/jpg/webp); also file:// and object-store URIs "
                                                 "(s3://bucket/clip.mp4 or a prefix of videos)."),
    outdir: str = typer.Option(..., "--output", "-o", help="Output directory, or a file:// / s3:// / gs:// URI; "
                               "each input writes OUTDIR/<name>/."),
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
    topology: str = typer.Option("consistent", help="consistent: frame 0's mesh tracked through the clip (rigid "
                                 "+ as-rigid-as-possible fit), so every frame has the same faces and sequence.glb "
                                 "is one mesh with a morph target per frame; frames the fit fails on are flagged "
                                 "in manifest.json. per-frame: independent marching-cubes meshes (a flip-book)."),
    exact: bool = typer.Option(False, "--exact", help="Turn off every approximation of the fast path (sampler step "
                               "caching, temporal narrow-band decoding, adaptive KV selection): results equal the "
                               "reference computation up to floating-point noise, about twice as slow. The manifest's "
                               "stats.acceleration says what ran either way."),
    start: Optional[float] = typer.Option(None, help="Start time in seconds (videos)."),
    end: Optional[float] = typer.Option(None, help="End time in seconds (videos)."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose output holds their "
                                       "up-to-date conversion (its manifest.json names this input, same size and "
                                       "modification time); any other existing output is reported, not replaced."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output directories (only ones "
                                "s4d-convert wrote)."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="CPU threads for torch's intra-op work and "
                                          "the C++ attention kernel [default: torch's, one per physical core; "
                                          "$OMP_NUM_THREADS if set]."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds one clip may take, at most "
                                            f"{MAX_TIMEOUT} (a week); a clip past it fails with 'timed out' and its "
                                            "partial output is removed."),
    connect_timeout: float = typer.Option(30.0, "--connect-timeout", help="Seconds to wait for a network service "
                                          "(the --ray cluster's address; an object store listing inputs, taking the "
                                          "probe write and listing outputs) before failing, 0.1 to 3600."),
    ray_address: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                              help="Convert on a Ray cluster (needs the [ray] extra): --ray alone "
                                              "uses $RAY_ADDRESS, else starts a local cluster; --ray=ADDRESS "
                                              "(e.g. ray://head:10001) joins that one. Put --ray after the inputs "
                                              "or write --ray=ADDRESS."),
    workers: int = typer.Option(1, "--workers", help="With --ray: converter actors (each loads the model once)."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", help="With --ray: GPUs per actor; "
                                                    "fractions pack several actors on one GPU [default: 1 when "
                                                    "the cluster has GPUs and --device is not cpu, else 0]."),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="With --ray: CPUs per actor."),
    retries: int = typer.Option(1, "--retries", help="With --ray: times a clip is retried after its worker "
                                "process died (crash, OOM kill); then it is reported failed."),
    accelerator_type: Optional[str] = typer.Option(None, "--accelerator-type", help="With --ray: place workers "
                                                   "only on nodes with this GPU type (Ray's name, e.g. H100, "
                                                   "A100); TensorRT engines run only on the GPU they were "
                                                   "built for."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    sequence_glb: bool = typer.Option(True, "--sequence-glb/--no-sequence-glb", help="Write sequence.glb (the "
                                      "whole sequence as one animated glTF)."),
    preview: bool = typer.Option(True, "--preview/--no-preview", help="Write preview.mp4 (conditioning frame | "
                                 "rendered mesh, at the clip's frame rate)."),
    viewer: bool = typer.Option(True, "--viewer/--no-viewer", help="Write viewer.html (a self-contained page "
                                "that plays the sequence)."),
) -> None:
    from ..core.atomic import clean_stale_partials
    from ..batch.clips import plan_items, summarize
    from ..outputs.meshseq import check_formats
    from ..generation.settings import BACKENDS, GeneratorError, RunSettings
    from ..batch.storage import check_writable, local_path
    from ..inputs.matting import MATTING_METHODS

    # 1. options, all checked before anything loads
    if not inputs:
        if ray_address is not None and ray_address not in ("auto", "local") and (
                os.path.lexists(ray_address) or Path(ray_address).suffix):
            usage_error(f"missing INPUTS: --ray took {ray_address!r} as the cluster address; put --ray after the "
                        "inputs, or write --ray=ADDRESS")
        usage_error("missing INPUTS: give at least one video, directory, glob or URI")
    if skip_existing and overwrite:
        usage_error("--skip-existing and --overwrite exclude each other")
    if threads is not None and not 1 <= threads <= 1024:
        usage_error(f"--threads must be between 1 and 1024, got {threads}")
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:  # also refuses nan and inf
        usage_error(f"--timeout must be a number of seconds in (0, {MAX_TIMEOUT}], got {timeout}")
    if not 0.1 <= connect_timeout <= 3600:
        usage_error(f"--connect-timeout must be between 0.1 and 3600 seconds, got {connect_timeout}")
    for option, value, allowed in (("--matting", matting, MATTING_METHODS), ("--backend", backend, BACKENDS)):
        if value is not None and value not in allowed:
            usage_error(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    settings = RunSettings(frames, steps, guidance, resolution, matting, seed, decode, noise, start, end, topology,
                           exact)
    try:
        settings.check(OPTION_LABELS)
    except GeneratorError as exc:
        usage_error(str(exc))
    try:
        formats = check_formats(formats)
        local_out = local_path(outdir)
    except ValueError as exc:
        usage_error(str(exc))
    if local_out is not None and os.path.lexists(local_out) and not local_out.is_dir():
        usage_error(f"--output {outdir} exists and is not a directory")
    try:  # now, not after the first clip: a read-only directory, a missing bucket
        check_writable(outdir, connect_timeout)
    except (OSError, ValueError) as exc:
        usage_error(f"cannot use --output {outdir}: {exc}")
    cluster = None
    if ray_address is not None:
        from ..batch.distributed import ClusterError, ClusterOptions, check_cluster_options

        cluster = ClusterOptions(ray_address, workers, gpus_per_worker, cpus_per_worker, retries, threads,
                                 accelerator_type, connect_timeout)
        try:
            check_cluster_options(cluster, inputs, model)
        except ClusterError as exc:
            usage_error(str(exc))
    elif (workers, gpus_per_worker, cpus_per_worker, retries, accelerator_type) != (1, None, 1.0, 1, None):
        usage_error("--workers, --gpus-per-worker, --cpus-per-worker, --retries and --accelerator-type need --ray")
    options = OutputOptions(tuple(formats), overwrite, skip_existing, sequence_glb, preview, viewer, timeout)

    # 2. the model (locally; on a cluster each worker loads its own)
    generator = None
    if cluster is None:
        generator = _load_generator(model, backend, device, threads)
        try:  # options left out take the model's own defaults; check the resolved values once
            settings = settings.resolved(generator.defaults, OPTION_LABELS)
        except GeneratorError as exc:
            usage_error(str(exc))
        fixed = generator.runtime.fixed_frames
        if fixed is not None and fixed != settings.num_frames:
            usage_error(f"model {model!r} was exported for {fixed} frames; pass --frames {fixed} or export another")

    # 3. inputs and outputs
    items = expand_inputs(inputs, connect_timeout)
    if local_out is not None:
        for stale in clean_stale_partials(local_out):
            typer.echo(f"removed {stale}: the temporary output of a run that was killed", err=True)
    try:
        plan_items(items, outdir, inputs, options, connect_timeout)
    except (OSError, ValueError) as exc:  # an object store that cannot be listed
        usage_error(f"cannot use --output {outdir}: {exc}")
    for item in items:
        if item.status != "pending":
            typer.echo(report_line(item), err=True)

    # 4. convert
    extra, setup_failed = {}, False
    if cluster is None:
        _convert_here(generator, items, settings, options, quiet)
    else:
        from ..batch.distributed import ClusterError, convert_on_ray

        def report(item: Item) -> None:
            typer.echo(report_line(item), err=True)

        try:
            extra["ray"] = convert_on_ray(items, model, backend, device, settings, options, cluster,
                                          on_result=report, progress=not quiet and sys.stderr.isatty())
        except ClusterError as exc:  # the cluster cannot hold the workers asked for, or cannot be reached
            usage_error(str(exc))
        setup_failed = extra["ray"].pop("setup_failed", False)  # a bad --model, found by the workers

    # 5. summary
    summary = summarize(items, outdir, model, **extra)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(f"{summary['succeeded']} converted, {summary['skipped']} skipped, {summary['failed']} failed "
                   f"-> {outdir}", err=True)
        if extra.get("ray", {}).get("driver_log"):
            typer.echo(f"Ray's own notices (worker restarts and their tracebacks): {extra['ray']['driver_log']}",
                       err=True)
    raise typer.Exit(code=2 if setup_failed else 1 if summary["failed"] else 0)


def _load_generator(model: str, backend: str, device: str | None, threads: int | None):
    """The Generator, or exit 2: any failure to load is a bad --model / --backend choice."""
    try:
        import warnings

        from ..batch.clips import load_generator  # the heavy imports (torch, transformers) start inside

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generator = load_generator(model, backend, device, threads)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        return generator
    except Exception as exc:
        usage_error(f"cannot load model {model!r}: {exc}")


def _convert_here(generator, items: List[Item], settings, options: OutputOptions, quiet: bool) -> None:
    """Convert the pending items one after another in this process."""
    from ..batch.clips import convert_one

    reporter = None
    if not quiet and sys.stderr.isatty():  # one overall bar plus one bar per stage of the current input
        from ..core.progress import RichProgress

        reporter = RichProgress()
        reporter.start("inputs", len(items))
    for index, item in enumerate(items):
        if reporter is not None and index:
            reporter.advance("inputs")
        if item.status != "pending":
            continue
        if not quiet:
            typer.echo(f"[{index + 1}/{len(items)}] {item.input}", err=True)
        convert_one(generator, item, settings, options, progress=reporter)
        typer.echo(report_line(item), err=True)
    if reporter is not None:
        reporter.advance("inputs")
        reporter.finish("inputs")


def optional_value_args(argv: List[str], option: str = "--ray", bare: str = "auto") -> List[str]:
    """``--ray`` takes an optional value: alone (last, or before another option) it means
    ``--ray=auto``; ``--ray ADDRESS`` and ``--ray=ADDRESS`` name the cluster. Typer has no such
    option kind, so the arguments are normalised before it parses them."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg == option and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out[i] = f"{option}={bare}"
    return out


def main() -> None:
    sys.argv[1:] = optional_value_args(sys.argv[1:])
    run(app)
