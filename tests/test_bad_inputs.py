"""Hostile inputs through the real CLIs (s4d-convert, s4d-export, s4d-eval), issue 14.

Every case must end in a clear message naming the input and the documented exit code (0 ok,
1 some input failed, 2 usage error), never in a traceback; no partial output may remain and
nothing the tool did not write may be deleted or replaced. Cases marked BUG-n are the issue's
seven data-loss / false-success bugs, WEAK the weak spots it lists; the rest are the ordinary
hostile inputs. Everything runs on the CPU with the tiny random model and tiny clips. The engine
cases fake the TensorRT build itself (tests/test_builder.py builds real engines); the export
cases fake the graph tracing where a real export is not the point.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from typer.testing import CliRunner

from sdk.core import atomic
from sdk.cli.convert import app as convert_app
from sdk.cli.evaluate import app as eval_app
from sdk.generation.pipeline import Generator
from export.cli import app as export_app
from conftest import CLI_FAST, write_clip as write_video  # shared helpers

REPO = Path(__file__).resolve().parent.parent
RNG_SEED = 14


def run(app, args):
    """Invoke a CLI; a traceback (any exception other than the CLI's own exit) fails the case."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output, res.output
    return res


def convert(*args):
    return run(convert_app, [*args, *CLI_FAST])


def summary(res) -> dict:
    return {Path(i["input"]).name: i for i in json.loads(res.stdout)["items"]}


def snapshot(root: Path) -> dict:
    """Relative path -> bytes of every file under ``root`` (to prove it was left untouched)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def partials(root: Path) -> list:
    return [p.name for p in root.iterdir() if ".partial-" in p.name] if root.is_dir() else []


def write_frames(directory: Path, n: int = 5, size=(32, 32)) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(RNG_SEED)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(directory / f"f{i}.png")
    return directory


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", seed=RNG_SEED)


@pytest.fixture
def no_model_load(monkeypatch):
    """Usage errors must be found before the model loads: loading now fails the case."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(Generator, "from_pretrained", refuse)


# ============================================================================================
# s4d-convert: usage errors, all found before the model loads (exit 2)
# ============================================================================================

USAGE_CASES = {
    "frames-zero": (["--frames", "0"], "--frames must be >= 1"),
    "frames-negative": (["--frames", "-3"], "--frames must be >= 1"),
    "frames-not-an-integer": (["--frames", "abc"], "--frames"),
    "steps-zero": (["--steps", "0"], "--steps must be >= 1"),
    "steps-fractional": (["--steps", "2.5"], "--steps"),
    "guidance-negative (WEAK)": (["--guidance", "-1"], "--guidance must be a finite number >= 0"),
    "guidance-nan": (["--guidance", "nan"], "--guidance must be a finite number"),
    "guidance-inf": (["--guidance", "inf"], "--guidance must be a finite number"),
    "resolution-5000 (WEAK)": (["--resolution", "5000"], "--resolution must be between 8 and 1024"),
    "resolution-too-small": (["--resolution", "4"], "--resolution must be between 8 and 1024"),
    "start-after-end (WEAK)": (["--start", "1.5", "--end", "0.5"], "--start (1.5 s) must be before --end (0.5 s)"),
    "start-equals-end": (["--start", "1", "--end", "1"], "must be before --end"),
    "start-negative": (["--start", "-1"], "--start must be a finite time in seconds >= 0"),
    "end-nan": (["--end", "nan"], "--end must be a finite time"),
    "seed-overflow": (["--seed", str(2 ** 70)], "--seed must be between"),
    "seed-not-an-integer": (["--seed", "abc"], "--seed"),
    "format-unknown": (["--format", "fbx"], "unknown output format"),
    "format-empty": (["--format", ""], "unknown output format"),
    "decode-unknown": (["--decode", "foo"], "--decode must be one of"),
    "noise-unknown": (["--noise", "foo"], "--noise must be one of"),
    "matting-unknown": (["--matting", "magic"], "--matting must be one of"),
    "backend-unknown": (["--backend", "magic"], "--backend must be one of"),
    "skip-existing-and-overwrite": (["--skip-existing", "--overwrite"], "exclude each other"),
}


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_convert_usage_error_before_model_load(case, tmp_path, no_model_load):
    extra, needle = USAGE_CASES[case]
    res = run(convert_app, ["x.mp4", "-o", tmp_path / "o", "--quiet", *extra])
    assert res.exit_code == 2 and needle in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_convert_output_is_an_existing_file(tmp_path, no_model_load):
    target = tmp_path / "out"
    target.write_text("a file where a directory should be")
    res = run(convert_app, ["x.mp4", "-o", target, "--quiet"])
    assert res.exit_code == 2 and "exists and is not a directory" in res.output
    assert target.read_text() == "a file where a directory should be"


# ============================================================================================
# s4d-convert: bad models and backends (exit 2, clear message)
# ============================================================================================


def _legacy_pickle(path: Path) -> str:
    torch.save({"model": {"x": torch.zeros(2)}, "extra": SimpleNamespace(a=1)}, path,
               _use_new_zipfile_serialization=False)
    return str(path)


MODEL_CASES = {
    "model-missing": (lambda d: str(d / "nope"), "cannot load model"),
    "model-dir-not-a-checkpoint": (lambda d: (d / "notes.txt").write_text("hi") and str(d), "not a checkpoint directory"),
    "model-garbage-safetensors": (lambda d: (d / "w.safetensors").write_bytes(os.urandom(512)) and
                                  str(d / "w.safetensors"), "cannot read checkpoint"),
    "model-empty-ckpt": (lambda d: (d / "w.ckpt").write_bytes(b"") == 0 and str(d / "w.ckpt"), "cannot read checkpoint"),
    "model-legacy-pickle (WEAK)": (lambda d: _legacy_pickle(d / "legacy.ckpt"),
                                   "only weights-only pickles (tensors in plain dicts / lists) and safetensors"),
    "model-missing-keys": (lambda d: torch.save({"model": {"x": torch.zeros(2)}}, d / "k.ckpt") or str(d / "k.ckpt"),
                           "required key"),
    "model-unknown-file-type": (lambda d: (d / "m.txt").write_text("x") and str(d / "m.txt"),
                                "unknown checkpoint file type"),
    "backend-tensorrt-on-a-checkpoint": (lambda d: "tiny-random --backend tensorrt", "runs an engine directory"),
    "backend-onnxruntime-on-a-checkpoint": (lambda d: "tiny-random --backend onnxruntime",
                                            "runs an ONNX export directory"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_convert_bad_model(case, tmp_path, clip):
    make, needle = MODEL_CASES[case]
    model = make(tmp_path).split(" ")
    res = run(convert_app, [clip, "-o", tmp_path / "o", "--quiet", "--model", *model])
    assert res.exit_code == 2 and needle in res.output, res.output
    if "legacy" in case:
        assert "mmap" not in res.output
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory) -> Path:
    """A real ONNX export of the tiny model for 2 frames (the only real export of this suite)."""
    out = tmp_path_factory.mktemp("export") / "tiny_t2"
    res = run(export_app, ["onnx", "tiny", "-o", out, "--frames", "2"])
    assert res.exit_code == 0, res.output
    return out


def test_convert_export_for_another_frame_count(onnx_export, clip, tmp_path):
    res = run(convert_app, [clip, "-o", tmp_path / "o", "--quiet", "--model", onnx_export, "--frames", "4"])
    assert res.exit_code == 2 and "was exported for 2 frames; pass --frames 2" in res.output


# ============================================================================================
# s4d-convert: bad inputs fail one item each; the batch goes on (exit 1)
# ============================================================================================


def _loop(d: Path, name: str) -> str:
    (d / f"{name}_b.mp4").symlink_to(f"{name}.mp4")
    (d / f"{name}.mp4").symlink_to(f"{name}_b.mp4")
    return str(d / f"{name}.mp4")


def _dir_with_loop(d: Path) -> str:
    inner = d / "videos_with_loop"
    inner.mkdir()
    (inner / "x.mp4").symlink_to("x.mp4")
    return str(inner)


def _truncated(d: Path, clip: Path) -> str:
    (d / "truncated.mp4").write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])
    return str(d / "truncated.mp4")


