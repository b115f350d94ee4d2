"""Command-line entry points of the SDK (s4d-convert, s4d-track, s4d-eval; s4d-export lives in export/)."""

import os
import sys

import typer


def usage_error(message: str) -> None:
    """Print ``error: message`` on stderr and exit with code 2 (bad input or options)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def run(app: typer.Typer) -> None:
    """Run a CLI app; a missing optional dependency anywhere is one line and exit 2, no traceback."""
    from ..core.extras import MissingExtraError

    try:
        try:
            app()
        except MissingExtraError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise SystemExit(2) from None
    except SystemExit as exc:
        _exit_now_if_work_was_abandoned(exc.code)
        raise


def _exit_now_if_work_was_abandoned(code) -> None:
    """After an object-store call was given up on (``sdk.batch.storage.answered_within``), end the
    process at once: pyarrow's S3 shutdown would wait for that request at exit, for minutes."""
    storage = sys.modules.get("sdk.batch.storage")
    if storage is not None and getattr(storage, "ABANDONED", 0):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more to say
                pass
        os._exit(0 if code is None else code if isinstance(code, int) else 1)
