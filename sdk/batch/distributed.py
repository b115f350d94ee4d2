"""``s4d-convert --ray``: convert many clips on a Ray cluster with Ray Data.

The pipeline is plain Ray Data: one row per clip (``from_items``, one block each) ->
``map_batches`` with a pool of converter actors (each loads the model once, ``batch_size=1``,
one task in flight, ``num_gpus`` / ``num_cpus`` per actor) -> rows streamed back to the driver
as clips finish. The per-clip work is ``sdk.batch.clips.convert_one``, the same function the local
CLI runs.

Failures, decided here and not left to Ray's defaults (which retry a crashing clip forever, or
fail the whole job and lose every result):
- A Python error in a clip is caught inside the actor and comes back as a ``failed`` row.
- A clip whose worker process dies (segfault, OOM kill) is retried ``retries`` times on a
  restarted actor (``max_task_retries``); after that Ray drops its block (``max_errored_blocks``
  allows every block) and the driver, which knows every input, reports it as
  ``worker crashed after N tries``. Nothing hangs, nothing vanishes.
- An actor that cannot load the model (e.g. TensorRT engines built for another GPU) retries the
  load once in place, then dies; Ray Data replaces it, and after ``2 x workers`` such deaths in a
  row the job stops: every clip not converted yet is reported with the workers' reason.
- Actors that cannot be placed within ``ACTOR_START_TIMEOUT_S`` stop the job the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List

from .clips import Item, OutputOptions, convert_one
from ..generation.settings import RunSettings

#: Test-only: a JSON file {clip name: "once" | "always"} of clips whose worker process is killed
#: (SIGKILL) before converting them. Nothing reads it unless this variable names such a file.
TEST_CRASH_PLAN_ENV = "S4D_TEST_CRASH_PLAN"
LOCAL = "auto"  # --ray without an address: $RAY_ADDRESS, else a local cluster
ACTOR_START_TIMEOUT_S = 600  # placing the actors (resources held by other jobs, an autoscaler adding nodes)
_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.-]+:\d+)$")


class ClusterError(Exception):
    """The cluster cannot be used as asked (unreachable, too small): a usage error, exit 2."""


class WorkerSetupError(RuntimeError):
    """A worker could not load the model; its message is what every unconverted clip reports."""


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how wide to run."""

    address: str = LOCAL
    workers: int = 1
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs and the device is not cpu
    cpus_per_worker: float = 1.0
    retries: int = 1  # retries of a clip whose worker process died
    threads: int | None = None  # torch intra-op threads per actor (default: Ray's, = cpus_per_worker)
    accelerator_type: str | None = None  # place actors only on this GPU type (e.g. "H100")
    connect_timeout: float = 30.0  # seconds to reach a cluster's address before giving up


def check_cluster_options(cluster: ClusterOptions, inputs: List[str], model: str) -> None:
    """Raise ``ClusterError`` naming the first unusable option (before Ray starts)."""
    from ..core.extras import require
    from ..inputs.frames import VIDEO_EXTENSIONS

    if cluster.workers < 1:
        raise ClusterError(f"--workers must be >= 1, got {cluster.workers}")
    if cluster.gpus_per_worker is not None and not cluster.gpus_per_worker >= 0:
        raise ClusterError(f"--gpus-per-worker must be >= 0, got {cluster.gpus_per_worker}")
    if not cluster.cpus_per_worker > 0:
        raise ClusterError(f"--cpus-per-worker must be > 0, got {cluster.cpus_per_worker}")
    if not 0 <= cluster.retries <= 100:
        raise ClusterError(f"--retries must be between 0 and 100, got {cluster.retries}")
    address = cluster.address
    if address != LOCAL and (os.path.exists(address) or Path(address).suffix.lower() in VIDEO_EXTENSIONS
                             or address in inputs):
        raise ClusterError(f"--ray took {address!r} as the cluster address, but it looks like an input; put --ray "
                           "after the inputs, or write --ray=ADDRESS")
    if not _ADDRESS.match(address):
        raise ClusterError(f"--ray={address!r} is not a Ray cluster address; expected auto, HOST:PORT or "
                           "ray://HOST:PORT")
    if address == LOCAL and not os.environ.get("RAY_ADDRESS") and model not in ("default", "tiny-random") \
            and not os.path.exists(model):
        raise ClusterError(f"cannot load model {model!r}: no such file or directory")
    require("ray", "s4d-convert --ray")


