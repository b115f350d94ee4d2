"""The HTTP API of ``s4d-serve`` (FastAPI): jobs in, mesh sequences out.

    POST   /v1/jobs                      multipart: file field ``video`` + s4d-convert's options -> 202
    GET    /v1/jobs                      recent jobs (``?state=queued&limit=50``)
    GET    /v1/jobs/{id}                 state, progress per stage, timings, error, result files
    GET    /v1/jobs/{id}/files/{name}    one result file (only files the job wrote)
    GET    /v1/jobs/{id}/archive         a zip of all of them
    DELETE /v1/jobs/{id}                 cancel a queued / running job, or delete a finished one
    GET    /healthz  /readyz  /metrics   alive; model loaded; Prometheus text

Every ``/v1`` route and ``/metrics`` need ``Authorization: Bearer <token>`` when the server has a
token (compared in constant time); ``/healthz``, ``/readyz`` and the OpenAPI page (``/docs``) do not.
Handlers never wait for a generation: they touch the job store (one short SQLite transaction) and
the disk, and the workers (``sdk.serve.jobs.LocalWorkers`` or the Ray Serve replicas) run the jobs.
"""

# no "from __future__ import annotations": FastAPI reads the route signatures (Request) at runtime

import contextlib
import hmac
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.extras import require
from .jobs import (ALL_FIELDS, FIELDS, FORMAT_FIELD, LABELS, OUTPUT_FIELDS, UPLOAD_FIELD, DataDir, FieldError,
                   build_archive, public_text, resolve, result_file)
from .store import FINISHED, JOB_ID, JobStore, QueueFull, new_job_id

TOKEN_ENV = "S4D_SERVE_TOKEN"
FORM_SLACK = 64 * 1024  # bytes of form fields and multipart framing allowed beyond --max-upload-mb


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``s4d-serve`` is started with (see ``s4d-serve --help``)."""

    data_dir: str
    model: str = "default"
    backend: str = "auto"
    device: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_queue: int = 100
    max_upload_mb: float = 512.0
    workers: int = 1
    keep_days: float = 7.0
    max_attempts: int = 2
    drain_timeout: float = 30.0
    job_timeout: float | None = None
    threads: int | None = None

    @property
    def max_upload_bytes(self) -> int:
        """--max-upload-mb in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)


class UploadTooLarge(Exception):
    """The request body passed --max-upload-mb."""


