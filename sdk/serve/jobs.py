"""What a job is and how one runs: the request's fields, the data directory, the run itself and
the workers that take jobs from the store.

Everything here is the same for the one-machine server and the Ray Serve deployment
(``sdk.serve.ray_serve``): a job's request is checked by :func:`parse_request` with the rules of
``s4d-convert`` (``RunSettings.check``, ``check_formats``), and run by :func:`convert_job`, which
is ``s4d-convert``'s own ``convert_one`` with a progress reporter that can stop the run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.atomic import atomic_file, clean_stale_partials
from ..core.jsonfile import JSONFileError, read_json
from ..generation.settings import GeneratorError, RunSettings
from .store import FINISHED, JOB_ID, JobStore

# -------------------------------------------------------------------------------------------------
# 1. the request: form fields with s4d-convert's names and checks
# -------------------------------------------------------------------------------------------------

#: form field -> (RunSettings attribute, parser); ``format`` may repeat, ``video`` is the upload
INT, FLOAT, TEXT, BOOL = "integer", "number", "text", "boolean"
FIELDS = {"frames": ("num_frames", INT), "steps": ("steps", INT), "guidance": ("guidance", FLOAT),
          "resolution": ("resolution", INT), "seed": ("seed", INT), "decode": ("decode", TEXT),
          "noise": ("noise", TEXT), "matting": ("matting", TEXT), "start": ("start", FLOAT), "end": ("end", FLOAT),
          "topology": ("topology", TEXT), "exact": ("exact", BOOL)}
LABELS = {attr: name for name, (attr, _kind) in FIELDS.items()}  # RunSettings names -> field names in errors
#: what to write besides the meshes, as s4d-convert's --preview/--no-preview etc. (true/false)
OUTPUT_FIELDS = {"sequence_glb": "sequence.glb", "preview": "preview.mp4", "viewer": "viewer.html"}
UPLOAD_FIELD = "video"
FORMAT_FIELD = "format"
ALL_FIELDS = (UPLOAD_FIELD, *FIELDS, FORMAT_FIELD, *OUTPUT_FIELDS)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class FieldError(ValueError):
    """A form field is unknown, missing or has an unusable value (HTTP 422 naming ``field``)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def _parse(name: str, kind: str, raw: str) -> Any:
    text = raw.strip()
    if kind == BOOL:
        if text.lower() not in _TRUE + _FALSE:
            raise FieldError(name, f"{name} must be true or false, got {raw!r}")
        return text.lower() in _TRUE
    try:
        if kind == INT:
            if not re.fullmatch(r"[+-]?\d+", text):
                raise ValueError
            return int(text)
        if kind == FLOAT:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        raise FieldError(name, f"{name} must be {'an integer' if kind == INT else 'a finite number'}, "
                         f"got {raw!r}") from None
    return text


def parse_request(fields: list[tuple[str, str]]) -> dict[str, Any]:
    """The checked request of a job from its text form fields (name, value) in the order sent:
    ``{"settings": {...RunSettings as given...}, "formats": [...]}``. ``FieldError`` names the first
    unknown, repeated or unusable field. Values the client leaves out take the model's defaults
    when the job runs, as in ``s4d-convert``."""
    from ..outputs.meshseq import check_formats

    given: dict[str, Any] = {}
    outputs: dict[str, bool] = {}
    formats: list[str] = []
    for name, raw in fields:
        if name == FORMAT_FIELD:
            formats += [part for part in raw.replace(",", " ").split() if part]
            continue
        if name in OUTPUT_FIELDS:
            if name in outputs:
                raise FieldError(name, f"{name} given more than once")
            outputs[name] = _parse(name, BOOL, raw)
            continue
        if name == UPLOAD_FIELD:
            raise FieldError(name, f"{UPLOAD_FIELD} must be a file upload (multipart/form-data), not a text field")
        if name not in FIELDS:
            raise FieldError(name, f"unknown field {name!r}; expected {UPLOAD_FIELD} (the file) and any of "
                             f"{', '.join(ALL_FIELDS[1:])}")
        attr, kind = FIELDS[name]
        if attr in given:
            raise FieldError(name, f"{name} given more than once")
        given[attr] = _parse(name, kind, raw)
    settings = RunSettings(**given)
    try:
        settings.check(LABELS)
    except GeneratorError as exc:
        raise FieldError(_field_named(str(exc)), str(exc)) from None
    try:
        formats = check_formats(formats or ["glb"])
    except ValueError as exc:
        raise FieldError(FORMAT_FIELD, f"format: {exc}") from None
    return {"settings": {k: v for k, v in settings.as_kwargs().items() if k in given}, "formats": formats,
            "outputs": outputs}


