"""Say what runs: the manifest and ``s4d-convert --json`` record the attention backend, the
marching-cubes backend, the matting method and the threads used; a fallback from a faster path
prints one warning line (reason and fix) once per process."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sdk.core import notices
from sdk.cli.convert import app
from sdk.kernels import cpu as cpu_mod
from sdk.generation.pipeline import Generator
from sdk.sparse import SparsePattern, attention

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import CLI_FAST, FAST, write_clip as write_video  # noqa: E402 (shared helpers)

needs_kernel = pytest.mark.skipif(not cpu_mod.cpu_kernel_available(),
                                  reason=f"C++ CPU kernel unavailable: {cpu_mod.cpu_kernel_unavailable_reason()}")


@pytest.fixture
def fresh_notices(monkeypatch):
    monkeypatch.setattr(notices, "_seen", {})
    return notices


def test_warn_once_prints_one_line_once(fresh_notices, capsys):
    assert notices.warn_once("k", "something fell back:\n  because; fix: do this")
    assert not notices.warn_once("k", "again")
    err = capsys.readouterr().err
    assert err == "sculpt4d: warning: something fell back: because; fix: do this\n"
    assert notices.fallbacks() == {"k": "something fell back: because; fix: do this"}
    assert notices.one_line("\n\n first \nsecond") == "first"


@needs_kernel
def test_manifest_records_what_ran(tmp_path, fresh_notices):
    seq = Generator.tiny_random(seed=0)(write_video(tmp_path / "clip.mp4"), **FAST)
    s = seq.settings
    assert s["attention_backend"] == "cpp-kernel" and s["mcubes_backend"] == "cpu"
    assert s["matting"] == "border-key" and s["fallbacks"] == []
    assert s["threads"] == {"torch_intra_op": torch.get_num_threads(), "cpp_kernel": torch.get_num_threads()}
    seq.save(tmp_path / "out", formats=("glb",), animated_glb=False, preview=False, viewer=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["attention_backend"] == "cpp-kernel"


def test_cpu_kernel_fallback_warns_once_and_is_recorded(tmp_path, fresh_notices, monkeypatch, capsys):
    monkeypatch.setattr(attention, "_cpu_kernel_ready", lambda: False)
    monkeypatch.setattr(cpu_mod, "cpu_kernel_unavailable_reason", lambda: "no C++ compiler found (stand-in)\nmore")
    video = write_video(tmp_path / "clip.mp4")
    gen = Generator.tiny_random(seed=0)
    seq = gen(video, **FAST)
    seq2 = gen(video, **FAST)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sculpt4d: warning:")]
    assert len(lines) == 1, lines  # many attention calls, two runs: one line
    assert "torch-blocked" in lines[0] and "no C++ compiler found (stand-in)" in lines[0] and "fix:" in lines[0]
    for s in (seq.settings, seq2.settings):
        assert s["attention_backend"] == "torch-blocked" and s["fallbacks"] == ["attention-cpu-kernel"]
        assert "cpp_kernel" not in s["threads"]


def test_explicit_backend_is_recorded():
    q = torch.randn(1, 1, 32, 8)
    attention.backends_used(reset=True)
    pattern = SparsePattern.for_tokens(2, 16, 8, (1,), True)
    attention.block_sparse_attention(q, q, q, pattern, 8, backend="reference")
    attention.block_sparse_attention(q, q, q, pattern, 8, backend="torch")
    assert attention.backends_used(reset=True) == ["dense-reference", "torch-blocked"]
    assert attention.backends_used() == []


@needs_kernel
def test_convert_json_says_what_ran(tmp_path):
    video = write_video(tmp_path / "clip.mp4")
    res = CliRunner().invoke(app, [str(video), "-o", str(tmp_path / "out"), *CLI_FAST, "--json", "--no-preview",
                                   "--no-viewer"])
    assert res.exit_code == 0, res.output
    ran = json.loads(res.stdout)["items"][0]["ran"]
    assert ran["attention_backend"] == "cpp-kernel" and ran["mcubes_backend"] == "cpu"
    assert ran["matting"] == "border-key" and ran["threads"]["torch_intra_op"] >= 1


@needs_kernel
def test_kernel_without_openmp_warns(tmp_path, monkeypatch, fresh_notices, fresh_cpu_loader, capsys):
    """A compiler that rejects -fopenmp: the kernel is built single-threaded and says so once."""
    gxx = shutil.which(os.environ.get("CXX", "g++"))
    wrapper = tmp_path / "no-openmp-c++"
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec {gxx} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CXX", str(wrapper))
    assert cpu_mod.cpu_kernel_available() and cpu_mod.cpu_kernel_info()["openmp"] is False
    assert cpu_mod.cpu_kernel_available()
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sculpt4d: warning:")]
    assert len(err) == 1 and "without OpenMP" in err[0] and "fix:" in err[0], err
    assert np.isfinite(cpu_mod.block_sparse_attention_cpu(
        torch.ones(1, 1, 16, 8), torch.ones(1, 1, 16, 8), torch.ones(1, 1, 16, 8),
        torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32), 16, 1.0).numpy()).all()
