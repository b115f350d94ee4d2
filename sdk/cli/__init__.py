"""Command-line entry points of the SDK (s4d-convert, s4d-eval; s4d-export lives in export/)."""

import typer


def usage_error(message: str) -> None:
    """Print ``error: message`` on stderr and exit with code 2 (bad input or options)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def run(app: typer.Typer) -> None:
    """Run a CLI app; a missing optional dependency anywhere is one line and exit 2, no traceback."""
    from ..core.extras import MissingExtraError

    try:
        app()
    except MissingExtraError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