def _field_named(message: str) -> str:
    first = message.split(" ", 1)[0]
    return first if first in FIELDS else "settings"


def settings_of(request: dict[str, Any]) -> RunSettings:
    """The RunSettings a stored request holds (values left out are None: the model's defaults)."""
    return RunSettings(**request["settings"])


def resolve(request: dict[str, Any], defaults: dict[str, Any], fixed_frames: int | None) -> RunSettings:
    """The request's settings with the model's defaults filled in; ``FieldError`` if the result does
    not suit the model (e.g. an engine exported for another frame count)."""
    try:
        settings = settings_of(request).resolved(defaults, LABELS)
    except GeneratorError as exc:
        raise FieldError(_field_named(str(exc)), str(exc)) from None
    if fixed_frames is not None and fixed_frames != settings.num_frames:
        raise FieldError("frames", f"frames: this model was exported for {fixed_frames} frames, got "
                         f"{settings.num_frames}")
    return settings


# -------------------------------------------------------------------------------------------------
# 2. the data directory
# -------------------------------------------------------------------------------------------------

DATA_TAG = "s4d-serve.json"
DATA_FORMAT = "sculpt4d-serve-data"
LOCK_FILE = "s4d-serve.lock"


class DataDirError(ValueError):
    """--data-dir cannot be used (not ours and not empty, not writable)."""


