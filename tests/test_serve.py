"""s4d-serve through real servers on loopback (started by the tests as the CLI) and a real HTTP
client: the README's curl and Python examples verbatim, 50 concurrent submissions, kill -9 and a
restart, SIGTERM drain, bad uploads, unknown options, path traversal, tokens, expiry, metrics,
and the same service on a local Ray cluster."""

from __future__ import annotations

import concurrent.futures
import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "examples" / "data" / "bouncing_box.mp4"
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIGHT = {"frames": "2", "steps": "1", "resolution": "16", "preview": "false", "viewer": "false",
         "sequence_glb": "false"}  # a job of about a second with the tiny model
SLOW = {"frames": "8", "steps": "60", "resolution": "64"}  # several seconds: time to kill or cancel it

requests = pytest.importorskip("requests")
pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s4d_serve(*args: str) -> list[str]:
    return [sys.executable, "-c", "from sdk.cli.serve import main; main()", *args]


class Server:
    """An s4d-serve process on a free loopback port."""

    def __init__(self, data_dir: Path, *extra: str, model: str = "tiny-random", token: str | None = TOKEN,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        args = ["--model", model, "--port", str(self.port), "--data-dir", str(data_dir), "--threads", "1",
                "--log-level", "warning", *extra]
        if token:
            args += ["--token", token]
        self.log = open(data_dir.parent / f"server-{self.port}-{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen(s4d_serve(*args), stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"s4d-serve exited {self.proc.returncode}:\n{self.output()}"
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # not listening yet; Ray's proxy still starting
                pass
            time.sleep(0.2)
        raise AssertionError(f"s4d-serve not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def submit(self, fields: dict | None = None, path: Path = CLIP, **kwargs) -> requests.Response:
        with open(path, "rb") as video:
            return requests.post(f"{self.url}/v1/jobs", headers=AUTH, files={"video": (path.name, video)},
                                 data=fields if fields is not None else LIGHT, timeout=60, **kwargs)

    def job(self, job_id: str) -> dict:
        response = requests.get(f"{self.url}/v1/jobs/{job_id}", headers=AUTH, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_state(self, job_id: str, states=("succeeded", "failed", "cancelled"), timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"s4d-serve did not stop within {timeout} s after signal {sig}:\n{self.output()}")


@pytest.fixture
def start(tmp_path):
    servers: list[Server] = []

    def start_server(*extra: str, data: str = "data", ready: bool = True, **kwargs) -> Server:
        server = Server(tmp_path / data, *extra, **kwargs)
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start_server
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        server.log.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One tiny-model server for the tests that only need a server (two workers)."""
    server = Server(tmp_path_factory.mktemp("serve") / "data", "--workers", "2")
    server.wait_ready()
    yield server
    server.stop()
    server.log.close()


def wait_running(server: Server, job_id: str, timeout: float = 120) -> dict:
    """Wait until the job runs and has reached the sampler (so a kill or cancel lands mid-job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.job(job_id)
        if job["state"] == "running" and job["progress"].get("sample", {}).get("done", 0) > 0:
            return job
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never ran:\n{server.output()}")


# ------------------------------------------------------------------------------------------------
# the README, verbatim
# ------------------------------------------------------------------------------------------------


def _readme_section_blocks(kind: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## HTTP service (`s4d-serve`)", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{kind}\n(.*?)```", section, flags=re.S)[0]


def test_readme_curl_example_verbatim(tmp_path, ci_evidence):
    """The README's curl block as written: starts the demo-model server, submits, polls, downloads,
    stops it with SIGTERM."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = dict(os.environ, S4D_PORT=str(free_port()), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    t0 = time.perf_counter()
    result = subprocess.run(["bash", "-e", "-c", _readme_section_blocks("bash")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(result.stdout.strip().splitlines()[-1])
    assert status["state"] == "succeeded" and "sequence.glb" in status["files"]
    assert (tmp_path / "sequence.glb").read_bytes()[:4] == b"glTF"
    with zipfile.ZipFile(tmp_path / f"{status['id']}.zip") as zf:
        names = zf.namelist()
    assert f"{status['id']}/manifest.json" in names and f"{status['id']}/sequence.usda" in names
    assert len(names) == len(status["files"])
    ci_evidence(f"s4d-serve README curl example (demo model, 16 frames): succeeded, {len(names)} files, "
                f"{time.perf_counter() - t0:.0f} s including start-up and SIGTERM")


def test_readme_python_example_verbatim(shared, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = dict(os.environ, S4D_URL=shared.url, S4D_SERVE_TOKEN=TOKEN)
    result = subprocess.run([sys.executable, "-c", _readme_section_blocks("python")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "sequence.glb").read_bytes()[:4] == b"glTF"


# ------------------------------------------------------------------------------------------------
# the must-show: tokens, kill -9 + restart, downloads, traversal
# ------------------------------------------------------------------------------------------------


def test_kill9_restart_loses_no_job(start, ci_evidence):
    server = start()
    slow = server.submit(SLOW)
    assert slow.status_code == 202 and slow.json()["state"] == "queued"
    assert slow.headers["Location"] == f"/v1/jobs/{slow.json()['id']}"
    queued = [server.submit(dict(LIGHT, seed=str(i))).json()["id"] for i in range(3)]
    slow_id = slow.json()["id"]
    wait_running(server, slow_id)
    server.proc.kill()  # SIGKILL: no drain, no cleanup
    server.proc.wait()

    restarted = start()  # same data dir
    jobs = {job_id: restarted.wait_state(job_id) for job_id in [slow_id, *queued]}
    assert all(job["state"] == "succeeded" for job in jobs.values()), jobs
    assert jobs[slow_id]["attempts"] == 2 and "re-run" in jobs[slow_id]["note"]
    # every result downloads; the manifest is the job's own
    for job_id, job in jobs.items():
        response = requests.get(f"{restarted.url}/v1/jobs/{job_id}/files/manifest.json", headers=AUTH, timeout=10)
        assert response.status_code == 200
        assert response.json()["settings"]["resolution"] == int((SLOW if job_id == slow_id else LIGHT)["resolution"])
    seeds = sorted(restarted.job(j)["settings"]["seed"] for j in queued)
    assert seeds == [0, 1, 2]
    # no token / a wrong token: 401, and nothing is revealed
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        response = requests.get(f"{restarted.url}/v1/jobs/{slow_id}", headers=headers, timeout=10)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(f"{restarted.url}/metrics", timeout=10).status_code == 401
    # traversal: nothing outside the job's listed files
    for name in ("../../jobs.sqlite3", "..%2F..%2Fjobs.sqlite3", "%2Fetc%2Fpasswd", "conditioning/../../../s4d-serve.json",
                 "frame_0000.glb%00", "nothing.glb"):
        conn = http.client.HTTPConnection("127.0.0.1", restarted.port, timeout=10)  # sends the path as is
        conn.request("GET", f"/v1/jobs/{slow_id}/files/{name}", headers=AUTH)
        response = conn.getresponse()
        assert response.status == 404, (name, response.status)
        assert b"SQLite" not in response.read()
        conn.close()
    ci_evidence("s4d-serve kill -9 mid-job + restart: the running job re-ran (attempt 2) and succeeded, "
                "3 queued jobs succeeded; 401 without/with a wrong token; traversal 404")


def test_kill9_fails_a_job_after_max_attempts(start):
    server = start("--max-attempts", "1")
    job_id = server.submit(SLOW).json()["id"]
    wait_running(server, job_id)
    server.proc.kill()
    server.proc.wait()
    job = start("--max-attempts", "1").wait_state(job_id)
    assert job["state"] == "failed" and "stopped (crash or kill)" in job["error"] and "--max-attempts 1" in job["error"]


def test_sigterm_drain_finishes_or_requeues(start, tmp_path):
    server = start("--drain-timeout", "120")
    running = server.submit(SLOW).json()["id"]
    queued = server.submit(LIGHT).json()["id"]
    wait_running(server, running)
    assert server.stop(signal.SIGTERM) == 0
    db = sqlite3.connect(tmp_path / "data" / "jobs.sqlite3")
    states = dict(db.execute("SELECT id, state FROM jobs").fetchall())
    db.close()
    assert states == {running: "succeeded", queued: "queued"}  # finished the running one, took no new one

    server = start("--drain-timeout", "0")
    assert server.wait_state(queued)["state"] == "succeeded"
    again = server.submit(SLOW).json()["id"]
    wait_running(server, again)
    assert server.stop(signal.SIGTERM) == 0  # no time to finish: back to the queue, not lost
    job = start().wait_state(again)
    assert job["state"] == "succeeded" and "SIGTERM" in job["note"] and job["attempts"] == 1


# ------------------------------------------------------------------------------------------------
# load: 50 concurrent submissions
# ------------------------------------------------------------------------------------------------


def test_fifty_concurrent_submissions_none_lost_or_duplicated(shared, ci_evidence):
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(lambda i: shared.submit(dict(LIGHT, seed=str(1000 + i), topology="per-frame")),
                                  range(50)))
    submitted = time.perf_counter() - t0
    assert [r.status_code for r in responses] == [202] * 50, [r.text for r in responses if r.status_code != 202]
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == 50
    jobs = [shared.wait_state(job_id, timeout=600) for job_id in ids]
    assert all(job["state"] == "succeeded" for job in jobs), [j.get("error") for j in jobs]
    assert sorted(job["settings"]["seed"] for job in jobs) == list(range(1000, 1050))  # each request ran once
    for job in jobs:
        manifest = requests.get(f"{shared.url}/v1/jobs/{job['id']}/files/manifest.json", headers=AUTH, timeout=10)
        assert manifest.json()["settings"]["seed"] == job["settings"]["seed"]
        assert job["attempts"] == 1
    listed = requests.get(f"{shared.url}/v1/jobs?limit=1000", headers=AUTH, timeout=10).json()["jobs"]
    assert {j["id"] for j in listed} >= set(ids)
    ci_evidence(f"s4d-serve: 50 concurrent submissions accepted in {submitted:.1f} s, all 50 succeeded once "
                f"(2 workers, tiny model) in {time.perf_counter() - t0:.0f} s")


# ------------------------------------------------------------------------------------------------
# bad requests
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, field, message", [
    ({"bogus": "1"}, "bogus", "unknown field 'bogus'"),
    ({"frames": "0"}, "frames", "frames must be >= 1"),
    ({"frames": "two"}, "frames", "frames must be an integer"),
    ({"frames": "2.5"}, "frames", "frames must be an integer"),
    ({"guidance": "nan"}, "guidance", "guidance must be a finite number"),
    ({"guidance": "-1"}, "guidance", "guidance must be a finite number >= 0"),
    ({"resolution": "4"}, "resolution", "resolution must be between 8 and 1024"),
    ({"decode": "sparse"}, "decode", "decode must be one of hierarchical, dense"),
    ({"noise": "loud"}, "noise", "noise must be one of shared, independent"),
    ({"topology": "x"}, "topology", "topology must be one of consistent, per-frame"),
    ({"matting": "magic"}, "matting", "matting must be one of"),
    ({"start": "2", "end": "1"}, "start", "start"),
    ({"format": "fbx"}, "format", "unknown output format 'fbx'"),
    ({"preview": "maybe"}, "preview", "preview must be true or false"),
    ({"seed": str(1 << 70)}, "seed", "seed must be between"),
])
def test_bad_options_are_422_naming_the_field(shared, fields, field, message):
    response = shared.submit(fields)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and message in response.json()["detail"], response.json()


def test_bad_uploads(shared, tmp_path):
    url = f"{shared.url}/v1/jobs"
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases = [
        (shared.submit(path=text), "video", "cannot decode video 'notes.mp4'"),
        (shared.submit(path=empty), "video", "is empty"),
        (requests.post(url, headers=AUTH, files={"clip": ("a.mp4", CLIP.read_bytes())}, timeout=30), "clip",
         "unexpected file field 'clip'"),
        (requests.post(url, headers=AUTH, data={"frames": "2"}, timeout=30), "video", "expected multipart/form-data"),
        (requests.post(url, headers=AUTH, files={"frames": (None, "2")}, timeout=30), "video", "missing the video"),
        (requests.post(url, headers=AUTH, data={"video": "x"}, files={"frames": (None, "2")}, timeout=30), "video",
         "must be a file upload"),
        (requests.post(url, headers=AUTH, files=[("video", ("a.mp4", CLIP.read_bytes())),
                                                 ("video", ("b.mp4", CLIP.read_bytes()))], timeout=30),
         "video", "one video per job"),
    ]
    for response, field, message in cases:
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field and message in response.json()["detail"], response.json()
    assert not any((shared.data_dir / "uploads").iterdir()), "a refused upload was kept"
    # the server path of the upload never appears in an error
    assert str(shared.data_dir) not in cases[0][0].text


def test_oversized_uploads_are_413(start, tmp_path):
    server = start("--max-upload-mb", "0.2")
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(400 * 1024))
    response = server.submit(path=big)
    assert response.status_code == 413 and "0.2 MB" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit must hold on a streamed body too
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="video"; filename="big.mp4"\r\n\r\n'
        for _ in range(50):
            yield os.urandom(16 * 1024)
        yield b"\r\n--xyz--\r\n"

    response = requests.post(f"{server.url}/v1/jobs", headers=dict(AUTH, **{
        "Content-Type": "multipart/form-data; boundary=xyz"}), data=chunks(), timeout=30)
    assert response.status_code == 413
    assert server.submit().status_code == 202  # a clip under the limit is fine
    assert not [p for p in (tmp_path / "data" / "uploads").iterdir() if p.stat().st_size > 300_000]


def test_queue_full_is_429_with_retry_after(start):
    server = start("--max-queue", "2")
    first = server.submit(SLOW).json()["id"]
    server.submit(SLOW)
    response = server.submit()
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
    assert "--max-queue 2" in response.json()["detail"]
    requests.delete(f"{server.url}/v1/jobs/{first}", headers=AUTH, timeout=10)
    server.wait_state(first)


# ------------------------------------------------------------------------------------------------
# the job's life: status, files, archive, cancel, delete, expiry
# ------------------------------------------------------------------------------------------------


def test_status_files_archive_and_delete(shared):
    job_id = shared.submit(dict(LIGHT, format=["glb", "ply"], preview="true")).json()["id"]
    job = shared.wait_state(job_id)
    assert job["state"] == "succeeded", job
    assert set(job["progress"]) >= {"frames", "condition", "sample", "decode", "mesh", "track"}
    assert all(stage["done"] == stage["total"] for stage in job["progress"].values())
    assert set(job["timings"]) == set(job["progress"]) and job["settings"] == {
        "frames": 2, "steps": 1, "resolution": 16}
    assert {"frame_0000.glb", "frame_0001.ply", "preview.mp4", "manifest.json"} <= set(job["files"])
    assert "sequence.glb" not in job["files"] and job["tracking"]["topology"] == "consistent"
    for name in job["files"]:
        response = requests.get(f"{shared.url}/v1/jobs/{job_id}/files/{name}", headers=AUTH, timeout=10)
        assert response.status_code == 200 and response.content == (shared.data_dir / "results" / job_id / name).read_bytes()
    head = requests.head(f"{shared.url}/v1/jobs/{job_id}/files/frame_0000.glb", headers=AUTH, timeout=10)
    assert head.status_code == 200 and int(head.headers["content-length"]) > 0 and not head.content
    manifest = requests.get(f"{shared.url}/v1/jobs/{job_id}/files/manifest.json", headers=AUTH, timeout=10).json()
    assert manifest["source"] == CLIP.name and manifest["input"]["path"] == CLIP.name  # not the server's path
    assert str(shared.data_dir) not in json.dumps(manifest)
    archive = requests.get(f"{shared.url}/v1/jobs/{job_id}/archive", headers=AUTH, timeout=30)
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(__import__("io").BytesIO(archive.content))
    assert sorted(zf.namelist()) == sorted(f"{job_id}/{n}" for n in job["files"])
    assert zf.read(f"{job_id}/manifest.json") == (shared.data_dir / "results" / job_id / "manifest.json").read_bytes()

    deleted = requests.delete(f"{shared.url}/v1/jobs/{job_id}", headers=AUTH, timeout=10)
    assert deleted.status_code == 200 and deleted.json() == {"id": job_id, "deleted": True}
    assert requests.get(f"{shared.url}/v1/jobs/{job_id}", headers=AUTH, timeout=10).status_code == 404
    assert not (shared.data_dir / "results" / job_id).exists()
    assert not (shared.data_dir / "archives" / f"{job_id}.zip").exists()
    for bad in ("x" * 32, "../../etc", "0" * 31):
        assert requests.get(f"{shared.url}/v1/jobs/{bad}", headers=AUTH, timeout=10).status_code == 404


def test_cancel_queued_and_running_jobs(start):
    server = start()
    running = server.submit(SLOW).json()["id"]
    queued = server.submit(SLOW).json()["id"]
    wait_running(server, running)
    response = requests.delete(f"{server.url}/v1/jobs/{queued}", headers=AUTH, timeout=10)
    assert response.json() == {"id": queued, "state": "cancelled"}
    response = requests.delete(f"{server.url}/v1/jobs/{running}", headers=AUTH, timeout=10)
    assert response.status_code == 202 and response.json()["cancelling"] is True
    assert server.wait_state(running, timeout=60)["state"] == "cancelled"
    assert server.job(queued)["state"] == "cancelled"
    assert requests.get(f"{server.url}/v1/jobs/{running}/files/manifest.json", headers=AUTH,
                        timeout=10).status_code == 409
    assert not (server.data_dir / "results" / running).exists()
    assert not any((server.data_dir / "uploads").iterdir())
    # the worker goes on with the next job
    assert server.wait_state(server.submit().json()["id"])["state"] == "succeeded"


def test_results_expire_after_keep_days(start):
    server = start("--keep-days", "0.00003")  # 2.6 s; the janitor looks every second
    job_id = server.submit().json()["id"]
    assert server.wait_state(job_id)["state"] == "succeeded"
    deadline = time.monotonic() + 30
    while requests.get(f"{server.url}/v1/jobs/{job_id}", headers=AUTH, timeout=10).status_code != 404:
        assert time.monotonic() < deadline, "the finished job never expired"
        time.sleep(0.5)
    assert not (server.data_dir / "results" / job_id).exists()


def test_failed_job_reports_its_error(shared, tmp_path):
    clip = tmp_path / "short.mp4"
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_clip

    write_clip(clip, num_frames=3)
    job = shared.wait_state(shared.submit(dict(LIGHT, frames="8"), path=clip).json()["id"])
    assert job["state"] == "failed" and "3" in job["error"] and "8" in job["error"], job
    assert "'short.mp4'" in job["error"] and str(shared.data_dir) not in job["error"]  # no server paths
    assert "files" not in job
    assert requests.get(f"{shared.url}/v1/jobs/{job['id']}/archive", headers=AUTH, timeout=10).status_code == 409


# ------------------------------------------------------------------------------------------------
# health, metrics, the API description
# ------------------------------------------------------------------------------------------------


def test_health_metrics_and_openapi(shared):
    assert requests.get(f"{shared.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{shared.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["workers"] == 2
    shared.wait_state(shared.submit().json()["id"])
    metrics = requests.get(f"{shared.url}/metrics", headers=AUTH, timeout=10)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for line in ("s4d_queue_depth", 's4d_jobs{state="succeeded"}', "s4d_model_ready 1.0",
                 's4d_stage_seconds_count{stage="sample"}', 's4d_jobs_finished_total{state="succeeded"}'):
        assert line in text, line
    api = requests.get(f"{shared.url}/openapi.json", timeout=10).json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/files/{name}", "/v1/jobs/{job_id}/archive",
            "/healthz", "/readyz", "/metrics"} <= set(api["paths"])
    form = api["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"video", "frames", "steps", "format", "seed"} <= set(form["properties"])
    assert requests.get(f"{shared.url}/docs", timeout=10).status_code == 200


# ------------------------------------------------------------------------------------------------
# start-up checks (no server starts)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "refusing to serve on 0.0.0.0 without a token"),
    (["--token", " "], "--token (or $S4D_SERVE_TOKEN) is empty"),
    (["--token", "with space"], "--token must be printable ASCII"),
    (["--max-queue", "0"], "--max-queue must be >= 1"),
    (["--max-upload-mb", "-1"], "--max-upload-mb must be a positive number"),
    (["--keep-days", "nan"], "--keep-days must be a positive number"),
    (["--replicas", "2"], "--replicas and --gpus-per-replica need --ray"),
    (["--backend", "tpu"], "--backend must be one of"),
    (["--model", "missing.safetensors"], "--model missing.safetensors: no such file"),
])
def test_usage_errors_exit_2(tmp_path, args, message):
    result = subprocess.run(s4d_serve("--data-dir", str(tmp_path / "d"), *args), capture_output=True, text=True,
                            timeout=60, cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "S4D_SERVE_TOKEN"})
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_one_server_per_data_dir(start, tmp_path):
    first = start()
    job_id = first.submit(SLOW).json()["id"]
    wait_running(first, job_id)
    second = subprocess.run(s4d_serve("--data-dir", str(tmp_path / "data"), "--model", "tiny-random", "--port",
                                      str(free_port()), "--token", TOKEN), capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert second.returncode == 2 and "in use by another s4d-serve (pid" in second.stderr, second.stderr
    busy = subprocess.run(s4d_serve("--data-dir", str(tmp_path / "other"), "--model", "tiny-random", "--port",
                                    str(first.port)), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{first.port}" in busy.stderr, busy.stderr
    job = first.job(job_id)
    assert job["state"] in ("running", "succeeded") and job["attempts"] == 1  # not taken over
    assert first.wait_state(job_id)["state"] == "succeeded"


def test_foreign_data_dir_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    result = subprocess.run(s4d_serve("--data-dir", str(mine), "--model", "tiny-random"), capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2 and "not an s4d-serve data directory" in result.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_a_model_that_does_not_load_ends_the_server(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not weights")
    result = subprocess.run(s4d_serve("--data-dir", str(tmp_path / "d"), "--model", str(bad), "--port",
                                      str(free_port())), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2 and "cannot load model" in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------------
# Ray Serve
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None,
                    reason="the [serve-ray] extra is not installed")
def test_ray_serve_on_a_local_cluster(start, ci_evidence):
    t0 = time.perf_counter()
    server = start("--ray", "--replicas", "2", "--drain-timeout", "5")
    started = time.perf_counter() - t0
    ids = [server.submit(dict(LIGHT, seed=str(i))).json()["id"] for i in range(4)]
    jobs = [server.wait_state(job_id, timeout=300) for job_id in ids]
    assert all(job["state"] == "succeeded" for job in jobs), [j.get("error") for j in jobs]
    assert sorted(j["settings"]["seed"] for j in jobs) == [0, 1, 2, 3]
    glb = requests.get(f"{server.url}/v1/jobs/{ids[0]}/files/frame_0000.glb", headers=AUTH, timeout=10)
    assert glb.status_code == 200 and glb.content[:4] == b"glTF"
    assert (server.data_dir / "results" / ids[0] / "manifest.json").is_file()  # results live in --data-dir
    assert server.submit({"frames": "0"}).status_code == 422
    assert requests.get(f"{server.url}/v1/jobs/{ids[0]}", timeout=10).status_code == 401
    t1 = time.perf_counter()
    assert server.stop(signal.SIGTERM, timeout=180) == 0
    ci_evidence(f"s4d-serve --ray --replicas 2 (local Ray cluster): ready in {started:.0f} s, 4 jobs succeeded, "
                f"SIGTERM shutdown {time.perf_counter() - t1:.0f} s")


# ------------------------------------------------------------------------------------------------
# the pieces, without a server
# ------------------------------------------------------------------------------------------------


def test_store_queue_order_limit_recovery_and_expiry(tmp_path):
    from sdk.serve.store import JobStore, QueueFull, new_job_id

    store = JobStore(tmp_path / "jobs.sqlite3")
    ids = [new_job_id() for _ in range(4)]
    for job_id in ids[:3]:
        store.add(job_id, {"settings": {}, "formats": ["glb"]}, max_queue=3)
    with pytest.raises(QueueFull):
        store.add(ids[3], {"settings": {}, "formats": ["glb"]}, max_queue=3)
    first, second = store.claim(), store.claim()
    assert [first.id, second.id] == ids[:2] and first.state == "running" and first.attempts == 1
    assert store.cancel(ids[2]) == "cancelled" and store.cancel(first.id) == "cancelling"
    store.finish(second.id, "succeeded", files=["a.glb"], timings={"sample": 1.0})
    store.close()

    store = JobStore(tmp_path / "jobs.sqlite3")  # a restart
    assert store.recover(max_attempts=2) == ([], [first.id])  # the running one was being cancelled
    assert store.get(first.id).state == "cancelled"
    store.add(ids[3], {"settings": {}, "formats": ["glb"]}, max_queue=3)
    assert store.claim().id == ids[3]
    assert store.recover(max_attempts=2) == ([ids[3]], [])
    assert store.claim().attempts == 2
    assert store.recover(max_attempts=2) == ([], [ids[3]])
    failed = store.get(ids[3])
    assert failed.state == "failed" and "2 time(s)" in failed.error
    assert store.counts() == {"queued": 0, "running": 0, "succeeded": 1, "failed": 1, "cancelled": 2}
    assert set(store.expired(time.time() + 1)) == {first.id, second.id, ids[2], ids[3]}
    assert store.expired(time.time() - 3600) == []
    assert store.delete(second.id) and store.get(second.id) is None and not store.delete(second.id)


@pytest.mark.parametrize("fields, expected", [
    ([], {"settings": {}, "formats": ["glb"], "outputs": {}}),
    ([("frames", "8"), ("guidance", "2.5"), ("format", "glb,usd"), ("format", "ply"), ("preview", "false")],
     {"settings": {"num_frames": 8, "guidance": 2.5}, "formats": ["glb", "usda", "ply"], "outputs": {"preview": False}}),
    ([("seed", "-3"), ("topology", "per-frame"), ("start", "0.5"), ("end", "2")],
     {"settings": {"seed": -3, "topology": "per-frame", "start": 0.5, "end": 2.0}, "formats": ["glb"], "outputs": {}}),
])
def test_parse_request(fields, expected):
    from sdk.serve.jobs import parse_request, settings_of

    request = parse_request(fields)
    assert request == expected
    assert settings_of(request).check() is not None  # a stored request rebuilds its RunSettings


def test_parse_request_refuses_repeats():
    from sdk.serve.jobs import FieldError, parse_request

    with pytest.raises(FieldError, match="frames given more than once"):
        parse_request([("frames", "2"), ("frames", "3")])


def test_result_files_are_only_the_listed_regular_files(tmp_path):
    from sdk.serve.jobs import DataDir, result_file

    data = DataDir(tmp_path / "d")
    data.prepare()
    job = "a" * 32
    root = data.result_of(job)
    (root / "sub").mkdir(parents=True)
    (root / "frame.glb").write_bytes(b"glTF")
    (root / "sub" / "x.png").write_bytes(b"png")
    (root / "link.glb").symlink_to(tmp_path / "d" / "s4d-serve.json")
    files = ["frame.glb", "sub/x.png", "link.glb", "../s4d-serve.json"]
    assert result_file(data, job, files, "frame.glb") == (root / "frame.glb").resolve()
    assert result_file(data, job, files, "sub/x.png") is not None
    for name in ("link.glb", "../s4d-serve.json", "missing.glb", "/etc/passwd"):
        assert result_file(data, job, files, name) is None, name


def test_data_dir_clean_removes_only_what_it_wrote(tmp_path):
    from sdk.serve.jobs import DataDir, DataDirError

    data = DataDir(tmp_path / "d")
    data.prepare()
    known, orphan = "b" * 32, "c" * 32
    for job_id in (known, orphan):
        (data.uploads / f"{job_id}.mp4").write_bytes(b"v")
    (data.uploads / "notes.txt").write_text("a user's file")
    (data.results / "mine").mkdir()
    removed = data.clean({known})
    assert removed == [str(data.uploads / f"{orphan}.mp4")]
    assert sorted(p.name for p in data.uploads.iterdir()) == [f"{known}.mp4", "notes.txt"]
    assert (data.results / "mine").is_dir()
    # a tagged directory is reused, but only by one server at a time
    DataDir(tmp_path / "d").prepare(lock=False)
    with pytest.raises(DataDirError, match="in use by another s4d-serve"):
        DataDir(tmp_path / "d").prepare()
    assert json.loads((tmp_path / "d" / "s4d-serve.json").read_text())["format"] == "sculpt4d-serve-data"


def test_job_progress_saves_throttled_and_stops_when_asked():
    from sdk.serve.jobs import JobProgress, JobStopped

    saved, ask = [], [None]
    progress = JobProgress(lambda stages: saved.append({k: dict(v) for k, v in stages.items()}), lambda: ask[0],
                           every=3600)
    progress.start("sample", 4)
    for _ in range(4):
        progress.advance("sample")
    assert saved == [{"sample": {"done": 0, "total": 4}}]  # throttled
    progress.finish("sample")
    assert saved[-1] == {"sample": {"done": 4, "total": 4}}
    ask[0] = "cancel"
    with pytest.raises(JobStopped) as stopped:
        progress.start("decode", 2)
    assert stopped.value.reason == "cancel"
    progress = JobProgress(lambda stages: None, lambda: None, every=0)
    progress.stop("drain")
    with pytest.raises(JobStopped, match="drain"):
        progress.advance("sample")
