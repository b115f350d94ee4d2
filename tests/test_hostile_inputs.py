"""The second hostile run (issue 32): every input accounted for under colliding names, FIFOs,
resource bombs and unreachable services. Each bug of that run is reproduced here as it was found
(through the real CLIs where it was found there), plus a property test over generated input sets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CLI_FAST, write_clip

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
QUICK = [*CLI_FAST, "--no-preview", "--no-viewer", "--no-sequence-glb"]


def convert(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``s4d-convert`` in its own process (a hang is a timeout here, not a stuck test run)."""
    return subprocess.run([str(BIN / "s4d-convert"), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def manifest_input(directory: Path) -> str:
    return json.loads((directory / "manifest.json").read_text())["input"]["path"]


def no_traceback(res: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr[-3000:]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Three different clips named so that their stems collide: a.mp4, a.mkv, a-1.mkv."""
    root = tmp_path_factory.mktemp("clips")
    out = {}
    for seed, name in enumerate(("a.mp4", "a.mkv", "a-1.mkv")):
        out[name] = write_clip(root / name, num_frames=6, seed=seed + 1)
    return out


# --------------------------------------------------------------------------------------------
# 1-2. output names and --skip-existing
# --------------------------------------------------------------------------------------------


def test_colliding_stems_get_distinct_outputs_that_name_their_inputs(clips, tmp_path):
    """Bug 1: a.mp4, a.mkv, a-1.mkv with --overwrite wrote two clips into OUT/a-1, exit 0."""
    out = tmp_path / "out"
    res = convert(*map(str, clips.values()), "-o", str(out), *QUICK, "--overwrite")
    assert res.returncode == 0, res.stderr
    dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(dirs) == 3
    assert sorted(manifest_input(d) for d in dirs) == sorted(os.path.realpath(p) for p in clips.values())
    # the clip whose own stem is 'a-1' keeps that name; the duplicate 'a' never takes it
    assert manifest_input(out / "a-1") == os.path.realpath(clips["a-1.mkv"])


def test_output_names_do_not_depend_on_argument_order(clips):
    import itertools

    from sdk.batch.clips import expand_inputs

    mappings = {tuple(sorted((i.input, i.name) for i in expand_inputs([str(p) for p in order])))
                for order in itertools.permutations(clips.values())}
    assert len(mappings) == 1
    names = [name for _, name in next(iter(mappings))]
    assert len(set(names)) == 3 and "a-1" in names


def test_skip_existing_skips_only_outputs_of_the_same_input(clips, tmp_path):
    """Bug 2: rerun with --skip-existing called a.mp4 'skipped' although it was never converted."""
    out = tmp_path / "out"
    first = convert(str(clips["a.mkv"]), "-o", str(out), *QUICK)
    assert first.returncode == 0, first.stderr
    assert manifest_input(out / "a") == os.path.realpath(clips["a.mkv"])
    # a.mp4 alone would be OUT/a too, which holds a.mkv's conversion: never skipped into, never replaced
    res = convert(str(clips["a.mp4"]), "-o", str(out), *QUICK, "--skip-existing")
    assert res.returncode == 0 and "1 converted, 0 skipped" in res.stderr, res.stderr
    assert manifest_input(out / "a") == os.path.realpath(clips["a.mkv"])  # nothing replaced
    assert manifest_input(out / "a-2") == os.path.realpath(clips["a.mp4"])  # the next free name
    # its own output is skipped ...
    again = convert(str(clips["a.mkv"]), "-o", str(out), *QUICK, "--skip-existing")
    assert again.returncode == 0 and "skipped" in again.stderr
    # ... unless the input changed since
    os.utime(clips["a.mkv"], ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = convert(str(clips["a.mkv"]), "-o", str(out), *QUICK, "--skip-existing")
    assert changed.returncode == 1 and "input changed since" in changed.stderr


def test_the_same_input_twice_converts_once(clips, tmp_path):
    from sdk.batch.clips import expand_inputs

    path = clips["a.mp4"]
    items = expand_inputs([str(path), str(path.parent / "." / path.name)])
    assert [i.status for i in items] == ["pending", "skipped"]
    assert items[0].name == items[1].name and "the same input" in items[1].error


def test_a_name_collision_while_working_says_whose_output_it_is(clips, tmp_path):
    from sdk.batch.clips import Item, _appeared_meanwhile

    target = tmp_path / "out" / "a"
    target.mkdir(parents=True)
    (target / "manifest.json").write_text(json.dumps({"format": "sculpt4d-sequence", "input": {"path": "/x/a.mov"}}))
    message = _appeared_meanwhile(Item(str(clips["a.mp4"]), "a", str(target)))
    assert "another input (/x/a.mov)" in message and "nothing was replaced" in message


# --------------------------------------------------------------------------------------------
# 3-4. deep JSON, FIFOs: never a traceback, never a hang
# --------------------------------------------------------------------------------------------


def test_deeply_nested_manifest_fails_that_clip_only(clips, tmp_path):
    """Bug 3: OUT/clip/manifest.json nested 200 000 levels deep killed the batch with a RecursionError."""
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    res = convert(str(clips["a.mp4"]), str(clips["a-1.mkv"]), "-o", str(out), *QUICK, "--overwrite")
    no_traceback(res)
    assert res.returncode == 1 and "nested deeper than" in res.stderr
    assert "1 converted" in res.stderr and (out / "a-1" / "manifest.json").is_file()


def test_fifo_input_and_fifo_manifest_fail_fast(clips, tmp_path):
    """Bug 4: a FIFO named in.mp4 among the inputs (even with --timeout), or as a manifest, hung the batch."""
    fifo = tmp_path / "in.mp4"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = convert(str(fifo), str(clips["a-1.mkv"]), "-o", str(out), *QUICK, "--timeout", "5", timeout=200)
    assert res.returncode == 1 and "is a FIFO (named pipe)" in res.stderr and "1 converted" in res.stderr
    (out / "a").mkdir()
    os.mkfifo(out / "a" / "manifest.json")
    res = convert(str(clips["a.mp4"]), "-o", str(out), *QUICK, "--overwrite", timeout=200)
    no_traceback(res)
    assert res.returncode == 1 and "FIFO" in res.stderr
    assert time.monotonic() - t0 < 190


def test_fifo_inside_a_frame_directory_is_named(tmp_path):
    from PIL import Image

    from sdk.inputs.frames import InputError, load_frames

    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"f{i}.png")
    os.mkfifo(tmp_path / "f3.png")
    with pytest.raises(InputError, match="'f3.png' .* is a FIFO"):
        load_frames(tmp_path, 3)


@pytest.mark.parametrize("text, match", [
    ("[" * 5000 + "]" * 5000, "nested deeper than"),
    ('{"a": ' * 100 + "1" + "}" * 100, "nested deeper than"),
    ("\xff\xfe", "not UTF-8"),
    ("{nope", "not valid JSON"),
])
def test_json_reader_limits(tmp_path, text, match):
    from sdk.core.jsonfile import JSONFileError, read_json

    path = tmp_path / "x.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(JSONFileError, match=match):
        read_json(path)


def test_json_reader_refuses_special_files_and_size(tmp_path):
    from sdk.core.jsonfile import JSONFileError, json_depth, read_json

    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(JSONFileError, match="FIFO"):
        read_json(tmp_path / "fifo.json")  # returns at once: opened non-blocking
    with pytest.raises(JSONFileError, match="is a directory"):
        read_json(tmp_path)
    (tmp_path / "big.json").write_text(json.dumps(["x" * 100] * 100))
    with pytest.raises(JSONFileError, match="over the 1000-byte limit"):
        read_json(tmp_path / "big.json", max_bytes=1000)
    assert json_depth('{"a": "[[[[", "b": [[1]]}') == 3  # brackets inside strings do not count
    assert read_json(tmp_path / "big.json")[0] == "x" * 100


# --------------------------------------------------------------------------------------------
# 5. network waits have bounds
# --------------------------------------------------------------------------------------------


def test_unreachable_ray_address_fails_within_the_connect_timeout(clips, tmp_path):
    """Bug 5: --ray=127.0.0.1:1 (nothing listening) retried the connection forever."""
    pytest.importorskip("ray")
    t0 = time.monotonic()
    res = convert(str(clips["a.mp4"]), "-o", str(tmp_path / "o"), "--ray=127.0.0.1:1", "--connect-timeout", "3",
                  *QUICK, timeout=120)
    no_traceback(res)
    assert res.returncode == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in res.stderr
    assert time.monotonic() - t0 < 100


def test_ray_took_the_clip_as_its_address(clips, tmp_path):
    res = convert("--ray", str(clips["a.mp4"]), "-o", str(tmp_path / "o"), *QUICK)
    assert res.returncode == 2 and "--ray took" in res.stderr and "--ray=ADDRESS" in res.stderr


def test_accelerator_type_that_no_node_has_is_an_error(clips, tmp_path):
    """Weak spot: --accelerator-type H100 on a CPU cluster waited silently."""
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([str(BIN / "s4d-convert"), str(clips["a.mp4"]), "-o", str(tmp_path / "o"), "--ray",
                          "--accelerator-type", "H100", *QUICK], capture_output=True, text=True, timeout=300, env=env)
    no_traceback(res)
    assert res.returncode == 2 and "no node of the Ray cluster has GPU type 'H100'" in res.stderr


# --------------------------------------------------------------------------------------------
# 6. check before allocating
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("part, key, value, match", [
    ("vae_config", "width", 12000, "mis-shaped"),
    ("conditioner_config", "hidden_size", 30000, "mis-shaped"),
    ("vae_config", "num_latents", 10**8, r"num_latents must be an integer in \[1, 65536\]"),
    ("dit_config", "depth", -3, r"depth must be an integer"),
])
def test_lying_config_is_refused_before_any_allocation(tmp_path, part, key, value, match):
    """Bug 6: a sculpt4d.json claiming width 12000 built the model at that size (4.9 GB) before any check."""
    from sdk.models.checkpoint import default_model_path

    ckpt = tmp_path / "ckpt"
    shutil.copytree(default_model_path(), ckpt)
    manifest = json.loads((ckpt / "sculpt4d.json").read_text())
    manifest[part][key] = value
    (ckpt / "sculpt4d.json").write_text(json.dumps(manifest))
    # peak RSS from /proc (VmHWM: this process since exec; ru_maxrss would carry pytest's own peak over the fork)
    script = (
        "import re\n"
        "from sdk.generation.pipeline import Generator\n"
        "try:\n"
        f"    Generator.from_pretrained({str(ckpt)!r}, device='cpu')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
        "print('rss_mb', int(hwm) // 1024)\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    import re

    assert re.search(match, res.stdout), res.stdout
    assert int(res.stdout.rsplit("rss_mb", 1)[1]) < 1500  # the lie would need gigabytes


def test_manifest_that_is_a_list_names_the_file(tmp_path):
    from sdk.models.checkpoint import CheckpointError, default_model_path, load_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(default_model_path(), ckpt)
    (ckpt / "sculpt4d.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"sculpt4d.json: not a Sculpt4D checkpoint manifest \(a JSON list"):
        load_checkpoint(ckpt)


# --------------------------------------------------------------------------------------------
# weak spots: one clear line each
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, match", [
    (["--timeout", "inf"], "--timeout must be a number of seconds"),
    (["--timeout", "nan"], "--timeout must be a number of seconds"),
    (["--connect-timeout", "0"], "--connect-timeout must be between"),
])
def test_bad_timeouts_are_usage_errors(clips, tmp_path, args, match):
    res = convert(str(clips["a.mp4"]), "-o", str(tmp_path / "o"), *args, *QUICK)
    no_traceback(res)
    assert res.returncode == 2 and match in res.stderr


def test_nul_byte_in_an_output_uri(clips, tmp_path):
    res = convert(str(clips["a.mp4"]), "-o", f"file://{tmp_path}/a%00b", *QUICK)
    no_traceback(res)
    assert res.returncode == 2 and "contains a NUL byte" in res.stderr


def test_output_that_cannot_be_created_fails_before_the_model_loads(clips, tmp_path):
    t0 = time.monotonic()
    res = convert(str(clips["a.mp4"]), "-o", "/proc/s4d-cannot-exist/out", *QUICK)
    assert res.returncode == 2 and "cannot use --output" in res.stderr and "cannot create" in res.stderr
    assert time.monotonic() - t0 < 60


def test_random_checkpoint_refusals(tmp_path):
    exe = str(BIN / "s4d-export")
    big_seed = subprocess.run([exe, "random-checkpoint", "-o", str(tmp_path / "r"), "--size", "tiny",
                               "--seed", str(10**23)], capture_output=True, text=True, timeout=120)
    here = subprocess.run([exe, "random-checkpoint", "-o", ".", "--size", "tiny"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    for res, match in ((big_seed, "--seed must be between 0 and 2**63 - 1"),
                       (here, "random-checkpoint writes a new directory only")):
        no_traceback(res)
        assert res.returncode == 2 and match in res.stderr
    assert "pass overwrite" not in here.stderr


def test_export_io_errors_are_one_line(monkeypatch, tmp_path):
    import errno

    import export.cli as cli

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "dit.onnx"))

    monkeypatch.setattr("export.onnx.export_onnx", full_disk)
    res = CliRunner().invoke(cli.app, ["onnx", "tiny", "-o", str(tmp_path / "o"), "--frames", "2"])
    assert res.exit_code == 1 and "No space left on device" in res.output and res.exception is not None
    assert not isinstance(res.exception, OSError)


@pytest.mark.parametrize("option, value", [("--points", "1000000000"), ("--iou-resolution", "100000")])
def test_eval_size_options_are_bounded(tmp_path, option, value):
    from sdk.cli.evaluate import app

    res = CliRunner().invoke(app, [str(tmp_path), str(tmp_path), option, value])
    assert res.exit_code == 2 and f"{option} must be between 1 and" in res.output


def _engine_entry(**overrides) -> dict:
    entry = {"part": "vae_decoder", "model_hash": "x", "precision": "fp16", "flavour": "tensorrt-rtx",
             "tensorrt_version": "1", "target": "cpu", "frames": None, "plugin_loaded": False, "bytes": 1,
             "built_at": "now", "build_seconds": 1.0, "sha256": "0" * 64}
    entry.update(overrides)
    return entry


@pytest.mark.parametrize("overrides, match", [
    ({"tokens_per_frame": -1}, "'tokens_per_frame' must be a number >= 1"),
    ({"bytes": -5}, "'bytes' must be a number >= 0"),
    ({"block_sparse_node": {"num_frames": 0}}, "block_sparse_node 'num_frames'"),
    ({"block_sparse_node": {"schedule": [1, -2]}}, "block_sparse_node 'schedule'"),
])
def test_engine_manifest_inner_fields_are_checked(tmp_path, overrides, match):
    from sdk.core.contract import BackendError, check_engine_manifest

    data = {"format": "sculpt4d-engines", "engines": {"vae_decoder.engine": _engine_entry(**overrides)}}
    data["format"] = __import__("sdk.core.contract", fromlist=["ENGINE_FORMAT"]).ENGINE_FORMAT
    with pytest.raises(BackendError, match=match):
        check_engine_manifest(data, tmp_path / "manifest.json")


@pytest.mark.parametrize("file", ["manifest.json"])
def test_inspect_of_a_deep_engine_manifest_is_one_line(tmp_path, file):
    (tmp_path / file).write_text("[" * 100_000 + "]" * 100_000)
    res = subprocess.run([str(BIN / "s4d-export"), "inspect", str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    no_traceback(res)
    assert res.returncode == 2 and "nested deeper than" in res.stderr


def test_deep_safetensors_header_is_a_clear_error(tmp_path):
    import struct

    from sdk.core.tensorfile import TensorFileError, read_header

    header = ("[" * 10_000 + "]" * 10_000).encode()
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(TensorFileError, match="nested deeper than"):
        read_header(tmp_path / "x.safetensors")


def test_a_preview_that_fails_is_reported_and_a_full_disk_fails_the_save(tmp_path, monkeypatch):
    import errno

    import trimesh

    import sdk.outputs.viewer
    from sdk.outputs.meshseq import MeshSequence

    seq = MeshSequence([trimesh.creation.box()] * 2, [0, 1], [0.0, 0.1], [])

    def broken(*args, **kwargs):
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(sdk.outputs.viewer, "write_viewer", broken)
    with pytest.warns(UserWarning, match="viewer.html not written"):
        seq.save(tmp_path / "a", formats=("ply",), preview=False)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["stats"]["not_written"] == {"viewer.html": "RuntimeError: renderer bug"}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sdk.outputs.viewer, "write_viewer", disk_full)
    with pytest.raises(OSError, match="No space left"):
        MeshSequence([trimesh.creation.box()], [0], [0.0], []).save(tmp_path / "b", formats=("ply",), preview=False)
    assert not (tmp_path / "b").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".b")]


def test_border_key_warns_when_the_object_covers_the_border():
    from sdk.inputs.matting import border_uniformity, remove_background

    plain = np.full((64, 64, 3), 200, np.uint8)
    plain[20:44, 20:44] = (200, 30, 30)
    covering = np.full((64, 64, 3), 200, np.uint8)
    covering[3:, :] = (30, 200, 30)  # the object fills the frame but for a strip at the top
    assert border_uniformity(plain) == 1.0 and border_uniformity(covering) < 0.8
    with pytest.warns(UserWarning, match="border-key matting: only"):
        remove_background([covering], "border")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        remove_background([plain], "border")


def test_a_growing_batch_keeps_earlier_outputs_where_they_are(tmp_path):
    """Review of issue 32: names take the output directory into account, so adding a.mkv beside an
    already converted a.mp4 neither steals OUT/a nor converts a.mp4 again."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.mp4").write_bytes(b"first")
    out = tmp_path / "out"
    first = _run_batch([str(src)], out)
    assert [(i.name, i.status) for i in first] == [("a", "ok")]
    (src / "a.mkv").write_bytes(b"second")
    items = _run_batch([str(src)], out, skip_existing=True)
    assert {Path(i.input).name: (i.name, i.status) for i in items} == {"a.mp4": ("a", "skipped"),
                                                                       "a.mkv": ("a-2", "ok")}
    assert manifest_input(out / "a") == os.path.realpath(src / "a.mp4")


def test_aliases_of_one_input_are_one_name_in_any_order(tmp_path):
    from sdk.batch.clips import expand_inputs

    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "zz.mp4").symlink_to(tmp_path / "a.mp4")
    for order in ([tmp_path / "a.mp4", tmp_path / "zz.mp4"], [tmp_path / "zz.mp4", tmp_path / "a.mp4"]):
        items = expand_inputs([str(p) for p in order])
        assert {i.name for i in items} == {"a"} and sorted(i.status for i in items) == ["pending", "skipped"]


def test_fifo_as_model_fails_fast(tmp_path, clips):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    res = convert(str(clips["a.mp4"]), "-o", str(tmp_path / "o"), "--model", str(fifo), "--quiet", timeout=120)
    assert res.returncode == 2 and "is a FIFO (named pipe)" in res.stderr
    res = subprocess.run([str(BIN / "s4d-export"), "onnx", str(fifo), "-o", str(tmp_path / "x"), "--frames", "2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "is a FIFO (named pipe)" in res.stderr


def test_old_manifest_with_a_relative_source_owns_nothing(tmp_path):
    from sdk.batch.clips import Item, output_owner

    item = Item(str(tmp_path / "a.mp4"), "a")
    assert output_owner({"source": "in/a.mp4"}, item)[0] == "unknown"  # relative: from where that run started
    assert output_owner({"source": str(tmp_path / "a.mp4")}, item) == ("this", "")
    assert output_owner({"source": "/elsewhere/a.mp4"}, item) == ("other", "/elsewhere/a.mp4")


def test_ray_client_address_without_port_uses_the_client_port():
    pytest.importorskip("ray")
    from sdk.batch.distributed import ClusterError, _check_reachable

    with pytest.raises(ClusterError, match="cannot reach the Ray cluster at ray://127.0.0.1"):
        _check_reachable("ray://127.0.0.1", 2.0)  # port 10001, nothing listening
    with pytest.raises(ClusterError, match="within"):
        _check_reachable("ray://127.0.0.1:1/", 2.0)


@pytest.mark.parametrize("part, key", [("vae_config", "heads"), ("conditioner_config", "patch_size"),
                                       ("dit_config", "num_heads")])
def test_zero_sizes_that_divide_are_refused(part, key):
    from sdk.models.config import (ConditionerConfig, ConfigError, DiTConfig, VAEConfig, dit_config_from_dict,
                                   simple_config_from_dict, to_dict)

    cls = {"vae_config": VAEConfig, "conditioner_config": ConditionerConfig, "dit_config": DiTConfig}[part]
    data = {**to_dict(cls.tiny()), key: 0}
    with pytest.raises(ConfigError, match=rf"{key} must be an integer in \[1, "):
        dit_config_from_dict(data) if cls is DiTConfig else simple_config_from_dict(cls, data)


# --------------------------------------------------------------------------------------------
# the property: every input ends in exactly one output that names it, or in a reported failure
# --------------------------------------------------------------------------------------------


class _StandIn:
    """A generator stand-in for the property test: the naming, planning and publishing under test
    are the real code; the model's output does not matter to them (one tiny mesh per clip)."""

    def __call__(self, source, progress=None, **settings):
        import trimesh

        from sdk.outputs.meshseq import MeshSequence

        return MeshSequence([trimesh.creation.box()], [0], [0.0], [], settings={"seed": 0}, source=str(source))


STEMS = ["a", "A", "a-1", "a-2", "clip", "Clip", unicodedata.normalize("NFD", "é"), "é", ".hidden", "x y", "a#1"]


def _run_batch(paths: list[str], out: Path, skip_existing: bool = False) -> list:
    from sdk.batch.clips import OutputOptions, convert_one, expand_inputs, plan_items
    from sdk.generation.settings import RunSettings

    items = expand_inputs(paths)
    plan_items(items, str(out), paths, OutputOptions(formats=("ply",), sequence_glb=False, preview=False,
                                                     viewer=False, skip_existing=skip_existing))
    settings = RunSettings(2, 1, 1.0, 16, "none", 0, "dense", "shared", None, None)
    for item in items:
        if item.status == "pending":
            convert_one(_StandIn(), item, settings, OutputOptions(formats=("ply",), sequence_glb=False,
                                                                  preview=False, viewer=False))
    return items


def test_every_input_ends_in_one_output_that_names_it_or_a_failure(tmp_path_factory):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    entry = st.tuples(st.sampled_from(STEMS), st.sampled_from([".mp4", ".mkv", ".MP4", ".mov"]),
                      st.sampled_from(["", "d1", "d2", "d1/sub"]), st.sampled_from(["file", "file", "link", "relative"]))

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(st.lists(entry, min_size=1, max_size=7), st.randoms(), st.integers(0, 7))
    def check(entries, rnd, first_batch):
        root = tmp_path_factory.mktemp("prop")
        paths = []
        for stem, ext, folder, kind in entries:
            path = root / "in" / folder / f"{stem}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "link" and paths:  # another name of an input already listed
                link = path.with_name(f"link-{len(paths)}{ext}")
                if not os.path.lexists(link):
                    link.symlink_to(os.path.realpath(paths[-1]))
                paths.append(str(link))
                continue
            if not path.exists():
                path.write_bytes(os.urandom(16))
            paths.append(os.path.relpath(path) if kind == "relative" else str(path))
        out = root / "out"
        # an earlier run converted some of them; the full set then runs with --skip-existing
        earlier = _run_batch(paths[:first_batch], out) if first_batch else []
        assert all(i.status in ("ok", "skipped") for i in earlier)
        items = _run_batch(paths, out, skip_existing=bool(first_batch))
        done_before = {os.path.realpath(i.input) for i in earlier}
        for item in items:
            if os.path.realpath(item.input) in done_before:
                assert item.status == "skipped", item  # converted before: skipped, never again
        # every argument is accounted for, once
        assert len(items) == len(paths)
        outputs = {}
        for item in items:
            assert item.status in ("ok", "skipped", "failed"), item
            if item.status == "failed":
                assert item.error
                continue
            real = os.path.realpath(item.input)
            assert manifest_input(Path(item.output)) == real  # the output names this very input
            outputs.setdefault(item.output, set()).add(real)
        assert all(len(inputs) == 1 for inputs in outputs.values()), outputs  # no output holds two inputs
        keys = [unicodedata.normalize("NFC", Path(o).name).casefold() for o in outputs]
        assert len(keys) == len(set(keys))  # distinct even on case-insensitive filesystems
        # the mapping does not depend on argument order
        shuffled = list(paths)
        rnd.shuffle(shuffled)
        from sdk.batch.clips import expand_inputs

        first = {(os.path.realpath(i.input), i.name) for i in expand_inputs(paths) if i.status == "pending"}
        again = {(os.path.realpath(i.input), i.name) for i in expand_inputs(shuffled) if i.status == "pending"}
        assert first == again
        # a rerun with --skip-existing skips everything (each input has its up-to-date output)
        from sdk.batch.clips import OutputOptions, expand_inputs as expand, plan_items

        rerun = expand(paths)
        plan_items(rerun, str(out), paths, OutputOptions(formats=("ply",), skip_existing=True))
        assert all(i.status == "skipped" for i in rerun), [(i.input, i.status, i.error) for i in rerun]

    check()


@pytest.fixture
def silent_endpoint():
    """An 'S3 endpoint' on loopback that accepts connections and never answers."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.5)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize("side", ["output", "input"])
def test_object_store_that_never_answers_fails_within_the_connect_timeout(clips, tmp_path, silent_endpoint, side):
    """Weak spot: an S3 endpoint that accepts and never answers took over 100 s to fail."""
    pytest.importorskip("pyarrow.fs")
    env = {**os.environ, "AWS_ENDPOINT_URL": silent_endpoint, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "AWS_DEFAULT_REGION": "us-east-1"}
    args = ([str(clips["a.mp4"]), "-o", "s3://bucket/out"] if side == "output"
            else ["s3://bucket/in/a.mp4", "-o", str(tmp_path / "o")])
    t0 = time.monotonic()
    res = subprocess.run([str(BIN / "s4d-convert"), *args, "--connect-timeout", "2", *QUICK], capture_output=True,
                         text=True, timeout=120, env=env)
    no_traceback(res)
    assert "no answer within 2 s" in res.stderr and res.returncode == (2 if side == "output" else 1)
    assert time.monotonic() - t0 < 60  # model loading included; the process does not wait for the request
