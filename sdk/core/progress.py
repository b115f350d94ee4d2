"""Progress reporting per pipeline stage.

A reporter gets ``start(stage, total)``, ``advance(stage, n=1)`` and ``finish(stage)``. The
Generator accepts ``progress=True`` (a rich progress bar on stderr), ``False``/``None``
(silent) or any object with those three methods (e.g. a GUI adaptor or a test recorder).
"""

from __future__ import annotations

import sys
from typing import Protocol


class ProgressReporter(Protocol):
    """What ``progress=`` accepts besides True/False: one bar per stage, opened with a total,
    advanced, then finished."""

    def start(self, stage: str, total: int) -> None:
        """Open the bar of ``stage`` with ``total`` steps."""

    def advance(self, stage: str, n: int = 1) -> None:
        """Advance ``stage`` by ``n`` steps."""

    def finish(self, stage: str) -> None:
        """Close the bar of ``stage``."""


class SilentProgress:
    """A reporter that shows nothing (``progress=False``)."""

    def start(self, stage: str, total: int) -> None:
        """Do nothing."""
        pass

    def advance(self, stage: str, n: int = 1) -> None:
        """Do nothing."""
        pass

    def finish(self, stage: str) -> None:
        """Do nothing."""
        pass


class RichProgress:
    """One bar per stage on stderr (rich); bars are removed when the work ends."""

    def __init__(self, label: str = "") -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._label = label
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=Console(file=sys.stderr), transient=True)
        self._tasks: dict[str, int] = {}
        self._running = False

    def start(self, stage: str, total: int) -> None:
        """Open a rich progress bar for ``stage`` (starting the display on first use)."""
        if not self._running:
            self._progress.start()
            self._running = True
        name = f"{self._label} {stage}".strip()
        self._tasks[stage] = self._progress.add_task(name, total=max(total, 1))

    def advance(self, stage: str, n: int = 1) -> None:
        """Advance the bar of ``stage`` by ``n``."""
        if stage in self._tasks:
            self._progress.advance(self._tasks[stage], n)

    def finish(self, stage: str) -> None:
        """Remove the bar of ``stage``; the display stops when no bar is left."""
        task = self._tasks.pop(stage, None)
        if task is not None:
            self._progress.remove_task(task)
        if not self._tasks and self._running:
            self._progress.stop()
            self._running = False


def make_reporter(progress: "bool | ProgressReporter | None", label: str = "") -> ProgressReporter:
    """The reporter for a ``progress=`` argument: True -> :class:`RichProgress`, False/None ->
    :class:`SilentProgress`, else the object itself after checking it has the three methods."""
    if progress is True:
        return RichProgress(label)
    if not progress:
        return SilentProgress()
    for method in ("start", "advance", "finish"):
        if not callable(getattr(progress, method, None)):
            raise TypeError(f"progress must be True/False or have start/advance/finish methods; missing {method}")
    return progress
