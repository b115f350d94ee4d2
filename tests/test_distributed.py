"""s4d-convert --ray on a local Ray cluster (2 CPUs), object-store outputs, per-clip timeouts.

The Ray runs go through the real console entry point in a subprocess (its own Ray driver), with
tiny-random settings. Crashes come from the test-only hook ``S4D_TEST_CRASH_PLAN`` (a JSON file
naming clips whose worker process is SIGKILLed), which production runs never set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_clip

from sdk.batch.clips import Item, OutputOptions, plan_items
from sdk.cli.convert import optional_value_args
from sdk.batch.storage import UPLOAD_MARKER, Remote, open_remote, remote_output_state, upload_directory


FAST = ["--model", "tiny-random", "--frames", "4", "--steps", "2", "--resolution", "32"]
ENTRY = [sys.executable, "-c", "from sdk.cli.convert import main; main()"]
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the [ray] extra is not installed")


def convert(args: list[str], env: dict | None = None, timeout: float = 300) -> tuple[int, dict | None, str]:
    """Run s4d-convert; (exit code, the --json summary or None, stderr)."""
    run = subprocess.run(ENTRY + args, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    summary = json.loads(run.stdout) if "--json" in args and run.stdout.strip() else None
    return run.returncode, summary, run.stderr


def statuses(summary: dict) -> dict[str, tuple[str, str | None]]:
    return {item["name"]: (item["status"], item["error"]) for item in summary["items"]}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Five short clips (a square moving over grey, a different colour each) and one broken file."""
    root = tmp_path_factory.mktemp("clips")
    for seed, name in enumerate("abcde"):
        write_clip(root / f"{name}.mp4", num_frames=8, seed=seed)
    (root / "broken.mp4").write_bytes(b"this is not a video")
    return root


def no_partials(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------------------------
# on a local Ray cluster
# --------------------------------------------------------------------------------------------


@needs_ray
def test_ray_two_ok_one_failed_exit_1_json_lists_all(clips, tmp_path, ci_evidence):
    """The issue's command: two ok, one failed, exit 1, a JSON summary listing all three."""
    out = tmp_path / "OUT"
    code, summary, err = convert([str(clips / "a.mp4"), str(clips / "b.mp4"), str(clips / "broken.mp4"), "-o",
                                  str(out), "--ray", "--workers", "2", *FAST, "--json"])
    assert code == 1, err
    rows = statuses(summary)
    assert set(rows) == {"a", "b", "broken"}
    assert rows["a"][0] == rows["b"][0] == "ok"
    assert rows["broken"][0] == "failed" and "cannot decode video" in rows["broken"][1]
    assert (summary["succeeded"], summary["failed"]) == (2, 1)
    assert summary["ray"]["workers"] == 2 and summary["ray"]["address"] == "local"
    for name in "ab":
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert manifest["num_frames"] == 4 and "sequence.glb" in manifest["files"]
    assert not (out / "broken").exists() and no_partials(out)
    ci_evidence(f"s4d-convert --ray --workers 2 (local Ray cluster): a ok, b ok, broken failed, exit 1, "
                f"connect {summary['ray']['connect_s']:.1f} s, total {summary['ray']['total_s']:.1f} s")


@needs_ray
def test_ray_crashed_workers_are_retried_then_reported(clips, tmp_path, ci_evidence):
    """c kills its worker once (retried, ok); d kills it every time (failed after retries + 1
    tries, the job still ends); the output is a file:// URI; a rerun with --skip-existing resumes."""
    plan = tmp_path / "crash-plan.json"
    plan.write_text(json.dumps({"c": "once", "d": "always"}))
    out = tmp_path / "OUT"
    inputs = [str(clips / f"{name}.mp4") for name in "cde"]
    t0 = time.perf_counter()
    code, summary, err = convert([*inputs, "-o", out.as_uri(), "--ray", "--workers", "2", "--retries", "1", *FAST,
                                  "--json", "--no-preview", "--no-viewer"], env={"S4D_TEST_CRASH_PLAN": str(plan)})
    first = time.perf_counter() - t0
    assert code == 1, err
    rows = statuses(summary)
    assert rows["c"] == ("ok", None) and rows["e"] == ("ok", None)
    assert rows["d"][0] == "failed" and rows["d"][1].startswith("worker crashed after 2 tries")
    assert (plan.parent / "crash-plan.json.c.crashed").exists()  # c really died once
    assert sorted(p.name for p in out.iterdir()) == ["c", "e"]

    # resume: done clips are skipped, the crashing one is tried again (no retries this time)
    code, summary, err = convert([*inputs, "-o", out.as_uri(), "--ray", "--retries", "0", *FAST, "--json",
                                  "--skip-existing"], env={"S4D_TEST_CRASH_PLAN": str(plan)})
    assert code == 1, err
    rows = statuses(summary)
    assert rows["c"][0] == rows["e"][0] == "skipped"
    assert rows["d"][1].startswith("worker crashed after 1 try")
    ci_evidence(f"s4d-convert --ray crash handling: crash-once clip retried ok, crash-always clip reported "
                f"'worker crashed after 2 tries', job ended ({first:.0f} s); resume skipped done clips")


@needs_ray
def test_ray_workers_that_do_not_fit_the_cluster_are_a_usage_error(clips, tmp_path):
    code, _, err = convert([str(clips / "a.mp4"), "-o", str(tmp_path / "o"), "--ray", "--cpus-per-worker", "1000",
                            *FAST])
    assert code == 2 and "hold 0 workers of 1000 CPU each, not the 1 asked for" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--workers", "2"], "need --ray"),
    (["--ray", "--workers", "0"], "--workers must be >= 1"),
    (["--ray", "--retries", "-1"], "--retries must be between 0 and 100"),
    (["--ray", "--gpus-per-worker", "-1"], "--gpus-per-worker must be >= 0"),
    (["--ray", "--model", "missing.safetensors"], "cannot load model 'missing.safetensors'"),
    (["--timeout", "0"], "--timeout must be a number of seconds in (0, 604800]"),
])
def test_cluster_option_errors_exit_2_before_anything_starts(clips, tmp_path, args, message):
    code, _, err = convert([str(clips / "a.mp4"), "-o", str(tmp_path / "o"), *FAST, *args], timeout=60)
    assert code == 2 and message in err, err


