"""End to end on CPU with the tiny random model: video -> Generator -> meshes, and s4d-convert."""

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from sdk.cli.convert import app
from sdk.generation.pipeline import Generator, GeneratorError

from conftest import CLI_FAST, FAST, write_clip as write_video  # shared helpers

@pytest.fixture(scope="module")
def generator():
    return Generator.tiny_random(seed=0)


def test_generator_end_to_end(tmp_path, generator):
    video = write_video(tmp_path / "clip.mp4")
    stages = []

    class Recorder:
        def start(self, stage, total):
            stages.append((stage, total))

        def advance(self, stage, n=1):
            pass

        def finish(self, stage):
            pass

    seq = generator(video, seed=3, progress=Recorder(), **FAST)
    assert [s for s, _ in stages] == ["frames", "condition", "sample", "decode", "mesh", "track"]
    assert len(seq) == 4 and seq.frame_indices == sorted(seq.frame_indices)
    assert set(seq.timings) == {"frames", "condition", "sample", "decode", "mesh", "track"}
    # topology="consistent" (the default): one face list, or per-frame meshes and the reason why not
    assert seq.topology == "consistent" or seq.stats["tracking_skipped"]
    if seq.topology == "consistent":
        assert all(np.array_equal(m.faces, seq.meshes[0].faces) for m in seq.meshes)
    per_frame = generator(video, seed=3, topology="per-frame", **FAST)
    assert per_frame.topology == "per-frame" and "track" not in per_frame.timings
    assert any(len(m.faces) for m in seq.meshes), "the tiny random field should cross zero somewhere"
    for mesh in seq.meshes:
        if len(mesh.vertices):
            assert np.all(np.abs(mesh.vertices) <= 1.01 + 1e-6)
    again = generator(video, seed=3, **FAST)
    for a, b in zip(seq.meshes, again.meshes):
        np.testing.assert_array_equal(a.vertices, b.vertices)  # seeded: reproducible


def test_generator_rejects_bad_settings(generator, tmp_path):
    video = write_video(tmp_path / "clip.mp4")
    with pytest.raises(GeneratorError, match="decode must be"):
        generator(video, decode="magic", **FAST)
    with pytest.raises(GeneratorError, match="runs an engine directory"):
        Generator.from_pretrained("tiny-random", backend="tensorrt")


def test_convert_cli_end_to_end(tmp_path):
    video = write_video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, [str(video), "-o", str(out), *CLI_FAST, "--format", "glb", "--format", "usd",
                                   "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["succeeded"] == 1 and summary["items"][0]["frames"] == 4
    result = out / "clip"
    for i in range(4):
        mesh = trimesh.load(result / f"frame_{i:04d}.glb", force="mesh")
        assert np.all(np.abs(mesh.vertices) <= 1.01 + 1e-6)
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(result / "sequence.usda"))
    assert len(UsdGeom.Mesh(stage.GetPrimAtPath("/Sculpt4D/mesh")).GetPointsAttr().GetTimeSamples()) == 4
    manifest = json.loads((result / "manifest.json").read_text())
    for key in ("frame_indices", "frame_times", "seed", "model", "settings", "timings_s", "versions", "files"):
        assert key in manifest
    assert manifest["model"]["name"] == "tiny-random" and manifest["settings"]["steps"] == 2
    assert len(list((result / "conditioning").glob("*.png"))) == 4
    assert "contact_sheet.png" in manifest["files"] and (result / "contact_sheet.png").stat().st_size > 0


def test_convert_cli_bad_inputs_do_not_stop_the_batch(tmp_path):
    good = write_video(tmp_path / "good.mp4")
    short = write_video(tmp_path / "short.mp4", num_frames=3)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    out = tmp_path / "out"
    args = [str(p) for p in (truncated, text, empty, short, good, tmp_path / "missing.mp4")]
    res = CliRunner().invoke(app, [*args, "-o", str(out), *CLI_FAST, "--json"])
    assert res.exit_code == 1
    items = {Path(i["input"]).name: i for i in json.loads(res.stdout)["items"]}
    assert items["good.mp4"]["status"] == "ok"
    for name in ("truncated.mp4", "notes.mp4", "empty_dir", "short.mp4", "missing.mp4"):
        assert items[name]["status"] == "failed" and items[name]["error"], name
    assert "3" in items["short.mp4"]["error"]  # says how many frames there are
    assert sorted(p.name for p in out.iterdir()) == ["good"], "no partial outputs"


def test_convert_cli_existing_output(tmp_path):
    video = write_video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    runner = CliRunner()
    assert runner.invoke(app, [str(video), "-o", str(out), *CLI_FAST]).exit_code == 0
    res = runner.invoke(app, [str(video), "-o", str(out), *CLI_FAST])
    assert res.exit_code == 1 and "exists" in res.output
    assert runner.invoke(app, [str(video), "-o", str(out), *CLI_FAST, "--skip-existing"]).exit_code == 0
    assert runner.invoke(app, [str(video), "-o", str(out), *CLI_FAST, "--overwrite"]).exit_code == 0


def test_convert_cli_unwritable_output(tmp_path):
    video = write_video(tmp_path / "clip.mp4")
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    res = CliRunner().invoke(app, [str(video), "-o", str(blocker / "out"), *CLI_FAST])
    # found before the model loads and before any clip runs (issue 32: fail fast)
    assert res.exit_code == 2 and "cannot use --output" in res.output and blocker.read_text().startswith("a file")


def test_convert_cli_usage_errors(tmp_path, monkeypatch):
    runner = CliRunner()
    import sdk.models.checkpoint

    # No --model means the embedded demo model; a broken installation without it is a clear usage error.
    monkeypatch.setattr(sdk.models.checkpoint, "default_model_path", lambda: tmp_path / "missing")
    res = runner.invoke(app, [str(tmp_path), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "embedded demo model is missing" in res.output
    monkeypatch.undo()
    res = runner.invoke(app, [str(tmp_path), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "cannot load model" in res.output
    res = runner.invoke(app, ["x.mp4", "-o", "o", "--model", "tiny-random", "--format", "fbx"])
    assert res.exit_code == 2 and "unknown output format" in res.output
    help_text = runner.invoke(app, ["--help"]).output
    for option in ("--frames", "--steps", "--guidance", "--resolution", "--seed", "--format", "--backend",
                   "--model", "--matting", "--skip-existing", "--overwrite", "--json"):
        assert option in help_text


def test_convert_cli_dot_dot_input_is_named_safely(tmp_path, monkeypatch):
    from sdk.cli.convert import expand_inputs

    frames = tmp_path / "shots" / "take1"
    frames.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(frames / "f0.png")
    monkeypatch.chdir(frames)
    items = expand_inputs([".", str(frames / "..")])
    assert [i.name for i in items][0] == "take1"


@pytest.mark.parametrize("args,needle", [(["--steps", "0"], "--steps must be >= 1"),
                                         (["--decode", "foo"], "--decode must be one of"),
                                         (["--matting", "magic"], "--matting must be one of"),
                                         (["--frames", "0"], "--frames must be >= 1")])
def test_convert_cli_bad_options_exit_2(tmp_path, args, needle):
    res = CliRunner().invoke(app, ["x.mp4", "-o", str(tmp_path / "o"), "--model", "tiny-random", *args])
    assert res.exit_code == 2 and needle in res.output