def _check_reachable(address: str, timeout: float) -> None:
    """A TCP connection to the cluster's ``HOST:PORT`` within ``timeout`` seconds, or ``ClusterError``:
    ``ray.init`` itself retries an unreachable address without end."""
    import socket

    hostport = address.removeprefix("ray://").split("/", 1)[0]  # ray://head:10001/ -> head:10001
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "10001")  # Ray Client's port
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (getattr(exc, "strerror", None) or str(exc))
        raise ClusterError(f"cannot reach the Ray cluster at {address} within {timeout:g} s ({why}); check the "
                           "address, or raise --connect-timeout") from None


def connect(address: str, connect_timeout: float = 30.0):
    """``ray.init`` for ``address``; returns (ray, the address joined, or None for a local cluster
    started here). A remote address must accept a TCP connection within ``connect_timeout``."""
    import logging

    import ray

    target = os.environ.get("RAY_ADDRESS") if address == LOCAL else address
    if target and target not in (LOCAL, "local"):
        _check_reachable(target, connect_timeout)
    started_here = not target
    kwargs: dict[str, Any] = dict(logging_level=logging.ERROR, log_to_driver=False)
    if started_here:  # a private single-machine cluster: no dashboard, every core
        kwargs.update(num_cpus=os.cpu_count() or 1, include_dashboard=False)
    try:
        ray.init(address=target or None, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {target}: {exc}") from None
    return ray, target or None


def _quiet_ray_logs() -> None:
    """Ray Data logs its plan and a traceback per dropped block on stderr; this command reports every
    clip itself (the full logs stay in Ray's session directory)."""
    import logging

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class ClipConverter:
    """The Ray actor: one Generator for its lifetime, one clip per call."""

    def __init__(self, model: str, backend: str, device: str | None, settings: RunSettings,
                 options: OutputOptions, threads: int | None) -> None:
        self.host, self.options = socket.gethostname(), options
        try:
            from .clips import load_generator

            self.generator = load_generator(model, backend, device, threads)
            self.settings = settings.resolved(self.generator.defaults)
            fixed = self.generator.runtime.fixed_frames
            if fixed is not None and fixed != self.settings.num_frames:
                raise ValueError(f"it was exported for {fixed} frames; pass --frames {fixed} or export another")
        except Exception as exc:  # one line the driver can show for every clip this job did not convert
            raise WorkerSetupError(f"worker on {self.host} cannot load model {model!r}: {exc}") from None

    def __call__(self, batch: dict) -> dict:
        """Convert the clips of one Ray Data batch (one row per clip) and return one result row each;
        a failing clip becomes a ``failed`` row, never an exception that would kill the actor."""
        rows: dict[str, list] = {key: [] for key in ("index", "status", "error", "frames", "seconds", "ran",
                                                     "not_written", "tracking", "host")}
        for index, source, name, output, identity in zip(batch["index"], batch["input"], batch["name"],
                                                         batch["output"], batch["identity"]):
            item = Item(str(source), str(name), str(output), identity=json.loads(str(identity)))
            try:
                _test_crash_hook(item.name)
                convert_one(self.generator, item, self.settings, self.options, disposable_process=True)
            except Exception as exc:  # convert_one reports its own failures; this is a last resort
                item.status, item.error = "failed", f"internal error ({type(exc).__name__}): {exc}"
            for key, value in (("index", int(index)), ("status", item.status), ("error", item.error),
                               ("frames", item.frames), ("seconds", item.seconds),
                               ("ran", json.dumps(item.ran)), ("not_written", json.dumps(item.not_written)),
                               ("tracking", json.dumps(item.tracking)), ("host", self.host)):
                rows[key].append(value)
        return rows


def _test_crash_hook(name: str) -> None:
    """Kill this worker process before clip ``name`` if the test-only crash plan says so."""
    plan_path = os.environ.get(TEST_CRASH_PLAN_ENV)
    if not plan_path or not os.path.isfile(plan_path):
        return
    mode = json.loads(Path(plan_path).read_text()).get(name)
    if mode == "once":
        try:  # the first try of this clip creates the mark and dies; the retry finds it and converts
            os.close(os.open(f"{plan_path}.{name}.crashed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    elif mode != "always":
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _gpus_per_worker(cluster: ClusterOptions, device: str | None, available: dict) -> float:
    if cluster.gpus_per_worker is not None:
        return cluster.gpus_per_worker
    return 1.0 if available.get("GPU", 0) > 0 and not (device or "").startswith("cpu") else 0.0


def _actors_that_fit(nodes: list[dict], cpus: float, gpus: float) -> int:
    """How many actors of ``cpus`` CPUs and ``gpus`` GPUs the alive nodes hold (a fractional GPU
    share must fit inside one GPU; Ray never splits an actor over two)."""
    total = 0
    for node in nodes:
        if not node.get("Alive", True):
            continue
        resources = node.get("Resources", {})
        fit = int(resources.get("CPU", 0) // cpus + 1e-9)
        if gpus:
            whole = int(resources.get("GPU", 0) + 1e-9)
            fit = min(fit, whole * int(1 / gpus + 1e-9) if gpus < 1 else int(whole // gpus))
        total += fit
    return total


def _check_fit(ray, cluster: ClusterOptions, gpus: float, device: str | None) -> None:
    if gpus == 0 and (device or "").startswith("cuda"):
        raise ClusterError(f"--device {device} needs a GPU per worker; pass --gpus-per-worker (e.g. 1 or 0.5)")
    nodes = ray.nodes()
    if cluster.accelerator_type:  # Ray would otherwise wait, silently, for a node that never comes
        label = f"accelerator_type:{cluster.accelerator_type}"
        types = sorted({key.split(":", 1)[1] for node in nodes if node.get("Alive", True)
                        for key in node.get("Resources", {}) if key.startswith("accelerator_type:")})
        if not any(label in node.get("Resources", {}) for node in nodes if node.get("Alive", True)):
            raise ClusterError(f"no node of the Ray cluster has GPU type {cluster.accelerator_type!r} (--accelerator-type); "
                               f"its nodes have {', '.join(types) if types else 'no GPUs'}")
    fit = _actors_that_fit(nodes, cluster.cpus_per_worker, gpus)
    if fit < cluster.workers:
        need = f"{cluster.cpus_per_worker:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")
        raise ClusterError(f"the Ray cluster's nodes hold {fit} workers of {need} each, not the {cluster.workers} "
                           "asked for (lower --workers or the per-worker share)")


def convert_on_ray(items: List[Item], model: str, backend: str, device: str | None, settings: RunSettings,
                   options: OutputOptions, cluster: ClusterOptions,
                   on_result: Callable[[Item], None] = lambda item: None, progress: bool = False) -> dict:
    """Convert the ``pending`` items on a Ray cluster; every item ends ``ok`` or ``failed``.
    Returns what ran where (address, workers, resources, timings; ``setup_failed`` when no worker
    could load the model) for the summary. Raises ``ClusterError`` when the cluster cannot be
    reached or cannot hold the workers."""
    pending = [(index, item) for index, item in enumerate(items) if item.status == "pending"]
    # Ray prints raylet notices (a worker died, a task is retried, with the worker's whole
    # traceback) on sys.stdout, which belongs to --json. They go to a log file instead, named in the
    # summary (``driver_log``): every clip's fate is reported by this command, in one line each.
    fd, name = tempfile.mkstemp(prefix="s4d-ray-driver-", suffix=".log")  # private, never a planted path
    log_path = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as driver_log, contextlib.redirect_stdout(driver_log):
            info = _convert_on_ray(items, pending, model, backend, device, settings, options, cluster, on_result,
                                   progress)
    finally:
        if log_path.exists() and not log_path.stat().st_size:
            log_path.unlink()
    if log_path.exists():
        info["driver_log"] = str(log_path)
    return info


def _convert_on_ray(items, pending, model, backend, device, settings, options, cluster, on_result, progress) -> dict:
    """``convert_on_ray``'s work, with stdout already redirected to the driver log."""
    t0 = time.perf_counter()
    ray, joined = connect(cluster.address, cluster.connect_timeout)
    connect_s = time.perf_counter() - t0
    try:
        available = ray.cluster_resources()
        gpus = _gpus_per_worker(cluster, device, available)
        _check_fit(ray, cluster, gpus, device)
        info: dict[str, Any] = {
            "address": joined or "local", "workers": cluster.workers,
            "gpus_per_worker": gpus, "cpus_per_worker": cluster.cpus_per_worker, "retries": cluster.retries,
            "cluster_resources": {k: available[k] for k in ("CPU", "GPU") if k in available},
            "connect_s": round(connect_s, 3)}
        if pending:
            info.update(_run_pipeline(ray, pending, items, model, backend, device if gpus or device else "cpu",
                                      settings, options, cluster, gpus, on_result, progress))
        info["total_s"] = round(time.perf_counter() - t0, 3)
        return info
    finally:
        ray.shutdown()  # stops the cluster we started; disconnects from one we joined


def _run_pipeline(ray, pending, items, model, backend, device, settings, options, cluster, gpus, on_result,
                  progress) -> dict:
    import warnings

    from ray.data import ActorPoolStrategy, DataContext

    _quiet_ray_logs()
    context = DataContext.get_current()
    context.enable_progress_bars = progress
    context.max_errored_blocks = len(pending)  # a dead clip must not take the others' results with it
    context.actor_init_retry_on_errors, context.actor_init_max_retries = True, 1  # e.g. a GPU still freeing
    context.max_consecutive_actor_init_deaths = 2 * cluster.workers
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    rows = [{"index": index, "input": item.input, "name": item.name, "output": item.output,
             "identity": json.dumps(item.identity)} for index, item in pending]
    placement = {"accelerator_type": cluster.accelerator_type} if cluster.accelerator_type else {}
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for max_task_retries; ray_remote_args is the way (the [ray]
        # extra pins ray below 2.64, which removes it)
        warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            ClipConverter, batch_size=1,
            fn_constructor_kwargs=dict(model=model, backend=backend, device=device, settings=settings,
                                       options=options, threads=cluster.threads),
            # one clip in flight per actor: a crash then costs a retry of that clip only
            compute=ActorPoolStrategy(size=cluster.workers, max_tasks_in_flight_per_actor=1),
            num_cpus=cluster.cpus_per_worker, num_gpus=gpus or None, **placement,
            # a restarted actor must be able to take the next clip; the clip's own tries are bounded
            max_restarts=-1, max_task_retries=cluster.retries)
    job_error = None
    try:
        for row in dataset.iter_rows():
            item = items[int(row["index"])]
            item.status, item.error, item.frames = row["status"], row["error"], int(row["frames"])
            item.seconds, item.ran = float(row["seconds"]), json.loads(row["ran"])
            item.not_written = json.loads(row["not_written"])
            item.tracking = json.loads(row["tracking"])
            _check_visible(item, row["host"])
            on_result(item)
    except Exception as exc:  # the job stopped: what did not come back is failed with the reason
        job_error = _job_failure_reason(exc)
    tries = cluster.retries + 1
    for _, item in pending:
        if item.status != "pending":
            continue
        if job_error is not None:
            item.status, item.error = "failed", job_error
        elif not options.overwrite and _finished_output(item):  # planned absent, so this job published it
            # (its row was lost after the clip was written, e.g. a node died)
            item.status = "ok"
        else:  # its block was dropped: the worker died on every try
            item.status = "failed"
            item.error = (f"worker crashed after {tries} {'try' if tries == 1 else 'tries'} (the process died: a "
                          "crash, an out-of-memory kill, or a clip stuck past twice --timeout + 30 s)")
        on_result(item)
    converted = sum(item.status == "ok" for _, item in pending)
    return {"setup_failed": bool(job_error and "cannot load model" in job_error and not converted)}


def _job_failure_reason(exc: BaseException) -> str:
    """One line for the clips a stopped job did not convert: the workers' own reason when they
    could not load the model (the last line of Ray's remote traceback), else Ray's error."""
    text = str(exc)
    found = re.findall(rf"{WorkerSetupError.__name__}: (.+)", text)
    if found:
        return f"not converted: {found[-1].strip()}"
    if "wait_for_min_actors_s" in text or "GetTimeoutError" in type(exc).__name__:
        return (f"not converted: the Ray cluster did not start the workers within {ACTOR_START_TIMEOUT_S} s "
                "(resources held by other jobs, or a model that takes that long to load)")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"not converted: the Ray job stopped ({type(exc).__name__}: {first[:300]})"


def _check_visible(item: Item, host: str) -> None:
    """An ok clip written to a plain path must be where this driver can see it (a shared filesystem)."""
    from .storage import local_path

    target = local_path(item.output)
    if item.status == "ok" and target is not None and not target.is_dir():
        item.status, item.error = "failed", (
            f"converted on {host}, but {item.output} is not visible here: with --ray, -o must be a filesystem "
            "every node shares, or an object-store URI (s3://, gs://)")


def _finished_output(item: Item) -> bool:
    from ..outputs.meshseq import written_sequence
    from .storage import local_path, open_remote, remote_output_state

    try:
        target = local_path(item.output)
        if target is not None:
            return written_sequence(target) is None
        return remote_output_state(open_remote(item.output))[0] == "complete"
    except (OSError, ValueError):
        return False