def _mixed_sizes(d: Path) -> str:
    frames = write_frames(d / "mixed_sizes", n=4)
    Image.new("RGB", (40, 20)).save(frames / "f9.png")
    return str(frames)


def _corrupt_frame(d: Path) -> str:
    frames = write_frames(d / "corrupt_frame", n=4)
    (frames / "f2.png").write_bytes(b"\x89PNG not really")
    return str(frames)


def _looping_frame(d: Path) -> str:
    frames = write_frames(d / "looping_frame", n=5)
    (frames / "f5.png").symlink_to("f5.png")
    return str(frames)


def _bomb_dir(d: Path) -> str:
    frames = d / "bomb_frames"
    frames.mkdir()
    bomb_png(frames / "f0.png")
    return str(frames)


BATCH_CASES = {  # input name in the summary: (make the input, a piece of its error message)
    "missing.mp4": (lambda d, c: str(d / "missing.mp4"), "does not exist"),
    "empty.mp4": (lambda d, c: (d / "empty.mp4").write_bytes(b"") == 0 and str(d / "empty.mp4"), "cannot decode video"),
    "notes.mp4": (lambda d, c: (d / "notes.mp4").write_text("not a video") and str(d / "notes.mp4"),
                  "cannot decode video"),
    "truncated.mp4": (lambda d, c: _truncated(d, c), "cannot decode video"),
    "short.mp4": (lambda d, c: str(write_video(d / "short.mp4", num_frames=3)), "only 3 frames"),
    "empty_dir": (lambda d, c: (d / "empty_dir").mkdir() or str(d / "empty_dir"), "directory has no videos"),
    "still.png": (lambda d, c: Image.new("RGB", (8, 8)).save(d / "still.png") or str(d / "still.png"),
                  "is a single image"),
    "mixed_sizes": (lambda d, c: _mixed_sizes(d), "all images must have the same size"),
    "corrupt_frame": (lambda d, c: _corrupt_frame(d), "f2.png"),
    "nothing*.mp4": (lambda d, c: str(d / "nothing*.mp4"), "no file matches"),
    "loop.mp4": (lambda d, c: _loop(d, "loop"), "symbolic link loop"),  # BUG-1
    "dangling.mp4": (lambda d, c: (d / "dangling.mp4").symlink_to("gone.mp4") or str(d / "dangling.mp4"),
                     "dangling symbolic link"),
    "x.mp4": (lambda d, c: _dir_with_loop(d), "symbolic link loop inside input directory"),  # WEAK: loops in a dir
    "looping_frame": (lambda d, c: _looping_frame(d), "'f5.png'"),
    "bomb_frames": (lambda d, c: _bomb_dir(d), "S4D_MAX_FRAME_PIXELS"),  # WEAK: decompression bomb
    "few_frames": (lambda d, c: str(write_frames(d / "few_frames", n=2)), "only 2 frames"),
}