class DataDir:
    """``--data-dir``: ``jobs.sqlite3`` (the store), ``uploads/<id><ext>`` (a job's video until it
    ends), ``results/<id>/`` (its output directory, as s4d-convert writes it) and
    ``archives/<id>.zip``. ``s4d-serve.json`` marks the directory as ours: nothing is removed from a
    directory without it, and inside it only names made of a job id."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uploads, self.results, self.archives = (self.root / n for n in ("uploads", "results", "archives"))
        self.db = self.root / "jobs.sqlite3"

    def prepare(self, lock: bool = True) -> None:
        """Create the directory (or adopt an empty one), or check that it is ours; with ``lock``,
        take it for this process (``DataDirError`` while another s4d-serve holds it: two servers
        on one queue would re-run each other's running jobs)."""
        tag = self.root / DATA_TAG
        if self.root.exists() and not self.root.is_dir():
            raise DataDirError(f"--data-dir {self.root} exists and is not a directory")
        if self.root.is_dir() and not tag.exists() and any(self.root.iterdir()):
            raise DataDirError(f"--data-dir {self.root} is not empty and is not an s4d-serve data directory (no "
                               f"{DATA_TAG}); choose a new or empty directory")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if tag.exists():
                info = read_json(tag)
                if not isinstance(info, dict) or info.get("format") != DATA_FORMAT:
                    raise DataDirError(f"--data-dir {self.root}: {DATA_TAG} is not an s4d-serve data tag")
            else:
                tag.write_text(json.dumps({"format": DATA_FORMAT, "version": 1}) + "\n")
            for sub in (self.uploads, self.results, self.archives):
                sub.mkdir(exist_ok=True)
            if lock:
                self._lock()
        except (OSError, JSONFileError) as exc:
            raise DataDirError(f"cannot use --data-dir {self.root}: {exc}") from None

    def _lock(self) -> None:
        import fcntl

        if getattr(self, "_lock_fd", None) is not None:
            return
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirError(f"--data-dir {self.root} is in use by another s4d-serve (pid {holder}); stop it first "
                               "or choose another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd  # held (and the lock with it) until this process ends

    def upload_of(self, job_id: str, request: dict[str, Any]) -> Path:
        """Where a job's uploaded video is kept."""
        return self.uploads / f"{job_id}{request.get('suffix', '')}"

    def result_of(self, job_id: str) -> Path:
        """A job's output directory."""
        return self.results / job_id

    def archive_of(self, job_id: str) -> Path:
        """A job's zip of all its result files (made on the first request)."""
        return self.archives / f"{job_id}.zip"

    def remove_upload(self, job_id: str, request: dict[str, Any]) -> None:
        """Remove a job's uploaded video (once the job ended)."""
        self.upload_of(job_id, request).unlink(missing_ok=True)

    def remove_results(self, job_id: str) -> None:
        """Remove a job's output directory and archive (only a directory this server's runs wrote)."""
        from ..outputs.meshseq import written_sequence

        self.archive_of(job_id).unlink(missing_ok=True)
        target = self.result_of(job_id)
        if target.is_dir() and not target.is_symlink() and written_sequence(target) is None:
            shutil.rmtree(target, ignore_errors=True)

    def clean(self, known: set[str]) -> list[str]:
        """After a restart: remove temporary files of killed writes and the files of jobs the store
        no longer has (a DELETE or an expiry interrupted between the row and the files)."""
        removed = [str(p) for sub in (self.uploads, self.results, self.archives) for p in clean_stale_partials(sub)]
        for sub in (self.uploads, self.archives):
            for path in sub.iterdir():
                job_id = path.name.split(".", 1)[0]
                if JOB_ID.match(job_id) and job_id not in known and path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed.append(str(path))
        for path in self.results.iterdir():
            if JOB_ID.match(path.name) and path.name not in known:
                self.remove_results(path.name)
                if not path.exists():
                    removed.append(str(path))
        return removed


_ARCHIVE_LOCK = threading.Lock()


def build_archive(data: DataDir, job_id: str, files: list[str]) -> Path:
    """The zip of a succeeded job's files (``<id>/<name>``; only files ``result_file`` serves), made
    once (one build at a time), atomically, then reused. ``FileNotFoundError`` when the job's
    files went away meanwhile (deleted, expired)."""
    target = data.archive_of(job_id)
    with _ARCHIVE_LOCK:
        if target.is_file():
            return target
        with atomic_file(target) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
                for name in files:
                    path = result_file(data, job_id, files, name)
                    if path is None:
                        raise FileNotFoundError(f"result file {name!r} of job {job_id} is gone")
                    zf.write(path, f"{job_id}/{name}")
    return target


def result_file(data: DataDir, job_id: str, files: list[str], name: str) -> Path | None:
    """The path of result file ``name`` of a job, only if the job wrote it (its manifest lists it)
    and it is a regular file inside the job's directory; else None. No other path is ever served."""
    if name not in files:
        return None
    root = data.result_of(job_id).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file() or (root / name).is_symlink():
        return None
    return path


# -------------------------------------------------------------------------------------------------
# 3. one run
# -------------------------------------------------------------------------------------------------


class JobStopped(BaseException):
    """Raised inside a running job at its next progress step: ``reason`` is ``cancel`` (a DELETE)
    or ``drain`` (the server is stopping). A BaseException, so no ``except Exception`` fallback of
    the pipeline swallows it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobProgress:
    """The progress reporter of a running job: records ``{stage: {done, total}}``, saves it to the
    store at most every ``every`` seconds, and stops the run when asked (``stop``)."""

    def __init__(self, save: Callable[[dict], None], should_stop: Callable[[], str | None], every: float = 0.5) -> None:
        self.stages: dict[str, dict[str, int]] = {}
        self._save, self._should_stop, self._every = save, should_stop, every
        self._saved = 0.0
        self.stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        """Ask the run to stop at its next progress step."""
        self.stop_reason = reason

    def _tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._saved >= self._every:
            self._saved = now
            reason = self.stop_reason or self._should_stop()
            if reason:
                raise JobStopped(reason)
            self._save(self.stages)

    def start(self, stage: str, total: int) -> None:
        """A stage begins with ``total`` steps."""
        self.stages[stage] = {"done": 0, "total": int(total)}
        self._tick(force=True)

    def advance(self, stage: str, n: int = 1) -> None:
        """``n`` more steps of ``stage`` are done."""
        if stage in self.stages:
            self.stages[stage]["done"] += int(n)
        self._tick()

    def finish(self, stage: str) -> None:
        """A stage ended."""
        if stage in self.stages:
            self.stages[stage]["done"] = self.stages[stage]["total"]
        self._tick(force=True)


@dataclass
class Outcome:
    """How one run ended."""

    state: str  # succeeded | failed
    error: str | None = None
    files: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tracking: dict[str, Any] | None = None


def convert_job(generator, video: Path, request: dict[str, Any], output: Path, progress,
                timeout: float | None = None) -> Outcome:
    """Run one job as ``s4d-convert`` runs one clip (``convert_one``: the same checks, atomic
    publish, error texts) into ``output``, replacing only an output of an earlier attempt of the
    same job. ``JobStopped`` from ``progress`` passes through."""
    from ..batch.clips import Item, OutputOptions, convert_one
    from ..outputs.meshseq import SEQUENCE_MANIFEST

    try:
        settings = resolve(request, generator.defaults, generator.runtime.fixed_frames)
    except FieldError as exc:
        return Outcome("failed", str(exc))
    label = request.get("filename") or "upload"
    item = Item(input=str(video), name=output.name, output=str(output), label=label,
                identity={"path": label, "size": video.stat().st_size})
    options = OutputOptions(tuple(request["formats"]), overwrite=True, timeout=timeout,
                            **request.get("outputs", {}))
    convert_one(generator, item, settings, options, progress=progress)
    if item.status != "ok":
        return Outcome("failed", public_text(item.error or "failed", video, label, output.parent.parent))
    manifest = read_json(output / SEQUENCE_MANIFEST)
    return Outcome("succeeded", files=list(manifest["files"]), timings=dict(manifest.get("timings_s", {})),
                   tracking=item.tracking)


def public_text(text: str, upload: Path, label: str, root: Path) -> str:
    """``text`` (an error) as a client may see it: the upload's path on the server becomes the
    client's file name, and any other path in the data directory ``<data-dir>/...``."""
    return text.replace(str(upload), label).replace(str(root), "<data-dir>")


# -------------------------------------------------------------------------------------------------
# 4. the workers of one machine
# -------------------------------------------------------------------------------------------------


STOP_GRACE = 10.0  # seconds a job stopped by a drain gets to reach its next progress step


class WorkerPool:
    """What the HTTP app needs of whatever runs the jobs (threads here, Ray Serve replicas in
    ``sdk.serve.ray_serve``): ``start``, ``ready``, ``load_error``, ``model_info``, ``notify``,
    ``cancel``, ``running``, ``stop``. ``count`` jobs run at once."""

    def __init__(self, store: JobStore, data: DataDir, count: int) -> None:
        self.store, self.data, self.count = store, data, count
        self._wake = threading.Condition()
        self._accepting = True
        self._threads: list[threading.Thread] = []
        self._running: dict[str, Any] = {}
        self.load_error: str | None = None
        self.last_error: str | None = None  # the last failure of the store or the disk a worker survived
        self.model_info: dict[str, Any] = {}

    @property
    def ready(self) -> bool:
        """The model answers (every instance loaded)."""
        return bool(self.model_info)

    def notify(self) -> None:
        """A job was queued: wake an idle worker."""
        with self._wake:
            self._wake.notify_all()

    def running(self) -> list[str]:
        """Ids of the jobs running now."""
        return list(self._running)

    def _next_job(self):
        """The oldest queued job, now ``running``; None after waiting a while for one (or when stopping)."""
        job = self.store.claim() if self._accepting else None
        if job is None:
            with self._wake:
                if self._accepting:
                    self._wake.wait(1.0)
        return job

    def stop_taking(self) -> None:
        """Take no more jobs (a drain began); running ones go on."""
        self._accepting = False
        self.notify()

    def _drain(self, drain: float) -> None:
        """Take no more jobs; wait up to ``drain`` seconds for the running ones to end."""
        self.stop_taking()
        deadline = time.monotonic() + drain
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)


class LocalWorkers(WorkerPool):
    """``--workers`` threads, each with its own model instance, taking jobs from the store one at a
    time. ``stop(drain)`` stops taking jobs, lets running ones finish for up to ``drain`` seconds,
    then stops them and puts them back in the queue."""

    def __init__(self, store: JobStore, data: DataDir, load_generator: Callable[[], Any], workers: int = 1,
                 job_timeout: float | None = None,
                 on_finished: Callable[[Outcome | None, str, float | None], None] | None = None) -> None:
        super().__init__(store, data, workers)
        self._load, self.job_timeout, self._on_finished = load_generator, job_timeout, on_finished
        self.generators: list[Any] = []

    def start(self) -> None:
        """Load the models and start the worker threads (in the background: /readyz tells when)."""
        for index in range(self.count):
            thread = threading.Thread(target=self._work, name=f"s4d-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def ready(self) -> bool:
        """Every model instance is loaded."""
        return len(self.generators) == self.count

    def cancel(self, job_id: str) -> None:
        """Stop a running job at its next progress step (the store already says cancel)."""
        progress = self._running.get(job_id)
        if progress is not None:
            progress.stop("cancel")

    def stop(self, drain: float) -> None:
        """Stop taking jobs; wait up to ``drain`` seconds for running ones, then stop them (at their
        next progress step; a few seconds at most, writing outputs included) and put them back in
        the queue. A job that still has not stopped is put back from here: the interrupted start
        never counts as an attempt."""
        self._drain(drain)
        for progress in list(self._running.values()):
            progress.stop("drain")
        deadline = time.monotonic() + STOP_GRACE
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for job_id in list(self._running):
            self.store.requeue(job_id, "re-queued: the server was stopped (SIGTERM) while it ran")

    # -- the loop ---------------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            generator = self._load()
        except BaseException as exc:  # a bad --model: /readyz reports it, jobs stay queued
            self.load_error = f"{type(exc).__name__}: {exc}"
            return
        if not self.generators:
            self.model_info = {"defaults": generator.defaults, "fixed_frames": generator.runtime.fixed_frames}
        self.generators.append(generator)
        while self._accepting:
            try:
                job = self._next_job()
                if job is not None:
                    self.run(generator, job)
            except Exception as exc:  # the store itself failed (disk full): keep the worker, retry
                self.last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(1.0)

    def run(self, generator, job) -> None:
        """Run one claimed job to its end state (or back to the queue when drained)."""
        def should_stop() -> str | None:
            return "cancel" if self.store.cancel_requested(job.id) else None

        progress = JobProgress(lambda stages: self.store.set_progress(job.id, stages), should_stop)
        self._running[job.id] = progress
        outcome, t0 = None, time.perf_counter()
        upload = self.data.upload_of(job.id, job.request)
        try:
            if not self._accepting:  # a drain began between the claim and now
                raise JobStopped("drain")
            if self.store.cancel_requested(job.id):
                raise JobStopped("cancel")
            outcome = convert_job(generator, upload, job.request, self.data.result_of(job.id), progress,
                                  self.job_timeout)
            if not self.store.finish(job.id, outcome.state, error=outcome.error, files=outcome.files,
                                     timings=outcome.timings, tracking=outcome.tracking, progress=progress.stages):
                raise JobStopped("cancel")  # cancelled (or re-queued) while the outputs were written
            state = outcome.state
        except JobStopped as stop:
            if stop.reason == "drain":
                self.store.requeue(job.id, "re-queued: the server was stopped (SIGTERM) while it ran")
                state = "queued"
            else:
                self.data.remove_results(job.id)
                self.store.finish(job.id, "cancelled", progress=progress.stages)
                state = "cancelled"
        except Exception as exc:  # ours, not the clip's: fail the job, keep the worker
            label = job.request.get("filename") or "upload"
            self.store.finish(job.id, "failed", error=public_text(f"internal error ({type(exc).__name__}): {exc}",
                                                                  upload, label, self.data.root))
            state = "failed"
        finally:
            self._running.pop(job.id, None)
        if state in FINISHED:
            self.data.remove_upload(job.id, job.request)
        if self._on_finished is not None:
            self._on_finished(outcome, state, time.perf_counter() - t0)
