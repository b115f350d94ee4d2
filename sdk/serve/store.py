"""The durable job store of ``s4d-serve``: one SQLite database (WAL) in the data directory.

A job is accepted only once its row is committed (and its upload written and flushed to disk),
so a crash (``kill -9``; power loss too, with ``synchronous=FULL``) never loses an accepted job. States::

    queued -> running -> succeeded | failed | cancelled
       \\-> cancelled          running -> queued (drain, or a restart after a crash)

A restart on the same data directory (:meth:`JobStore.recover`) puts every job that was
``running`` back in the queue, unless it already started ``max_attempts`` times (a job that
crashes the server would otherwise crash it forever); then it fails with that reason.

Every method is one short transaction under one lock, so the HTTP handlers (threads) and the
worker threads share one connection without waiting on each other for long.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex: what new_job_id makes, and all a URL may name

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- submission order: the queue is first in, first out
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,     -- times a worker started it
    request TEXT NOT NULL,                   -- JSON: the checked settings, formats, upload file name
    error TEXT,
    note TEXT,                               -- e.g. why it was re-queued
    progress TEXT,                           -- JSON: stage -> {done, total}
    timings TEXT,                            -- JSON: stage -> seconds (from the manifest)
    files TEXT,                              -- JSON: result files (relative names) once succeeded
    tracking TEXT,                           -- JSON: topology summary once succeeded
    cancel INTEGER NOT NULL DEFAULT 0        -- a DELETE asked a running job to stop
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""


class QueueFull(Exception):
    """The queue holds ``max_queue`` unfinished jobs already."""


def new_job_id() -> str:
    """A fresh job id (32 hex digits, unguessable)."""
    return uuid.uuid4().hex


@dataclass
class Job:
    """One row of the store, as the API reports it."""

    id: str
    state: str
    created: float
    request: dict[str, Any]
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    error: str | None = None
    note: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    tracking: dict[str, Any] | None = None
    cancel: bool = False

    def public(self, labels: dict[str, str] | None = None) -> dict[str, Any]:
        """The JSON the API returns for ``GET /v1/jobs/{id}``; ``labels`` renames settings (to the
        form fields' names)."""
        labels = labels or {}
        settings = {labels.get(k, k): v for k, v in self.request.get("settings", {}).items()}
        out = {"id": self.id, "state": self.state, "created": _iso(self.created), "started": _iso(self.started),
               "finished": _iso(self.finished), "attempts": self.attempts, "settings": settings,
               "formats": self.request.get("formats", []), "outputs": self.request.get("outputs", {}),
               "progress": self.progress, "timings": self.timings}
        if self.note:
            out["note"] = self.note
        if self.state == "failed":
            out["error"] = self.error
        if self.state == "succeeded":
            out["files"] = self.files
            out["tracking"] = self.tracking
        if self.cancel and self.state == "running":
            out["cancelling"] = True
        return out


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _row_to_job(row: sqlite3.Row) -> Job:
    def loads(text, default):
        return default if text is None else json.loads(text)

    return Job(id=row["id"], state=row["state"], created=row["created"], request=json.loads(row["request"]),
               started=row["started"], finished=row["finished"], attempts=row["attempts"], error=row["error"],
               note=row["note"], progress=loads(row["progress"], {}), timings=loads(row["timings"], {}),
               files=loads(row["files"], []), tracking=loads(row["tracking"], None), cancel=bool(row["cancel"]))


class JobStore:
    """The jobs of one data directory (``<data-dir>/jobs.sqlite3``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # autocommit mode: every transaction below is explicit (BEGIN IMMEDIATE takes the write lock
        # up front, so a read-then-write such as claiming a job cannot interleave with another)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an accepted job survives power loss, not only kill -9
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database (the WAL is checkpointed)."""
        with self._lock:
            self._db.close()

    # -- transactions ---------------------------------------------------------------------------

    def _write(self, fn):
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                out = fn(self._db)
                self._db.execute("COMMIT")
                return out
            except BaseException:  # also a failed COMMIT (disk full) or an exception delivered to the thread
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")  # never leave the shared connection inside a transaction
                raise

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- submission and queries -------------------------------------------------------------------

    def add(self, job_id: str, request: dict[str, Any], max_queue: int) -> Job:
        """Commit a new queued job, or raise ``QueueFull`` when ``max_queue`` jobs wait or run."""
        now = time.time()

        def add(db):
            waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[0]
            if waiting >= max_queue:
                raise QueueFull(f"{waiting} jobs are queued or running (--max-queue {max_queue})")
            db.execute("INSERT INTO jobs (id, state, created, request) VALUES (?, 'queued', ?, ?)",
                       (job_id, now, json.dumps(request)))

        self._write(add)
        return Job(job_id, "queued", now, request)

    def get(self, job_id: str) -> Job | None:
        """The job, or None if there is no such job (never was, deleted or expired)."""
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _row_to_job(rows[0]) if rows else None

    def jobs(self, state: str | None = None, limit: int = 100) -> list[Job]:
        """Jobs, newest first (optionally of one state)."""
        if state is None:
            rows = self._read("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,))
        else:
            rows = self._read("SELECT * FROM jobs WHERE state = ? ORDER BY seq DESC LIMIT ?", (state, limit))
        return [_row_to_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, 0 when none)."""
        out = dict.fromkeys(STATES, 0)
        for row in self._read("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            out[row["state"]] = row["n"]
        return out

    def ids(self) -> set[str]:
        """Every job id in the store."""
        return {row["id"] for row in self._read("SELECT id FROM jobs")}

    # -- the worker's side ------------------------------------------------------------------------

    def claim(self) -> Job | None:
        """Move the oldest queued job to ``running`` (one more attempt) and return it; None if none."""

        def claim(db):
            row = db.execute("SELECT seq FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1, progress = NULL, "
                       "error = NULL WHERE seq = ?", (time.time(), row["seq"]))
            return _row_to_job(db.execute("SELECT * FROM jobs WHERE seq = ?", (row["seq"],)).fetchone())

        return self._write(claim)

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """Record a running job's progress per stage."""
        self._write(lambda db: db.execute("UPDATE jobs SET progress = ? WHERE id = ? AND state = 'running'",
                                          (json.dumps(progress), job_id)))

    def finish(self, job_id: str, state: str, *, error: str | None = None, files: list[str] | None = None,
               timings: dict[str, float] | None = None, tracking: dict | None = None,
               progress: dict | None = None) -> bool:
        """End a running job as ``succeeded``, ``failed`` or ``cancelled``. Only a job that is still
        ``running`` changes (not one a drain put back in the queue meanwhile), and a job whose
        cancellation was asked never becomes ``succeeded``: returns False then (the caller discards
        the results and finishes it as ``cancelled``)."""
        if state not in FINISHED:
            raise ValueError(f"finish: state must be one of {FINISHED}, got {state!r}")
        guard = " AND cancel = 0" if state == "succeeded" else ""
        return self._write(lambda db: db.execute(
            "UPDATE jobs SET state = ?, finished = ?, error = ?, files = ?, timings = ?, tracking = ?, "
            f"progress = COALESCE(?, progress) WHERE id = ? AND state = 'running'{guard}",
            (state, time.time(), error, json.dumps(files or []), json.dumps(timings or {}),
             None if tracking is None else json.dumps(tracking),
             None if progress is None else json.dumps(progress), job_id)).rowcount > 0)

    def requeue(self, job_id: str, note: str, count_attempt: bool = False) -> None:
        """Put a running job back at the head of the queue (a drain stopped it); by default the
        interrupted start does not count against ``max_attempts``."""
        self._write(lambda db: db.execute(
            "UPDATE jobs SET state = 'queued', note = ?, progress = NULL, started = NULL, "
            "attempts = attempts - ? WHERE id = ? AND state = 'running'", (note, 0 if count_attempt else 1, job_id)))

    def cancel_requested(self, job_id: str) -> bool:
        """Whether a DELETE asked this running job to stop."""
        rows = self._read("SELECT cancel FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0]["cancel"])

    # -- DELETE, recovery and expiry --------------------------------------------------------------

    def cancel(self, job_id: str) -> str | None:
        """Cancel a job: a queued one at once (returns ``"cancelled"``), a running one by asking its
        worker (``"cancelling"``); a finished one is left as it is (returns its state). None: unknown."""

        def cancel(db):
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["state"] == "queued":
                db.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ?", (time.time(), job_id))
                return "cancelled"
            if row["state"] == "running":
                db.execute("UPDATE jobs SET cancel = 1 WHERE id = ?", (job_id,))
                return "cancelling"
            return row["state"]

        return self._write(cancel)

    def delete(self, job_id: str) -> bool:
        """Remove a finished job's row (its files are the caller's); False if not finished or unknown."""
        return self._write(lambda db: db.execute(
            "DELETE FROM jobs WHERE id = ? AND state IN ('succeeded', 'failed', 'cancelled')", (job_id,)).rowcount > 0)

    def recover(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """After a restart: every job left ``running`` by the previous process is queued again, or
        failed once it has started ``max_attempts`` times; a running job whose cancellation was
        asked is cancelled. Returns (requeued ids, ended ids: failed or cancelled)."""

        def recover(db):
            now, requeued, failed = time.time(), [], []
            for row in db.execute("SELECT id, attempts, cancel FROM jobs WHERE state = 'running'").fetchall():
                if row["cancel"]:
                    db.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ?", (now, row["id"]))
                    failed.append(row["id"])
                elif row["attempts"] >= max_attempts:
                    db.execute("UPDATE jobs SET state = 'failed', finished = ?, error = ? WHERE id = ?",
                               (now, f"the server stopped (crash or kill) while this job ran, {row['attempts']} "
                                     f"time(s); not retried again (--max-attempts {max_attempts})", row["id"]))
                    failed.append(row["id"])
                else:
                    db.execute("UPDATE jobs SET state = 'queued', started = NULL, progress = NULL, note = ? "
                               "WHERE id = ?", (f"re-run: the server stopped while attempt {row['attempts']} ran",
                                                row["id"]))
                    requeued.append(row["id"])
            return requeued, failed

        return self._write(recover)

    def expired(self, older_than: float) -> list[str]:
        """Ids of finished jobs that finished before the time ``older_than``."""
        rows = self._read("SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished < ?",
                          (older_than,))
        return [r["id"] for r in rows]

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs(limit=-1))