@pytest.fixture(scope="module")
def batch(tmp_path_factory, clip):
    d = tmp_path_factory.mktemp("batch")
    args = [make(d, clip) for make, _ in BATCH_CASES.values()]
    shutil.copy(clip, d / "good.mp4")
    out = d / "out"
    res = convert(*args, d / "good.mp4", "-o", out, "--json")
    return res, out


@pytest.mark.parametrize("case", list(BATCH_CASES))
def test_convert_bad_input_is_one_failed_item(case, batch):
    res, out = batch
    assert res.exit_code == 1
    item = summary(res)[case]
    assert item["status"] == "failed" and BATCH_CASES[case][1] in item["error"], item
    assert summary(res)["good.mp4"]["status"] == "ok", "the batch must go on"


def test_convert_batch_leaves_only_complete_outputs(batch):
    res, out = batch
    assert sorted(p.name for p in out.iterdir()) == ["good"], "no partial outputs"
    assert json.loads((out / "good" / "manifest.json").read_text())["format"] == "sculpt4d-mesh-sequence"


def test_bug1_looping_symlink_argument_is_one_failed_item(tmp_path, clip):
    """BUG-1: `ln -s b.mp4 a.mp4; ln -s a.mp4 b.mp4; s4d-convert a.mp4 good.mp4 -o out`."""
    (tmp_path / "a.mp4").symlink_to("b.mp4")
    (tmp_path / "b.mp4").symlink_to("a.mp4")
    shutil.copy(clip, tmp_path / "good.mp4")
    res = convert(tmp_path / "a.mp4", tmp_path / "good.mp4", "-o", tmp_path / "out", "--json")
    assert res.exit_code == 1
    items = summary(res)
    assert items["a.mp4"]["status"] == "failed" and "symbolic link loop" in items["a.mp4"]["error"]
    assert items["good.mp4"]["status"] == "ok" and (tmp_path / "out" / "good" / "manifest.json").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_convert_unreadable_input_directory(tmp_path, clip):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        res = convert(locked, clip, "-o", tmp_path / "out", "--json")
    finally:
        locked.chmod(0o755)
    assert res.exit_code == 1 and "cannot read" in summary(res)["locked"]["error"]


@pytest.mark.parametrize("value,needle", [("1000", "over the limit of 1,000"), ("lots", "must be a positive integer")])
def test_convert_frame_pixel_cap_on_videos(value, needle, tmp_path, clip, monkeypatch):
    """WEAK: huge frames are refused before decoding; the message names the limit and the override."""
    monkeypatch.setenv("S4D_MAX_FRAME_PIXELS", value)
    res = convert(clip, "-o", tmp_path / "out", "--json")
    assert res.exit_code == 1
    error = summary(res)["clip.mp4"]["error"]
    assert needle in error and "S4D_MAX_FRAME_PIXELS" in error
    assert not (tmp_path / "out" / "clip").exists()


# ============================================================================================
# s4d-convert: outputs never clobber inputs or anything the tool did not write
# ============================================================================================


def test_bug2_output_replacing_its_input_frames_is_refused(tmp_path, monkeypatch):
    """BUG-2: `cd X; s4d-convert frames -o . --overwrite` must not replace ./frames."""
    frames = write_frames(tmp_path / "frames")
    before = snapshot(frames)
    monkeypatch.chdir(tmp_path)
    for extra in (["--overwrite"], []):
        res = convert("frames", "-o", ".", "--json", *extra)
        assert res.exit_code == 1
        assert "it is the input" in summary(res)["frames"]["error"]
        assert snapshot(frames) == before


def test_output_equal_to_an_input_file_is_refused(tmp_path, clip, monkeypatch):
    shutil.copy(clip, tmp_path / "clip")  # no extension: its output name is its own name
    monkeypatch.chdir(tmp_path)
    res = convert("clip", "-o", ".", "--overwrite", "--json")
    assert res.exit_code == 1 and "it is the input" in summary(res)["clip"]["error"]
    assert (tmp_path / "clip").read_bytes() == clip.read_bytes()


