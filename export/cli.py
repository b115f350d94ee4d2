"""``s4d-export``: plan, export and build Sculpt4D deployments."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from sdk.cli import run, usage_error
from sdk.sparse import PRESETS, PatternError
from sdk.sparse import parse_schedule as parse_strides

app = typer.Typer(help="Sculpt4D export tools: TensorRT engines, ONNX export and the FLOPs planner.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None)

SCHEDULE_HELP = (f"Block-sparse schedule: a preset ({', '.join(PRESETS)}) or comma-separated strides, "
                 "e.g. 1,1,2,4.")


@app.callback()
def _root() -> None:
    """Sculpt4D export tools."""


def parse_schedule(text: str) -> str | tuple[int, ...]:
    """A preset name (kept as the name, which reports print), or comma-separated positive
    integers; ``PatternError`` (a usage error) otherwise."""
    return text if text in PRESETS else parse_strides(text)


@app.command()
def flops(
    frames: List[int] = typer.Option([16], "--frames", "-f", help="Frame count T (repeat for a table over T)."),
    schedule: str = typer.Option("sculpt4d", "--schedule", "-s", help=SCHEDULE_HELP),
    no_anchor: bool = typer.Option(False, "--no-anchor", help="Drop the first-frame anchor column."),
    steps: int = typer.Option(50, help="Sampler steps for the per-sequence total."),
    no_cfg: bool = typer.Option(False, "--no-cfg", help="Count one branch per step instead of cond + uncond."),
    tokens: Optional[int] = typer.Option(None, help="Latent tokens per frame P (default: the full config's 4096)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
) -> None:
    """FLOPs of the full-size Sculpt4D DiT: per forward and per sequence, sparse vs full attention.

    Splits spatial, cross and temporal attention, linear layers and the MoE, and prints the
    temporal-attention ratio and the whole-network ratio (sparse / full) with the counting
    conventions used.
    """
    from sdk.models.flops import estimate_flops

    try:
        sched = parse_schedule(schedule)
        reports = [estimate_flops(num_frames=t, schedule=sched, anchor=not no_anchor, steps=steps,
                                  cfg_batch=1 if no_cfg else 2, tokens_per_frame=tokens) for t in frames]
    except (PatternError, ValueError) as exc:
        usage_error(str(exc))
    if as_json:
        payload = [r.as_dict() for r in reports]
        typer.echo(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
        return
    for i, r in enumerate(reports):
        text = r.table()
        if i < len(reports) - 1:
            text = text.split("\n\nCounting conventions:")[0] + "\n"
        typer.echo(text)


@app.command()
def onnx(
    checkpoint: str = typer.Argument(..., help="Checkpoint file or directory (any layout sdk.models.checkpoint reads), or "
                                               "'tiny' for the tiny random-weight model."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory for the .onnx files and export.json."),
    frames: int = typer.Option(..., "--frames", "-f", help="Frame count T the DiT graph is exported for."),
    dtype: str = typer.Option("fp32", help="fp32 or fp16 (an fp16-typed graph for strongly typed TensorRT)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", "-s", help=SCHEDULE_HELP + " Default: the model's."),
    no_anchor: bool = typer.Option(False, "--no-anchor", help="Drop the first-frame anchor column."),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="Tokens per attention block (default: "
                                                                        "the model's, 128 for the full model)."),
    external_data: Optional[bool] = typer.Option(None, "--external-data/--no-external-data",
                                                 help="Weights in <graph>.onnx.data files (default: only for "
                                                      "graphs over 2 GB, which protobuf cannot hold)."),
    as_json: bool = typer.Option(False, "--json", help="Print the export manifest as JSON."),
) -> None:
    """Export dit.onnx (one BlockSparseAttention node per block, with a standard-op local function),
    vae_decoder.onnx, vae_query.onnx and conditioner.onnx for one frame count. An fp16 export of an
    fp16 checkpoint uses the checkpoint's weights memory-mapped (the full model fits in 24 GB)."""
    from export.onnx import ExportError, export_onnx
    from sdk.models.checkpoint import CheckpointError
    from sdk.core.extras import MissingExtraError

    try:
        sched = parse_schedule(schedule) if schedule is not None else None
        result = export_onnx(checkpoint, output, frames=frames, dtype=dtype, schedule=sched,
                             anchor=False if no_anchor else None, block_size=block_size,
                             external_data=external_data)
    except (ExportError, CheckpointError, PatternError, MissingExtraError) as exc:
        usage_error(str(exc))
    except OSError as exc:  # a full disk, a read-only directory: nothing half-written is left (atomic)
        fail_io(f"cannot write the export to {output}", exc)
    if as_json:
        typer.echo(json.dumps(result.manifest, indent=2))
    else:
        for part, path in result.files.items():
            typer.echo(f"{part:<12} {path}")
        typer.echo(f"export.json  {result.directory / 'export.json'}")


