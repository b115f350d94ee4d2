"""Command-line entry points of the SDK (s4d-convert, s4d-eval; s4d-export lives in export/)."""

import typer


def usage_error(message: str) -> None:
    """Print ``error: message`` on stderr and exit with code 2 (bad input or options)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)
