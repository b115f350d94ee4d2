"""Shared test plumbing."""

from __future__ import annotations

from typing import Callable

import pytest

_EVIDENCE: list[str] = []


@pytest.fixture(scope="session")
def ci_evidence() -> Callable[[str], None]:
    """Record one line of what a test proved (a build, a measured fact); printed at the end of
    the run, so CI logs show it even under ``pytest -q``."""
    return _EVIDENCE.append


def pytest_terminal_summary(terminalreporter) -> None:
    if _EVIDENCE:
        terminalreporter.section("what the tests built and proved")
        for line in _EVIDENCE:
            terminalreporter.write_line(line)
