"""Shared test plumbing."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

# Shared helpers (import them with ``from conftest import ...``; no test file imports another).
FAST = dict(num_frames=4, steps=3, resolution=24)  # a Generator call that takes seconds on CPU
CLI_FAST = ["--model", "tiny-random", "--frames", "4", "--steps", "2", "--resolution", "24", "--quiet"]


def write_clip(path: Path, num_frames: int = 12, size: int = 64, seed: int = 0) -> Path:
    """A coloured square moving over a grey background, written by the SDK's video writer."""
    from sdk.outputs.video import write_video

    colour = np.random.default_rng(seed).integers(0, 120, 3)
    frames = []
    for i in range(num_frames):
        img = np.full((size, size, 3), 200, np.uint8)
        x0 = 8 + i * 2
        img[20:44, x0:x0 + 20] = colour
        frames.append(img)
    return write_video(frames, path, fps=12, codec="mpeg4")

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


@pytest.fixture(scope="session")
def host_lib(tmp_path_factory):
    """The CUDA kernels' host-side C++ built once per run with g++ (ctypes handle)."""
    from cuda_support import build_host_lib

    return build_host_lib(tmp_path_factory.mktemp("s4d_host"))


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: minutes of CPU and many GB of RAM; run with S4D_RUN_SLOW=1")
    config.addinivalue_line("markers", "gpu: needs a CUDA device and the CUDA kernels; skipped without them")


def _gpu_skip_reason() -> str | None:
    """Why ``gpu`` tests cannot run here (None: they can)."""
    import torch

    if torch.version.cuda is None or not torch.cuda.is_available():
        return "no CUDA device"
    from sdk.kernels.cuda import cuda_kernels_available, cuda_kernels_unavailable_reason

    return None if cuda_kernels_available() else f"CUDA kernels unavailable ({cuda_kernels_unavailable_reason()})"


def pytest_collection_modifyitems(config, items) -> None:
    import os

    if any("gpu" in item.keywords for item in items):
        reason = _gpu_skip_reason()
        if reason is not None:
            for item in items:
                if "gpu" in item.keywords:
                    item.add_marker(pytest.mark.skip(reason=reason))
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