@pytest.mark.parametrize("args, message", [
    (["--ray", "{a}", "{b}"], "looks like an input"),
    (["{a}", "--ray", "s3://bucket/clips/"], "looks like an input"),
    (["{a}", "--ray=http//head"], "is not a Ray cluster address"),
])
def test_ray_address_that_is_not_one_is_refused(clips, tmp_path, args, message):
    args = [a.format(a=clips / "a.mp4", b=clips / "b.mp4") for a in args]
    if "s3://bucket/clips/" in args:  # an input named like the address
        args.insert(0, "s3://bucket/clips/")
    code, _, err = convert([*args, "-o", str(tmp_path / "o"), *FAST])
    assert code == 2 and message in err, err


def test_ray_optional_value():
    assert optional_value_args(["a.mp4", "--ray"]) == ["a.mp4", "--ray=auto"]
    assert optional_value_args(["a.mp4", "--ray", "--workers", "2"]) == ["a.mp4", "--ray=auto", "--workers", "2"]
    assert optional_value_args(["--ray", "ray://head:10001", "a"]) == ["--ray", "ray://head:10001", "a"]
    assert optional_value_args(["--", "--ray"]) == ["--", "--ray"]


def test_worker_that_cannot_load_the_model_says_why():
    """The actor's constructor raises one line the driver shows for every clip not converted."""
    from sdk.batch.distributed import ClipConverter, WorkerSetupError
    from sdk.generation.settings import RunSettings

    with pytest.raises(WorkerSetupError, match=rf"^worker on {socket.gethostname()} cannot load model "
                                               r"'no/such/model': "):
        ClipConverter("no/such/model", "auto", "cpu", RunSettings(), OutputOptions(), None)


@needs_ray
def test_ray_model_no_worker_can_load_is_exit_2_with_every_clip_reported(clips, tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 64)
    code, summary, err = convert([str(clips / "a.mp4"), str(clips / "b.mp4"), "-o", str(tmp_path / "o"), "--ray",
                                  "--workers", "2", "--model", str(bad), "--frames", "4", "--json"], timeout=300)
    assert code == 2, err
    for status, error in statuses(summary).values():
        assert status == "failed" and error.startswith("not converted: worker on ") and "model.safetensors" in error
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    # Ray's notices (worker restarts, each with its traceback: ~85 lines) go to the driver log, not stderr
    assert len(err.strip().splitlines()) <= 6, err
    assert Path(summary["ray"]["driver_log"]).is_file()