class UploadLimit:
    """ASGI middleware: a POST whose body is larger than ``limit`` bytes is answered 413 at once
    (by its Content-Length) or as soon as the limit is passed (a chunked body); nothing more of it
    is read or stored."""

    def __init__(self, app, limit: int, limit_mb: float) -> None:
        self.app, self.limit, self.limit_mb = app, limit, limit_mb

    async def _too_large(self, send) -> None:
        from starlette.responses import JSONResponse

        await JSONResponse({"detail": f"upload too large: the limit is {self.limit_mb:g} MB (--max-upload-mb)"},
                           status_code=413)({"type": "http"}, None, send)

    async def __call__(self, scope, receive, send) -> None:
        """Pass the request on, counting the body's bytes of a POST."""
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._too_large(send)
            return
        state = {"received": 0, "exceeded": False, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit:
                    state["exceeded"] = True
                    raise UploadTooLarge()
            return message

        async def guarded_send(message):
            if state["exceeded"]:
                return  # whatever the app answers to a cut-off body, the answer is 413
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except UploadTooLarge:
            pass
        if state["exceeded"] and not state["started"]:
            await self._too_large(send)


class ServeMetrics:
    """The Prometheus metrics of one server (its own registry, so servers in one process do not mix)."""

    def __init__(self, store: JobStore, is_ready) -> None:
        prometheus = require("prometheus_client", "s4d-serve", "serve")
        from prometheus_client.core import GaugeMetricFamily

        self._prometheus = prometheus
        self.registry = prometheus.CollectorRegistry()

        class StoreCollector:
            def collect(self):
                counts = store.counts()
                jobs = GaugeMetricFamily("s4d_jobs", "Jobs in the store by state", labels=["state"])
                for state, n in counts.items():
                    jobs.add_metric([state], n)
                yield jobs
                yield GaugeMetricFamily("s4d_queue_depth", "Jobs waiting to run", value=counts["queued"])
                yield GaugeMetricFamily("s4d_model_ready", "1 once every model instance is loaded",
                                        value=1 if is_ready() else 0)

        self.registry.register(StoreCollector())
        buckets = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
        self.stage_seconds = prometheus.Histogram("s4d_stage_seconds", "Duration of each pipeline stage of "
                                                  "succeeded jobs", ["stage"], buckets=buckets, registry=self.registry)
        self.job_seconds = prometheus.Histogram("s4d_job_seconds", "Duration of a job's run (all stages and "
                                                "writing the outputs)", buckets=buckets, registry=self.registry)
        self.finished = prometheus.Counter("s4d_jobs_finished", "Jobs that ended, by final state", ["state"],
                                           registry=self.registry)
        self.rejected = prometheus.Counter("s4d_submissions_rejected", "Submissions refused, by HTTP status",
                                           ["status"], registry=self.registry)

    def record(self, outcome, state: str, seconds: float | None) -> None:
        """A job ended (or went back to the queue, which is not counted)."""
        if state not in FINISHED:
            return
        self.finished.labels(state).inc()
        if outcome is not None and state == "succeeded":
            for stage, value in outcome.timings.items():
                self.stage_seconds.labels(stage).observe(value)
            if seconds is not None:
                self.job_seconds.observe(seconds)

    def text(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return self._prometheus.generate_latest(self.registry), self._prometheus.CONTENT_TYPE_LATEST


class Server:
    """The state behind the routes: config, data directory, store, workers, metrics, janitor."""

    def __init__(self, config: ServeConfig, workers_factory) -> None:
        self.config = config
        self.data = DataDir(config.data_dir)
        self.data.prepare()
        self.store = JobStore(self.data.db)
        self.metrics = ServeMetrics(self.store, lambda: self.workers.ready)
        self.workers = workers_factory(self)
        self.draining = False
        self._janitor_stop = threading.Event()
        self._janitor: threading.Thread | None = None
        self._mean_seconds = 30.0  # a first guess of a job's run time, for Retry-After

    # -- lifecycle --------------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """SIGTERM arrived: from now on no job starts, POST answers 503 and /readyz 503."""
        self.draining = True
        self.workers.stop_taking()

    def start(self) -> dict[str, list[str]]:
        """Recover the previous process's jobs, tidy the data directory, start workers and janitor."""
        requeued, ended = self.store.recover(self.config.max_attempts)
        for job_id in ended:
            job = self.store.get(job_id)
            if job is not None:
                self.data.remove_upload(job_id, job.request)
        removed = self.data.clean(self.store.ids())
        self.expire()
        self.workers.start()
        self._janitor = threading.Thread(target=self._janitor_loop, name="s4d-janitor", daemon=True)
        self._janitor.start()
        return {"requeued": requeued, "ended": ended, "removed": removed}

    def stop(self) -> None:
        """SIGTERM: stop accepting, let running jobs finish for --drain-timeout, re-queue the rest."""
        self.draining = True
        self.workers.stop(self.config.drain_timeout)
        self._janitor_stop.set()
        if self._janitor is not None:
            self._janitor.join(timeout=5)
        self.store.close()

    def _janitor_loop(self) -> None:
        interval = min(3600.0, max(1.0, self.config.keep_days * 86400 / 10))
        while not self._janitor_stop.wait(interval):
            with contextlib.suppress(Exception):  # a full disk must not end the janitor; it retries
                self.expire()

    def expire(self) -> list[str]:
        """Delete the jobs (rows, results) that finished more than --keep-days ago."""
        gone = []
        for job_id in self.store.expired(time.time() - self.config.keep_days * 86400):
            job = self.store.get(job_id)
            if job is not None and self.forget(job):
                gone.append(job_id)
        return gone

    def forget(self, job) -> bool:
        """Delete a finished job: its record first (a crash in between leaves only files, which the
        next start removes), then its results, archive and upload. False if it is not finished."""
        if not self.store.delete(job.id):
            return False
        self.data.remove_results(job.id)
        self.data.remove_upload(job.id, job.request)
        return True

    def finished(self, outcome, state: str, seconds: float | None) -> None:
        """Called by the workers when a job ends: metrics and the Retry-After estimate."""
        self.metrics.record(outcome, state, seconds)
        if seconds is not None and state == "succeeded":
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds

    def retry_after(self) -> int:
        """Seconds a client refused for a full queue should wait: until about one job per worker
        has ended (from a running mean of job durations), between 1 s and an hour."""
        return int(min(3600, max(1, math.ceil(self._mean_seconds / max(1, self.config.workers)))))

    # -- submission -------------------------------------------------------------------------------

    def accept(self, upload, filename: str, request: dict[str, Any]):
        """Store the upload (atomically, checked to be a video) and commit the queued job."""
        from ..core.atomic import atomic_file
        from ..inputs.frames import VIDEO_EXTENSIONS, InputError, probe_video

        info = self.workers.model_info
        if info:
            resolve(request, info["defaults"], info["fixed_frames"])
        suffix = Path(filename or "").suffix.lower()
        request = dict(request, suffix=suffix if suffix in VIDEO_EXTENSIONS else "", filename=filename or "")
        job_id = new_job_id()
        target = self.data.upload_of(job_id, request)
        with atomic_file(target, overwrite=False) as tmp:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(upload, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())  # the 202 promises the job survives a power loss, upload included
            if tmp.stat().st_size == 0:
                raise FieldError(UPLOAD_FIELD, f"{UPLOAD_FIELD}: the uploaded file {filename!r} is empty")
            try:
                probe_video(tmp)
            except InputError as exc:
                raise FieldError(UPLOAD_FIELD, f"{UPLOAD_FIELD}: "
                                 f"{public_text(str(exc), tmp, filename or 'upload', self.data.root)}") from None
        _fsync_directory(target.parent)
        try:
            job = self.store.add(job_id, request, self.config.max_queue)
        except BaseException:
            self.data.remove_upload(job_id, request)
            raise
        self.workers.notify()
        return job


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_app(server: Server):
    """The FastAPI application of ``server`` (the same for uvicorn and for a Ray Serve ingress)."""
    fastapi = require("fastapi", "s4d-serve", "serve")
    from fastapi import Depends, HTTPException, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile

    from ..core.version import __version__

    config = server.config

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await run_in_threadpool(server.start)
        yield
        await run_in_threadpool(server.stop)

    app = fastapi.FastAPI(title="Sculpt4D s4d-serve", version=__version__, lifespan=lifespan,
                          description="Video -> 4D mesh sequence jobs. Submit a video, poll the job, download its "
                                      "files. Routes under /v1 and /metrics need `Authorization: Bearer <token>` "
                                      "when the server has a token.")
    app.state.server = server
    app.add_middleware(UploadLimit, limit=config.max_upload_bytes + FORM_SLACK, limit_mb=config.max_upload_mb)

    def authorised(request: Request) -> None:
        if config.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorised)]

    def field_error(exc: FieldError) -> JSONResponse:
        server.metrics.rejected.labels("422").inc()
        return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=422)

    def job_or_404(job_id: str):
        job = server.store.get(job_id) if JOB_ID.match(job_id) else None
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (never submitted, deleted, or expired after "
                                f"--keep-days {config.keep_days:g})")
        return job

    # -- health -----------------------------------------------------------------------------------

    @app.get("/healthz", summary="The process is alive")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Every model instance is loaded")
    def readyz():
        workers = server.workers
        if workers.ready and not server.draining:
            return {"ready": True, "model": config.model, "workers": workers.count}
        reason = ("draining" if server.draining else
                  "loading the model (or the model failed to load: see the server's log)")
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", dependencies=auth, response_class=Response)
    def metrics():
        body, content_type = server.metrics.text()
        return Response(body, media_type=content_type)

    # -- jobs -------------------------------------------------------------------------------------

    form_schema = {"type": "object", "required": [UPLOAD_FIELD], "properties": {
        UPLOAD_FIELD: {"type": "string", "format": "binary", "description": "The video (as s4d-convert reads)."},
        **{name: {"type": kind if kind in ("integer", "number", "boolean") else "string",
                  "description": f"s4d-convert --{name}"} for name, (_attr, kind) in FIELDS.items()},
        FORMAT_FIELD: {"type": "array", "items": {"type": "string"}, "description": "glb, obj, ply, usd/usda, usdc "
                       "(repeatable, or comma-separated) [default: glb]"},
        **{name: {"type": "boolean", "description": f"write {file} [default: true]"}
           for name, file in OUTPUT_FIELDS.items()}}}

    @app.post("/v1/jobs", status_code=202, dependencies=auth, summary="Submit a video",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": form_schema}}}},
              responses={413: {"description": "Upload larger than --max-upload-mb"},
                         422: {"description": "Bad field (named in `field`)"},
                         429: {"description": "Queue full (see Retry-After)"},
                         503: {"description": "Draining (SIGTERM)"}})
    async def submit(request: Request):
        if server.draining:
            return JSONResponse({"detail": "the server is shutting down; submit again later"}, status_code=503,
                                headers={"Retry-After": "5"})
        counts = await run_in_threadpool(server.store.counts)
        waiting = counts["queued"] + counts["running"]
        if waiting >= config.max_queue:
            return _queue_full(server, waiting)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return field_error(FieldError(UPLOAD_FIELD, f"expected multipart/form-data with the video in file field "
                                          f"{UPLOAD_FIELD!r} (curl -F {UPLOAD_FIELD}=@clip.mp4)"))
        try:
            form = await request.form(max_files=4, max_fields=64)
        except UploadTooLarge:
            raise
        except Exception as exc:  # starlette's MultiPartException and malformed bodies
            return field_error(FieldError(UPLOAD_FIELD, f"cannot read the multipart form: {exc}"))
        try:
            upload, texts = None, []
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if name != UPLOAD_FIELD:
                        raise FieldError(name, f"unexpected file field {name!r}; the video goes in field "
                                         f"{UPLOAD_FIELD!r}" + ("" if name in ALL_FIELDS else
                                                                 f" (fields: {', '.join(ALL_FIELDS)})"))
                    if upload is not None:
                        raise FieldError(name, f"one video per job: field {UPLOAD_FIELD!r} given more than once")
                    upload = value
                else:
                    texts.append((name, value))
            from .jobs import parse_request

            job_request = parse_request(texts)
            if upload is None:
                raise FieldError(UPLOAD_FIELD, f"missing the video: send it as file field {UPLOAD_FIELD!r} "
                                 f"(curl -F {UPLOAD_FIELD}=@clip.mp4)")
            job = await run_in_threadpool(server.accept, upload.file, upload.filename or "", job_request)
        except FieldError as exc:
            return field_error(exc)
        except QueueFull:
            return _queue_full(server, config.max_queue)
        finally:
            await form.close()
        return JSONResponse({"id": job.id, "state": job.state}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs", dependencies=auth, summary="Recent jobs, newest first")
    def list_jobs(state: str | None = None, limit: int = 50):
        if state is not None and state not in ("queued", "running", *FINISHED):
            raise HTTPException(422, f"state must be one of queued, running, {', '.join(FINISHED)}; got {state!r}")
        return {"jobs": [job.public(LABELS) for job in server.store.jobs(state, max(1, min(limit, 1000)))]}

    @app.get("/v1/jobs/{job_id}", dependencies=auth, summary="A job's state, progress, timings, error and files")
    def get_job(job_id: str):
        return job_or_404(job_id).public(LABELS)

    def finished_files(job_id: str):
        job = job_or_404(job_id)
        if job.state != "succeeded":
            raise HTTPException(409, f"job {job_id} is {job.state}; files exist once it succeeded")
        return job

    @app.api_route("/v1/jobs/{job_id}/files/{name:path}", methods=["GET", "HEAD"], dependencies=auth,
                   summary="One result file")
    def get_file(job_id: str, name: str):
        job = finished_files(job_id)
        path = result_file(server.data, job_id, job.files, name)
        if path is None:
            raise HTTPException(404, f"job {job_id} has no file {name!r}; its files are listed in GET /v1/jobs/{job_id}")
        return FileResponse(path, filename=Path(name).name)

    @app.api_route("/v1/jobs/{job_id}/archive", methods=["GET", "HEAD"], dependencies=auth,
                   summary="A zip of all result files")
    def get_archive(job_id: str):
        job = finished_files(job_id)
        try:
            path = build_archive(server.data, job_id, job.files)
        except FileNotFoundError:
            path = None
        if path is None or server.store.get(job_id) is None:  # deleted or expired meanwhile
            if path is not None:
                server.data.remove_results(job_id)
            raise HTTPException(404, f"job {job_id} was deleted or expired")
        return FileResponse(path, media_type="application/zip", filename=f"{job_id}.zip")

    @app.delete("/v1/jobs/{job_id}", dependencies=auth,
                summary="Cancel a queued or running job, or delete a finished one and its files")
    def delete_job(job_id: str):
        job = job_or_404(job_id)
        if job.state in ("queued", "running"):
            result = server.store.cancel(job_id)
            if result == "cancelled":
                server.data.remove_upload(job_id, job.request)
                server.metrics.finished.labels("cancelled").inc()
                return {"id": job_id, "state": "cancelled"}
            if result == "cancelling":
                server.workers.cancel(job_id)
                return JSONResponse({"id": job_id, "state": "running", "cancelling": True}, status_code=202)
            # it ended between the two reads: a cancel must not delete results the client never saw
            return JSONResponse({"id": job_id, "state": result, "detail": f"the job ended ({result}) before it "
                                 "could be cancelled; DELETE again to delete it"}, status_code=409)
        if server.forget(job):
            return {"id": job_id, "deleted": True}
        raise HTTPException(404, f"no job {job_id!r}")

    return app


def _queue_full(server: Server, waiting: int):
    from fastapi.responses import JSONResponse

    server.metrics.rejected.labels("429").inc()
    seconds = server.retry_after()
    return JSONResponse({"detail": f"the queue is full ({waiting} jobs queued or running, --max-queue "
                                   f"{server.config.max_queue}); retry in about {seconds} s"},
                        status_code=429, headers={"Retry-After": str(seconds)})
