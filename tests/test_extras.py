"""A missing optional dependency is one line naming the extra to install, never a traceback.

Missing packages are simulated with ``sys.modules[name] = None`` (``import name`` then raises
ImportError), so these tests run whether or not the extras are installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdk.core.extras import EXTRA_OF, MissingExtraError, require

ROOT = Path(__file__).resolve().parent.parent


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(MissingExtraError, match=r"needs the \[onnx\] extra") as err:
        require("onnxscript", "ONNX export")
    message = str(err.value)
    assert message.startswith("ONNX export needs the [onnx] extra") and "pip install 'sculpt4d-sdk[onnx]'" in message
    assert "\n" not in message and err.value.extra == "onnx" and isinstance(err.value, ImportError)
    assert require("json", "anything", extra="dev").__name__ == "json"  # present: the module itself


def test_every_extra_named_exists_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    declared = {line.split("=", 1)[0].strip() for line in section.splitlines() if "=" in line}
    assert set(EXTRA_OF.values()) <= declared, set(EXTRA_OF.values()) - declared


@pytest.mark.parametrize("missing", ["onnxscript", "onnx"])
def test_export_onnx_without_the_extra_is_one_line(monkeypatch, tmp_path, missing):
    from export.cli import app

    monkeypatch.setitem(sys.modules, missing, None)
    res = CliRunner().invoke(app, ["onnx", "tiny", "-o", str(tmp_path / "out"), "--frames", "2"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "[onnx] extra" in lines[0] and "pip install 'sculpt4d-sdk[onnx]'" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_console_script_prints_no_traceback(tmp_path):
    """The real entry point (main()), as the console script runs it, with onnxscript missing."""
    code = "import sys; sys.modules['onnxscript'] = None; from export.cli import main; main()"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-c", code, "onnx", "tiny", "-o", str(tmp_path / "o"), "--frames", "2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: ONNX export needs the [onnx] extra (no module named 'onnxscript')")


def test_onnxruntime_backend_without_the_extra(monkeypatch, tmp_path):
    from sdk.generation.runtimes import BackendError, OnnxRuntime

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendError, match=r"backend 'onnxruntime' needs the \[onnx\] extra"):
        OnnxRuntime(tmp_path)


def test_rembg_missing_names_its_extra(monkeypatch, tmp_path):
    from sdk.inputs.matting import rembg_status

    (tmp_path / "u2net.onnx").write_bytes(b"stand-in")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "rembg", None)
    usable, reason = rembg_status()
    assert not usable and "pip install 'sculpt4d-sdk[rembg]'" in reason
