"""s4d-export build / inspect with TensorRT-RTX on the CPU, the engine cache, and the
TensorRT backend's checks (running engines needs a GPU: not possible here)."""

import hashlib
import json

import pytest
from typer.testing import CliRunner

from export.builder import stale_reason
from export.cli import app
from sdk.generation.runtimes import BackendError, check_engine_entry

ENTRY = {"part": "dit", "model_hash": "abc", "frames": 16, "schedule": [1, 1, 2, 4, 8, 16], "anchor": True,
         "block_size": 128, "precision": "fp16", "flavour": "tensorrt", "tensorrt_version": "10.9.0",
         "target": "NVIDIA H100 (sm_90)", "plugin_version": "1", "plugin_loaded": True}


def test_stale_reason(tmp_path):
    engine = tmp_path / "dit_t16.engine"
    assert stale_reason(None, ENTRY, engine) == "not built yet"
    assert stale_reason(ENTRY, ENTRY, engine) == "engine file missing"
    engine.write_bytes(b"x")
    built = dict(ENTRY, bytes=1, sha256=hashlib.sha256(b"x").hexdigest())  # what build records of the file
    assert stale_reason(built, dict(ENTRY), engine) is None
    assert stale_reason(built, dict(ENTRY, schedule=[4]), engine) == "schedule changed: [1, 1, 2, 4, 8, 16] -> [4]"
    assert "precision changed" in stale_reason(built, dict(ENTRY, precision="bf16"), engine)
    engine.write_bytes(b"y")
    assert "does not match its recorded sha256" in stale_reason(built, dict(ENTRY), engine)
    assert "older version" in stale_reason(ENTRY, dict(ENTRY), engine)


def test_engine_checks_name_the_fix():
    check_engine_entry(ENTRY, "dit_t16.engine", "10.9.0", "NVIDIA H100 (sm_90)")
    with pytest.raises(BackendError, match=r"built with tensorrt 10\.9\.0, this process has 10\.13.*s4d-export build "
                                           r"--frames 16"):
        check_engine_entry(ENTRY, "dit_t16.engine", "10.13.0", "NVIDIA H100 (sm_90)")
    with pytest.raises(BackendError, match=r"built for NVIDIA H100 \(sm_90\), this GPU is NVIDIA L4 \(sm_89\)"):
        check_engine_entry(ENTRY, "dit_t16.engine", "10.9.0", "NVIDIA L4 (sm_89)")


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt_rtx") is None,
                    reason="TensorRT-RTX is not installed (pip install 'sculpt4d-sdk[trt-rtx]')")
def test_build_cache_and_rebuild_with_tensorrt_rtx(tmp_path):
    runner = CliRunner()
    engines = tmp_path / "engines"
    args = ["build", "--frames", "2", "--checkpoint", "tiny", "--target", "tensorrt-rtx", "--precision", "fp16",
            "--engine-dir", str(engines)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    names = {"dit_t2.engine", "vae_decoder.engine", "vae_query.engine", "conditioner.engine"}
    assert names <= {p.name for p in engines.iterdir()}
    manifest = json.loads((engines / "manifest.json").read_text())
    dit = manifest["engines"]["dit_t2.engine"]
    assert dit["flavour"] == "tensorrt-rtx" and dit["frames"] == 2 and dit["block_sparse_node"]["num_frames"] == 2
    assert dit["schedule"] == [1, 1, 2, 4, 8, 16] and dit["precision"] == "fp16" and dit["tensorrt_version"]

    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "4 reused" in second.output
    assert all(f"cache hit: {n}" in second.output for n in names)

    third = runner.invoke(app, args + ["--schedule", "fixed4"])
    assert third.exit_code == 0
    assert "building dit_t2.engine: schedule changed: [1, 1, 2, 4, 8, 16] -> [4]" in third.output
    assert "cache hit: vae_decoder.engine" in third.output

    shown = runner.invoke(app, ["inspect", str(engines)])
    assert shown.exit_code == 0 and "dit_t2.engine [ok]" in shown.output and "schedule=[4]" in shown.output

    from sdk.generation.pipeline import Generator, GeneratorError

    with pytest.raises(GeneratorError, match="needs a CUDA GPU"):
        Generator.from_pretrained(engines)


def test_build_and_inspect_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(tmp_path)])
    assert res.exit_code == 2 and "s4d-export build --frames N" in res.output
    res = runner.invoke(app, ["build", "--frames", "2", "--precision", "int4", "--engine-dir", str(tmp_path)])
    assert res.exit_code == 2 and "--precision" in res.output


def test_plugin_stale_reason_follows_what_the_loaded_plugin_accepts(monkeypatch, tmp_path):
    import export.builder as builder

    node = {"head_dim": 32, "block_size": 32}
    body = dict(ENTRY, block_sparse_node=node, plugin_layers=0)
    with_plugin = dict(body, plugin_layers=7)
    lib = tmp_path / "libs4d_trt_plugin.so"
    monkeypatch.setattr(builder, "plugin_rejection", lambda trt, attrs: None)  # the library accepts the node
    assert "accepts this graph now" in builder.plugin_stale_reason(None, lib, body)
    assert builder.plugin_stale_reason(None, lib, with_plugin) is None
    assert "accepts this graph now" not in (builder.plugin_stale_reason(None, None, with_plugin) or "")
    monkeypatch.setattr(builder, "plugin_rejection", lambda trt, attrs: "the loaded plugin rejects block_size=32")
    assert builder.plugin_stale_reason(None, lib, body) is None
    assert "does not accept" in builder.plugin_stale_reason(None, lib, with_plugin)
    monkeypatch.setattr(builder, "plugin_rejection", lambda trt, attrs: None)
    assert builder.plugin_stale_reason(None, lib, dict(body, precision="fp32")) is None  # fp32: never the plugin
    failed = dict(body, plugin_fallback="build failed", plugin_path=str(lib))  # this library failed last time
    assert builder.plugin_stale_reason(None, lib, failed) is None
    assert "accepts this graph now" in builder.plugin_stale_reason(None, tmp_path / "other.so", failed)
    legacy = dict(ENTRY, block_sparse_node=node)  # manifests from before plugin_layers: key fields decide
    assert builder.plugin_stale_reason(None, lib, legacy) is None
    assert builder.plugin_stale_reason(None, lib, dict(body, part="vae_query")) is None


def test_engine_file_problem_from_bytes_in_hand_matches_the_file_check(tmp_path):
    import hashlib

    from sdk.generation.runtimes import engine_file_problem

    data = bytes(range(256)) * 8
    path = tmp_path / "dit_t16.engine"
    path.write_bytes(data)
    entry = dict(ENTRY, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert engine_file_problem(entry, path) is None and engine_file_problem(entry, path, data) is None
    flipped = data[:-1] + b"\x00"
    path.write_bytes(flipped)
    for problem in (engine_file_problem(entry, path), engine_file_problem(entry, path, flipped)):
        assert "does not match its recorded sha256" in problem
    assert "bytes, the manifest recorded" in engine_file_problem(entry, path, data[:7])
