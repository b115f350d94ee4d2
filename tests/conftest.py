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


@pytest.fixture
def fresh_cpu_loader(monkeypatch, tmp_path):
    """A fresh build-once state of the C++ CPU kernel (the process's own is restored afterwards)
    building into a private cache directory."""
    import sdk.kernels.cpu as cpu_mod

    monkeypatch.setattr(cpu_mod, "LOADER", cpu_mod.make_loader())
    monkeypatch.setenv("S4D_CACHE_DIR", str(tmp_path / "cache"))
    return cpu_mod.LOADER


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: minutes of CPU and many GB of RAM; run with S4D_RUN_SLOW=1")


def pytest_collection_modifyitems(config, items) -> None:
    import os

    if os.environ.get("S4D_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow (minutes, GBs of RAM): set S4D_RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter) -> None:
    if _EVIDENCE:
        terminalreporter.section("what the tests built and proved")
        for line in _EVIDENCE:
            terminalreporter.write_line(line)
