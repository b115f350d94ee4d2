"""``s4d-convert``: batch video -> mesh-sequence converter."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False)


@app.command()
def convert() -> None:
    """Not available yet: video -> mesh conversion lands with the Generator (issue #4)."""
    typer.echo("s4d-convert: video -> mesh conversion is not implemented in this release yet; "
               "see README 'Status'.", err=True)
    raise typer.Exit(code=2)


def main() -> None:
    app()