def test_output_containing_an_input_is_refused(tmp_path, clip, monkeypatch):
    (tmp_path / "shots").mkdir()
    shutil.copy(clip, tmp_path / "shots" / "shots.mp4")
    monkeypatch.chdir(tmp_path)
    res = convert("shots/shots.mp4", "-o", ".", "--overwrite", "--json")
    assert res.exit_code == 1 and "it contains the input" in summary(res)["shots.mp4"]["error"]
    assert (tmp_path / "shots" / "shots.mp4").is_file()


def test_output_inside_an_input_frame_directory_is_refused(tmp_path):
    frames = write_frames(tmp_path / "frames")
    before = snapshot(frames)
    res = convert(frames, "-o", frames / "out", "--json")
    assert res.exit_code == 1 and "inside the input frame directory" in summary(res)["frames"]["error"]
    assert snapshot(frames) == before


def test_bug3_dot_named_input_never_targets_outdir(tmp_path, clip):
    """BUG-3: an input named `..mp4` (stem '.') used to make the target OUTDIR itself."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    shutil.copy(clip, tmp_path / "..mp4")
    shutil.copy(clip, tmp_path / ".hidden.mp4")
    res = convert(tmp_path / "..mp4", tmp_path / ".hidden.mp4", "-o", out, "--overwrite", "--json")
    assert res.exit_code == 0, res.output
    assert (out / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in out.iterdir()) == ["_hidden", "input", "keep.txt"]


@pytest.mark.parametrize("stem", [".", "..", "...", "", " ", ".hidden", "a/b", "..\\..\\x", "nul\x00byte", "x" * 300])
def test_output_names_are_one_plain_child(stem):
    from sdk.cli.convert import safe_output_name

    name = safe_output_name(stem)
    assert name and name not in (".", "..") and not name.startswith(".") and len(name) <= 200
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert (Path("/o") / name).parent == Path("/o")


def test_existing_output_without_overwrite_is_kept(tmp_path, clip):
    target = tmp_path / "out" / "clip"
    target.mkdir(parents=True)
    (target / "mine.txt").write_text("user data")
    res = convert(clip, "-o", tmp_path / "out", "--json")
    assert res.exit_code == 1 and "exists (use --overwrite or --skip-existing)" in summary(res)["clip.mp4"]["error"]
    # not a conversion of this clip (no manifest names it), so --skip-existing does not pass it off as done
    res = convert(clip, "-o", tmp_path / "out", "--skip-existing", "--json")
    assert res.exit_code == 1 and "not an up-to-date conversion of this input" in summary(res)["clip.mp4"]["error"]
    assert snapshot(target) == {"mine.txt": b"user data"}


def test_overwrite_refuses_a_directory_the_tool_did_not_write(tmp_path, clip):
    target = tmp_path / "out" / "clip"
    target.mkdir(parents=True)
    (target / "manifest.json").write_text('{"format": "something else"}')
    (target / "keep.txt").write_text("user data")
    before = snapshot(target)
    res = convert(clip, "-o", tmp_path / "out", "--overwrite", "--json")
    assert res.exit_code == 1 and "refusing to replace" in summary(res)["clip.mp4"]["error"]
    assert snapshot(target) == before


def test_overwrite_replaces_its_own_output_but_not_added_files(tmp_path, clip):
    out = tmp_path / "out"
    assert convert(clip, "-o", out).exit_code == 0
    res = convert(clip, "-o", out, "--overwrite", "--format", "obj", "--json")
    assert res.exit_code == 0, res.output
    assert (out / "clip" / "frame_0000.obj").is_file() and not (out / "clip" / "frame_0000.glb").exists()
    (out / "clip" / "notes.txt").write_text("added by the user")
    res = convert(clip, "-o", out, "--overwrite", "--json")
    assert res.exit_code == 1 and "did not write (notes.txt)" in summary(res)["clip.mp4"]["error"]
    assert (out / "clip" / "notes.txt").read_text() == "added by the user" and not partials(out)


def test_output_under_a_file_fails_before_any_clip(tmp_path, clip):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = convert(clip, "-o", blocker / "out")
    assert res.exit_code == 2 and "cannot use --output" in res.output and blocker.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_directory(tmp_path, clip):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        res = convert(clip, "-o", out, "--json")
    finally:
        out.chmod(0o755)
    assert res.exit_code == 1 and "Permission denied" in summary(res)["clip.mp4"]["error"]
    assert list(out.iterdir()) == []


@pytest.fixture(params=["before-save", "during-save"])
def competing_run(request, monkeypatch):
    """Another run publishes the same target (as .obj) after this one checked it: while this run
    generates, or while it writes its own files."""
    from sdk.outputs.meshseq import MeshSequence

    state = {}
    if request.param == "before-save":
        real_call = Generator.__call__

        def racing_call(self, video, **kwargs):
            seq = real_call(self, video, **kwargs)
            seq.save(state["target"], formats=("obj",))
            return seq

        monkeypatch.setattr(Generator, "__call__", racing_call)
    else:
        real_manifest = MeshSequence.manifest

        def racing_manifest(self, files=()):
            if not state.get("raced"):
                state["raced"] = True
                self.save(state["target"], formats=("obj",))
            return real_manifest(self, files)

        monkeypatch.setattr(MeshSequence, "manifest", racing_manifest)
    return state


def test_bug4_concurrent_run_without_overwrite_reports_it(tmp_path, clip, competing_run):
    """BUG-4: the target appeared meanwhile: this run fails and the other's result is intact."""
    out = tmp_path / "out"
    competing_run["target"] = out / "clip"
    res = convert(clip, "-o", out, "--json")
    assert res.exit_code == 1 and "appeared meanwhile" in summary(res)["clip.mp4"]["error"]
    assert (out / "clip" / "frame_0000.obj").is_file() and not (out / "clip" / "frame_0000.glb").exists()
    assert not partials(out)