# --------------------------------------------------------------------------------------------
# object stores: the upload protocol on pyarrow's filesystem API, then a real S3 server
# --------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    """pyarrow's ``local://`` filesystem through the object-store path (marker, copy, manifest last)."""
    root = tmp_path / "bucket"
    root.mkdir()
    return open_remote(f"local://{root}")


def finished_clip(directory: Path, source: str = "a.mp4") -> Path:
    (directory / "conditioning").mkdir(parents=True)
    for name in ("frame_0000.glb", "frame_0001.glb", "conditioning/cond_0000.png"):
        (directory / name).write_bytes(os.urandom(64))
    (directory / "manifest.json").write_text(json.dumps({
        "format": "sculpt4d-mesh-sequence", "input": {"path": os.path.realpath(source)},  # the input it converts
        "files": ["frame_0000.glb", "frame_0001.glb", "conditioning/cond_0000.png", "manifest.json"]}))
    return directory


def test_upload_writes_manifest_last_and_a_killed_upload_is_resumed(tmp_path, store, monkeypatch):
    clip, target = finished_clip(tmp_path / "clip"), store.child("a")
    real_write = Remote.write_bytes

    def dies_before_the_manifest(self, rel, data):  # the process is killed after the last mesh
        if rel == "manifest.json":
            raise KeyboardInterrupt
        real_write(self, rel, data)

    monkeypatch.setattr(Remote, "write_bytes", dies_before_the_manifest)
    with pytest.raises(KeyboardInterrupt):
        upload_directory(clip, target)
    assert target.list_files() == [UPLOAD_MARKER, "conditioning/cond_0000.png", "frame_0000.glb", "frame_0001.glb"]
    assert remote_output_state(target) == ("partial", None)
    # --skip-existing does not skip it; the rerun replaces it
    item = Item("a.mp4", "a")
    plan_items([item], store.uri, [], OutputOptions(skip_existing=True))
    assert item.status == "pending"
    monkeypatch.setattr(Remote, "write_bytes", real_write)
    upload_directory(clip, target)
    assert remote_output_state(target) == ("complete", None) and UPLOAD_MARKER not in target.list_files()
    plan_items([item], store.uri, [], OutputOptions(skip_existing=True))
    assert item.status == "skipped"


def test_replacing_a_complete_clip_killed_midway_is_partial_not_complete(tmp_path, store):
    """--overwrite of a finished clip: the old manifest goes first (after the marker), so a kill
    while old files are deleted or new ones copied never leaves a "complete" clip with holes."""
    old, new = finished_clip(tmp_path / "old"), finished_clip(tmp_path / "new")
    (new / "frame_0001.glb").unlink()
    manifest = json.loads((new / "manifest.json").read_text())
    manifest["files"].remove("frame_0001.glb")
    (new / "manifest.json").write_text(json.dumps(manifest))
    target = store.child("a")
    upload_directory(old, target)
    deleted = []

    class Killed(BaseException):
        pass

    class DiesAfterDeletingAMesh:  # the real filesystem; the process "dies" after one deletion
        def __getattr__(self, name):
            return getattr(target.fs, name)

        def delete_file(self, path):
            target.fs.delete_file(path)
            deleted.append(Path(path).name)
            if path.endswith("frame_0001.glb"):
                raise Killed

    with pytest.raises(Killed):
        upload_directory(new, Remote(DiesAfterDeletingAMesh(), target.path, target.uri), overwrite=True)
    assert deleted == ["manifest.json", "frame_0001.glb"]
    assert remote_output_state(target) == ("partial", None)
    upload_directory(new, target)  # the rerun (no --overwrite needed: a partial upload of ours)
    assert remote_output_state(target) == ("complete", None) and "frame_0001.glb" not in target.list_files()


def test_names_with_uri_characters_keep_their_own_outputs(tmp_path, store):
    """'#', '?', '%' and spaces in a clip name: the URI built for its output names that clip's
    directory, not a truncated or decoded neighbour."""
    from sdk.batch.clips import output_location
    from sdk.batch.storage import local_path

    names = ["take#2", "a?b", "x%41", "two words"]
    for name in names:
        assert local_path(output_location((tmp_path / "out").as_uri(), name)) == tmp_path / "out" / name
        remote = open_remote(output_location(store.uri, name))
        assert remote.path == f"{store.path}/{name}"
    items = [Item(f"{n}.mp4", n) for n in names]
    plan_items(items, store.uri, [], OutputOptions())
    assert [i.status for i in items] == ["pending"] * 4