def fail_io(what: str, exc: OSError) -> None:
    """One line and exit 1 for an I/O failure while writing (ENOSPC, EROFS, EACCES): not a usage error,
    and never a traceback."""
    typer.echo(f"error: {what}: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""), err=True)
    raise typer.Exit(code=1)


RANDOM_SIZES = ("full", "demo", "tiny")


@app.command("random-checkpoint")
def random_checkpoint(
    output: Path = typer.Option(..., "--output", "-o", help="New checkpoint directory (our layout)."),
    size: str = typer.Option("full", help="Config size: full (the released 3.4B-parameter DiT, ~7.5 GB in fp16), "
                                          "demo or tiny."),
    dtype: str = typer.Option("fp16", help="fp16, bf16 or fp32."),
    seed: int = typer.Option(0, help="Random seed, 0 to 2**63 - 1."),
) -> None:
    """Write a checkpoint with random weights at a given size, for benchmarks and export checks
    (no public Sculpt4D weights exist). Streamed tensor by tensor: memory stays at one tensor."""
    from export.onnx import DTYPES
    from sdk.models.checkpoint import CheckpointError, write_random_checkpoint
    from sdk.models.config import ConditionerConfig, DiTConfig, VAEConfig

    if size not in RANDOM_SIZES:
        usage_error(f"--size must be one of {', '.join(RANDOM_SIZES)}, got {size!r}")
    if dtype not in DTYPES:
        usage_error(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not 0 <= seed < 1 << 63:
        usage_error(f"--seed must be between 0 and 2**63 - 1, got {seed}")
    if os.path.lexists(output):  # a new directory only: random weights never replace anything
        usage_error(f"--output {output} exists; random-checkpoint writes a new directory only, choose another path")
    configs = [getattr(cls, size)() for cls in (DiTConfig, VAEConfig, ConditionerConfig)]
    try:
        path = write_random_checkpoint(output, *configs, dtype=DTYPES[dtype], seed=seed,
                                       metadata={"size": size})
    except (CheckpointError, OSError, ValueError) as exc:
        usage_error(f"cannot write {output}: {exc}")
    total = sum(f.stat().st_size for f in path.iterdir())
    typer.echo(f"{path}  ({total / 1024 ** 3:.2f} GB, {dtype}, random weights, seed {seed})")


@app.command()
def build(
    frames: List[int] = typer.Option(..., "--frames", "-f", help="Frame count; repeat for several engines."),
    checkpoint: str = typer.Option("tiny", "--checkpoint", "-c", help="Checkpoint file/directory or 'tiny' "
                                                                      "(tiny random-weight model)."),
    precision: str = typer.Option("fp16", help="fp16, bf16 or fp32: the ONNX graph is typed accordingly "
                                               "(TensorRT is strongly typed)."),
    target: str = typer.Option("tensorrt", help="tensorrt (full TensorRT, builds for this GPU) or tensorrt-rtx "
                                                "(ahead-of-time build, no GPU needed)."),
    engine_dir: Path = typer.Option(Path("engines"), "--engine-dir", "-o", help="Where engines and manifest.json "
                                                                                "go (and the engine cache)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", "-s", help=SCHEDULE_HELP + " Default: the model's."),
    no_anchor: bool = typer.Option(False, "--no-anchor", help="Drop the first-frame anchor column."),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="Tokens per attention block."),
) -> None:
    """Build one DiT engine per frame count (stride schedule baked in) plus the VAE-decoder, VAE-query
    and conditioner engines; reuse cached engines whose manifest entry still matches."""
    from export.builder import build_engines
    from export.onnx import ExportError
    from export.tensorrt import TensorRTError
    from sdk.models.checkpoint import CheckpointError
    from sdk.core.extras import MissingExtraError

    try:
        sched = parse_schedule(schedule) if schedule is not None else None
        report = build_engines(frames, checkpoint=checkpoint, precision=precision, target=target,
                               engine_dir=engine_dir, schedule=sched, anchor=False if no_anchor else None,
                               block_size=block_size, log=lambda m: typer.echo(m, err=True))
    except (ExportError, CheckpointError, PatternError, TensorRTError, MissingExtraError) as exc:
        usage_error(str(exc))
    except OSError as exc:
        fail_io(f"cannot write engines to {engine_dir}", exc)
    typer.echo(f"{len(report.built)} built, {len(report.reused)} reused -> {report.engine_dir}")


@app.command()
def inspect(engine_dir: Path = typer.Argument(..., help="An engine directory written by s4d-export build.")) -> None:
    """Print the manifest of an engine directory: what each engine was built from and supports.
    Verifies every engine file against its recorded size and sha256: exit 1 if any is missing or
    does not match (s4d-export build rebuilds those), 2 for a missing or malformed manifest."""
    from export.builder import describe_engines
    from export.tensorrt import TensorRTError

    problems: list[str] = []
    try:
        typer.echo(describe_engines(engine_dir, problems))
    except TensorRTError as exc:
        usage_error(str(exc))
    for line in problems:
        typer.echo(f"error: {line}; rebuild with: s4d-export build --engine-dir {engine_dir}", err=True)
    if problems:
        raise typer.Exit(code=1)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