def test_bug4_concurrent_run_with_overwrite_replaces_atomically(tmp_path, clip, competing_run):
    out = tmp_path / "out"
    competing_run["target"] = out / "clip"
    res = convert(clip, "-o", out, "--overwrite", "--json")
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "clip" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(snapshot(out / "clip")), "one complete result, nothing mixed"
    assert not (out / "clip" / "frame_0000.obj").exists() and not partials(out)


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "portable-fallback"])
def test_racing_publishers_one_wins(renameat2, tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_use_renameat2", renameat2)
    target, results, barrier = tmp_path / "t", [], threading.Barrier(6, timeout=60)

    def publish(i):
        barrier.wait()
        try:
            with atomic.atomic_directory(target) as tmp:
                (tmp / "who").write_text(str(i))
            results.append(i)
        except FileExistsError:
            results.append(None)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and (target / "who").read_text() == str(winners[0]) and not partials(tmp_path)


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "portable-fallback"])
def test_overwrite_replaces_only_provable_outputs(renameat2, tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_use_renameat2", renameat2)

    def ours(path):
        return atomic.written_by_us(path, "m.json", "test-format", lambda m: m["files"])

    target = tmp_path / "t"
    for content in ("old", "new"):
        with atomic.atomic_directory(target, overwrite=True, owned=ours) as tmp:
            (tmp / "data").write_text(content)
            (tmp / "m.json").write_text(json.dumps({"format": "test-format", "files": ["data"]}))
    assert (target / "data").read_text() == "new" and not partials(tmp_path)
    (target / "user.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=r"did not write \(user.txt\)"):
        with atomic.atomic_directory(target, overwrite=True, owned=ours) as tmp:
            pass
    assert (target / "user.txt").read_text() == "keep" and not partials(tmp_path)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_partials_of_dead_runs_are_removed_and_nothing_else(tmp_path, clip):
    """WEAK: a killed run's `.NAME.partial-*` is removed by the next run; only ours, only dead."""
    out = tmp_path / "out"
    out.mkdir()
    dead, host = _dead_pid(), socket.gethostname()

    def partial(name, pid, tag_pid=None, tag=True):
        d = out / f".{name}.partial-{pid}-abc123"
        d.mkdir()
        (d / "frame_0000.glb").write_bytes(b"half")
        if tag:
            (d / atomic.PARTIAL_TAG).write_text(json.dumps({"format": atomic.PARTIAL_FORMAT, "pid": tag_pid or pid,
                                                            "host": host, "started": None, "target": name}))
        return d

    stale = partial("old", dead)
    alive = partial("busy", os.getpid())
    untagged = partial("user", dead, tag=False)
    mismatched = partial("odd", dead, tag_pid=dead + 1)
    res = convert(clip, "-o", out)
    assert res.exit_code == 0 and "the temporary output of a run that was killed" in res.output
    assert not stale.exists() and alive.exists() and untagged.exists() and mismatched.exists()


def test_sigkill_during_save_is_cleaned_by_the_next_run(tmp_path, clip):
    out = tmp_path / "out"
    code = ("import os, signal\nfrom sdk.core.atomic import atomic_directory\n"
            f"with atomic_directory({str(out / 'clip')!r}) as tmp:\n"
            "    (tmp / 'frame_0000.glb').write_bytes(b'half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL and partials(out)
    res = convert(clip, "-o", out)
    assert res.exit_code == 0 and not partials(out) and (out / "clip" / "manifest.json").is_file()


# ============================================================================================
# s4d-export onnx: replace only an earlier export, never a user's files
# ============================================================================================


@pytest.fixture
def fast_export(monkeypatch):
    """Skip the graph tracing (seconds per graph); the directory handling stays real."""
    import export.onnx

    def fake_export_module(module, args, path, *a, **k):
        Path(path).write_bytes(b"onnx stand-in")
        return None

    monkeypatch.setattr(export.onnx, "_export_module", fake_export_module)


def test_bug5_foreign_export_json_is_not_an_export(tmp_path):
    """BUG-5: a directory holding any file named export.json used to be deleted, keep.txt with it."""
    target = tmp_path / "D"
    target.mkdir()
    (target / "export.json").write_text('{"whatever": true}')
    (target / "keep.txt").write_text("user data")
    before = snapshot(target)
    res = run(export_app, ["onnx", "tiny", "-o", target, "--frames", "2"])
    assert res.exit_code == 2 and "not an ONNX export directory" in res.output
    assert snapshot(target) == before


def test_earlier_export_with_a_user_file_is_kept(tmp_path, onnx_export):
    target = tmp_path / "D"
    shutil.copytree(onnx_export, target)
    (target / "keep.txt").write_text("user data")
    before = snapshot(target)
    res = run(export_app, ["onnx", "tiny", "-o", target, "--frames", "2"])
    assert res.exit_code == 2 and "did not write (keep.txt)" in res.output
    assert snapshot(target) == before


def test_earlier_export_is_replaced(tmp_path, onnx_export, fast_export):
    target = tmp_path / "D"
    shutil.copytree(onnx_export, target)
    res = run(export_app, ["onnx", "tiny", "-o", target, "--frames", "3"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((target / "export.json").read_text())
    assert manifest["frames"] == 3 and sorted(manifest["written"]) == sorted(snapshot(target))
    assert not partials(tmp_path)


EXPORT_USAGE_CASES = {
    "output-is-a-file": (lambda d: (d / "f").write_text("x") and ["-o", d / "f", "--frames", "2"], "not a directory"),
    "output-is-cwd": (lambda d: ["-o", ".", "--frames", "2"], "refusing"),
    "frames-zero": (lambda d: ["-o", d / "e", "--frames", "0"], "positive integer"),
    "dtype-unknown": (lambda d: ["-o", d / "e", "--frames", "2", "--dtype", "int8"], "--dtype"),
    "schedule-unknown": (lambda d: ["-o", d / "e", "--frames", "2", "--schedule", "wobbly"], "wobbly"),
    "block-size-zero": (lambda d: ["-o", d / "e", "--frames", "2", "--block-size", "0"], "--block-size"),
}


@pytest.mark.parametrize("case", list(EXPORT_USAGE_CASES))
def test_export_onnx_usage_errors(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make, needle = EXPORT_USAGE_CASES[case]
    before = snapshot(tmp_path)
    res = run(export_app, ["onnx", "tiny", *make(tmp_path)])
    assert res.exit_code == 2 and needle in res.output, res.output
    assert not (tmp_path / "e").exists() and not partials(tmp_path)
    if case != "output-is-a-file":
        assert snapshot(tmp_path) == before


def test_export_onnx_bad_checkpoint(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(os.urandom(256))
    res = run(export_app, ["onnx", tmp_path / "w.safetensors", "-o", tmp_path / "e", "--frames", "2"])
    assert res.exit_code == 2 and "cannot read checkpoint" in res.output and not (tmp_path / "e").exists()


# ============================================================================================
# s4d-export build / inspect: corrupt engines and malformed manifests
# ============================================================================================


@pytest.fixture
def fake_trt(monkeypatch):
    """TensorRT stand-in: the builder's cache, manifest and verification logic run for real."""
    import export.builder as builder
    from export.tensorrt import BuiltEngine

    trt = SimpleNamespace(__version__="0.0-fake")
    monkeypatch.setattr(builder, "import_tensorrt", lambda target: (trt, target))
    monkeypatch.setattr(builder, "find_plugin_library", lambda: None)

    def fake_export(models, onnx_dir, frames, dtype, schedule, anchor, block_size, parts):
        part = parts[0]
        node = {"num_frames": frames, "schedule": schedule, "anchor": anchor, "block_size": block_size}
        return SimpleNamespace(files={part: Path(onnx_dir) / f"{part}.onnx"}, manifest={
            "tokens_per_frame": 8, "context_tokens": 4, "block_sparse_node": node,
            "dit_config": {}, "vae_config": {}, "conditioner_config": {}})

    monkeypatch.setattr(builder, "export_onnx", fake_export)
    monkeypatch.setattr(builder, "build_engine", lambda path, shapes, flavour, use_plugin, log: BuiltEngine(
        memoryview(b"engine:" + str(path).encode() * 64), 0))


def build(engines: Path):
    return run(export_app, ["build", "--frames", "4", "--target", "tensorrt-rtx", "--engine-dir", engines])


@pytest.fixture
def engines(tmp_path, fake_trt) -> Path:
    out = tmp_path / "engines"
    res = build(out)
    assert res.exit_code == 0 and "4 built" in res.output, res.output
    return out


def test_bug6_corrupt_engines_are_detected_and_rebuilt(engines):
    """BUG-6: overwritten bytes in dit_t4.engine and vae_query.engine truncated to 7 bytes."""
    manifest = json.loads((engines / "manifest.json").read_text())
    for name, entry in manifest["engines"].items():
        assert entry["sha256"] == hashlib.sha256((engines / name).read_bytes()).hexdigest()
        assert entry["bytes"] == (engines / name).stat().st_size
    with open(engines / "dit_t4.engine", "r+b") as f:
        f.seek(10)
        f.write(b"XXXX")
    with open(engines / "vae_query.engine", "r+b") as f:
        f.truncate(7)
    res = run(export_app, ["inspect", engines])
    assert res.exit_code == 1
    assert "dit_t4.engine [CORRUPT]" in res.output and "vae_query.engine [CORRUPT]" in res.output
    assert "does not match its recorded sha256" in res.output and "engine file is 7 bytes" in res.output
    res = build(engines)
    assert res.exit_code == 0 and "2 built, 2 reused" in res.output
    assert "building dit_t4.engine: engine file content does not match its recorded sha256" in res.output
    assert "building vae_query.engine: engine file is 7 bytes, the manifest recorded" in res.output
    assert run(export_app, ["inspect", engines]).exit_code == 0


def test_missing_engine_is_reported_and_rebuilt(engines):
    (engines / "conditioner.engine").unlink()
    res = run(export_app, ["inspect", engines])
    assert res.exit_code == 1 and "conditioner.engine [MISSING]" in res.output
    res = build(engines)
    assert res.exit_code == 0 and "building conditioner.engine: engine file missing" in res.output


def test_engines_without_checksums_are_rebuilt(engines):
    manifest = json.loads((engines / "manifest.json").read_text())
    del manifest["engines"]["dit_t4.engine"]["sha256"]  # as written before checksums were recorded
    (engines / "manifest.json").write_text(json.dumps(manifest))
    assert "no sha256 recorded" in run(export_app, ["inspect", engines]).output
    res = build(engines)
    assert res.exit_code == 0 and "building dit_t4.engine: no sha256 recorded" in res.output


def test_build_refuses_an_engine_file_it_did_not_write(tmp_path, fake_trt):
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "dit_t4.engine").write_bytes(b"a user's own file")
    res = build(engines)
    assert res.exit_code == 2 and "nothing proves s4d-export build wrote it" in res.output
    assert (engines / "dit_t4.engine").read_bytes() == b"a user's own file"


def test_engine_directory_as_model_needs_a_gpu(engines, clip, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    res = run(convert_app, [clip, "-o", tmp_path / "o", "--quiet", "--model", engines])
    assert res.exit_code == 2 and "needs a CUDA GPU" in res.output


def _entry_without(key):
    def edit(m):
        del m["engines"]["vae_decoder.engine"][key]
    return edit


MANIFEST_CASES = {  # BUG-7: valid JSON of the wrong shape
    "top-level-list": (lambda m: [], "expected a JSON object, got list"),
    "entry-without-precision": (_entry_without("precision"), "lacks 'precision'"),
    "entry-without-part": (_entry_without("part"), "lacks 'part'"),
    "engines-is-a-list": (lambda m: dict(m, engines=[]), "'engines' must be an object"),
    "entry-is-a-string": (lambda m: m["engines"].update({"vae_decoder.engine": "x"}), "must be an object"),
    "frames-is-a-string": (lambda m: m["engines"]["dit_t4.engine"].update(frames="4"), "'frames' must be int"),
    "bytes-is-a-bool": (lambda m: m["engines"]["dit_t4.engine"].update(bytes=True), "'bytes' must be int"),
    "plugin-layers-not-int": (lambda m: m["engines"]["dit_t4.engine"].update(plugin_layers="2"),
                              "'plugin_layers' must be int"),
    "sha256-not-hex": (lambda m: m["engines"]["dit_t4.engine"].update(sha256="zz"), "sha256 must be 64"),
    "unknown-part": (lambda m: m["engines"]["dit_t4.engine"].update(part="decoder"), "unknown part"),
    "path-in-name": (lambda m: m["engines"].update({"../x.engine": m["engines"].pop("dit_t4.engine")}),
                     "must be named 'dit_t4.engine'"),
    "foreign-format": (lambda m: dict(m, format="sculpt4d-mesh-sequence"), "expected 'sculpt4d-engines'"),
    "not-json": (None, "unreadable engine manifest"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_bug7_malformed_manifest_is_a_clear_usage_error(case, engines):
    edit, needle = MANIFEST_CASES[case]
    path = engines / "manifest.json"
    if edit is None:
        path.write_text("{not json")
    else:
        manifest = json.loads(path.read_text())
        edited = edit(manifest)
        path.write_text(json.dumps(manifest if edited is None else edited))
    before = snapshot(engines)
    for args in (["inspect", engines], ["build", "--frames", "4", "--target", "tensorrt-rtx", "--engine-dir", engines]):
        res = run(export_app, args)
        assert res.exit_code == 2 and needle in res.output, (args[0], res.output)
    assert snapshot(engines) == before


def test_manifest_accepts_an_integer_plugin_layers(engines):
    manifest = json.loads((engines / "manifest.json").read_text())
    manifest["engines"]["dit_t4.engine"]["plugin_layers"] = 3
    (engines / "manifest.json").write_text(json.dumps(manifest))
    assert run(export_app, ["inspect", engines]).exit_code == 0


BUILD_USAGE_CASES = {
    "precision-unknown": (["--precision", "int4"], "--precision"),
    "target-unknown": (["--target", "magic"], "--target"),
    "engine-dir-is-a-file": (["--engine-dir", "FILE"], "is not a directory"),
}


@pytest.mark.parametrize("case", list(BUILD_USAGE_CASES))
def test_build_usage_errors(case, tmp_path, fake_trt):
    (tmp_path / "FILE").write_text("x")
    extra = [str(tmp_path / "FILE") if a == "FILE" else a for a in BUILD_USAGE_CASES[case][0]]
    args = ["build", "--frames", "4", "--engine-dir", tmp_path / "e", *extra]
    res = run(export_app, args)
    assert res.exit_code == 2 and BUILD_USAGE_CASES[case][1] in res.output, res.output
    assert (tmp_path / "FILE").read_text() == "x"


@pytest.mark.parametrize("args,needle", [(["inspect", "MISSING"], "s4d-export build --frames N"),
                                         (["flops", "--frames", "0"], ">= 1")], ids=["inspect-missing", "flops-zero"])
def test_export_other_usage_errors(args, needle, tmp_path):
    res = run(export_app, [str(tmp_path / a) if a == "MISSING" else a for a in args])
    assert res.exit_code == 2 and needle in res.output


# ============================================================================================
# s4d-eval: garbage meshes are errors, empty predictions are flagged
# ============================================================================================


def sphere(center=0.0):
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.4)
    mesh.apply_translation((center, 0, 0))
    return mesh


@pytest.fixture
def sequences(tmp_path):
    for name in ("pred", "gt"):
        (tmp_path / name).mkdir()
        for i in range(3):
            sphere(0.05 * i).export(tmp_path / name / f"frame_{i:04d}.ply")
    return tmp_path / "pred", tmp_path / "gt"


def evaluate(pred, gt, *extra):
    return run(eval_app, [pred, gt, "--points", "2000", "--iou-resolution", "16", *extra])


def _nan_frame(path: Path):
    mesh = sphere()
    mesh.vertices[:] = np.nan
    mesh.export(path.with_suffix(".ply"))


EVAL_ERROR_CASES = {
    "garbage-obj (WEAK)": (lambda p, g: ((p / "frame_0001.ply").unlink(), (p / "frame_0001.obj").write_text(
        "hello\nthis is not a mesh\n")), "no triangles could be read"),
    "all-nan-frame (WEAK)": (lambda p, g: _nan_frame(p / "frame_0001"), "non-finite (NaN/inf) coordinates"),
    "nan-in-ground-truth": (lambda p, g: _nan_frame(g / "frame_0002"), "non-finite"),
    "garbage-ply": (lambda p, g: (p / "frame_0000.ply").write_text("not a ply file"), "frame_0000.ply"),
    "point-cloud-obj": (lambda p, g: ((p / "frame_0001.ply").unlink(), (p / "frame_0001.obj").write_text(
        "v 0 0 0\nv 1 0 0\nv 0 1 0\n")), "no triangles could be read"),
    "frame-count-differs": (lambda p, g: (p / "frame_0002.ply").unlink(), "frame counts differ"),
    "empty-ground-truth": (lambda p, g: (g / "frame_0001.ply").unlink() or (g / "frame_0001.obj").write_text(
        "# empty mesh: no surface found in this frame\n"), "ground-truth mesh is empty"),
    "missing-directory": (lambda p, g: shutil.rmtree(p), "no such directory"),
}


@pytest.mark.parametrize("case", list(EVAL_ERROR_CASES))
def test_eval_input_errors(case, sequences):
    pred, gt = sequences
    make, needle = EVAL_ERROR_CASES[case]
    make(pred, gt)
    res = evaluate(pred, gt, "--json")
    assert res.exit_code == 2 and needle in res.output, res.output


@pytest.mark.parametrize("fmt", ["obj", "ply"])
def test_eval_flags_empty_predicted_frames(fmt, sequences):
    """An empty frame as s4d-convert writes it is scored (Chamfer inf) and clearly flagged."""
    from sdk.outputs.meshseq import _export_mesh

    pred, gt = sequences
    (pred / "frame_0001.ply").unlink()
    _export_mesh(trimesh.Trimesh(), pred / f"frame_0001.{fmt}", fmt)
    res = evaluate(pred, gt, "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["empty_pred_frames"] == [1] and result["mean"]["chamfer"] is None
    assert "1 of 3 predicted frames are empty" in res.output


@pytest.mark.parametrize("extra,needle", [(["--points", "0"], "--points must be between 1 and"),
                                          (["--threshold", "-1"], "--threshold must be a positive number"),
                                          (["--threshold", "nan"], "--threshold must be a positive number"),
                                          (["--scale"], "need --register")],
                         ids=["points-zero", "threshold-negative", "threshold-nan", "scale-without-register"])
def test_eval_option_errors(extra, needle, sequences):
    res = evaluate(*sequences, *extra)
    assert res.exit_code == 2 and needle in res.output