def test_foreign_or_complete_outputs_in_a_store_are_not_replaced(tmp_path, store):
    clip = finished_clip(tmp_path / "clip", source="done.mp4")
    upload_directory(clip, store.child("done"))
    for name in ("foreign", "ours-plus"):
        (Path(store.path) / name).mkdir()
    store.child("foreign").write_bytes("notes.txt", b"someone else's")
    ours = json.loads((clip / "manifest.json").read_text())
    ours["input"] = {"path": os.path.realpath("ours-plus.mp4")}  # an earlier output of that very input
    store.child("ours-plus").write_bytes("manifest.json", json.dumps(ours).encode())
    store.child("ours-plus").write_bytes("keep.txt", b"added by a person")
    items = [Item(f"{n}.mp4", n) for n in ("done", "foreign", "ours-plus", "new")]
    plan_items(items, store.uri, [], OutputOptions())
    assert [i.status for i in items] == ["failed", "failed", "failed", "pending"]
    assert "exists (use --overwrite" in items[0].error
    assert "nothing proves this tool wrote it" in items[1].error and "keep.txt" in items[2].error
    with pytest.raises(FileExistsError, match="refusing to write"):
        upload_directory(clip, store.child("foreign"), overwrite=True)
    assert store.child("foreign").read_bytes("notes.txt") == b"someone else's"
    upload_directory(clip, store.child("done"), overwrite=True)  # ours: replaced


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """A real S3-compatible HTTP server (moto's, from the [dev] extra) on loopback."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if server is None:
        pytest.skip("moto_server is not installed (pip install 'moto[s3]' flask flask-cors)")
    port = _free_port()
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY":
           "test", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("moto_server did not start")
                time.sleep(0.2)
        yield env
    finally:
        proc.terminate()
        proc.wait(10)


def s3_fs(env: dict):
    from pyarrow.fs import S3FileSystem

    return S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="test", secret_key="test",
                        region="us-east-1", allow_bucket_creation=True)


@needs_ray
def test_ray_reads_and_writes_s3(clips, s3_server, ci_evidence):
    """Inputs from an s3:// prefix, outputs to s3://, on the Ray cluster; manifest is the mark."""
    fs = s3_fs(s3_server)
    fs.create_dir("clips")
    for name in ("a.mp4", "b.mp4"):
        with fs.open_output_stream(f"clips/in/{name}") as dst:
            dst.write((clips / name).read_bytes())
    code, summary, err = convert(["s3://clips/in/", "-o", "s3://clips/out", "--ray", "--workers", "1", *FAST,
                                  "--json", "--no-preview"], env=s3_server)
    assert code == 0, err
    assert statuses(summary) == {"a": ("ok", None), "b": ("ok", None)}
    manifest = json.loads(fs.open_input_stream("clips/out/a/manifest.json").read())
    assert manifest["source"] == "s3://clips/in/a.mp4"
    out = Remote(fs, "clips/out/a", "s3://clips/out/a")
    assert set(out.list_files()) == set(manifest["files"]) and remote_output_state(out) == ("complete", None)
    code, summary, err = convert(["s3://clips/in/", "-o", "s3://clips/out", *FAST, "--json", "--skip-existing"],
                                 env=s3_server)
    assert code == 0 and [i["status"] for i in summary["items"]] == ["skipped", "skipped"], err
    ci_evidence("s4d-convert --ray with s3:// inputs and outputs on a local S3-compatible server (moto): "
                "2 ok, manifest last, --skip-existing resumed")


# --------------------------------------------------------------------------------------------
# per-clip timeout (the same code path locally and in a worker)
# --------------------------------------------------------------------------------------------


def test_clip_past_its_timeout_fails_and_leaves_nothing(clips, tmp_path):
    out = tmp_path / "OUT"
    code, summary, err = convert([str(clips / "a.mp4"), str(clips / "b.mp4"), "-o", f"file://{out}",
                                  "--model", "tiny-random", "--frames", "4", "--resolution", "32", "--steps", "2",
                                  "--json", "--timeout", "60"])
    assert code == 0, err
    shutil.rmtree(out)
    code, summary, err = convert([str(clips / "a.mp4"), "-o", str(out), "--model", "tiny-random", "--frames", "4",
                                  "--resolution", "32", "--steps", "5000", "--json", "--timeout", "1"])
    assert code == 1
    status, error = statuses(summary)["a"]
    assert status == "failed" and error.startswith("timed out after 1 s")
    assert not out.exists() or not list(out.iterdir())
