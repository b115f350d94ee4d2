"""``s4d-serve --ray``: the same HTTP application as a Ray Serve deployment, for more than one machine.

Two deployments:

- ``s4d-ingress`` (one replica, pinned to the node where ``s4d-serve`` was started): the FastAPI app
  of ``sdk.serve.app`` with its job store, uploads and results in ``--data-dir`` on that node, as on
  one machine. Ray Serve's HTTP proxy on that node listens on ``--host:--port``.
- ``s4d-generator`` (``--replicas``, ``--gpus-per-replica`` each): one model instance per replica,
  one job at a time (``max_ongoing_requests=1``).

Routing: the ingress runs one dispatcher thread per replica; each takes the oldest queued job from
the store and calls the generator deployment through its handle, and Ray Serve's router sends the
call to a free replica. The video travels to the replica, and the result files back, through
Ray's object store, so replicas need no shared filesystem; results live in ``--data-dir`` on the
ingress node. A replica that dies mid-job is restarted by Ray Serve and the job is retried
(``--max-attempts``). Limits: live per-stage progress is reported on one machine only (here the
job shows ``running`` until it ends), and a DELETE of a running job takes effect when the replica
returns (its results are then discarded).
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..core.extras import require
from .jobs import Outcome, WorkerPool, convert_job
from .store import FINISHED

INGRESS, GENERATOR, APP_NAME = "s4d-ingress", "s4d-generator", "s4d-serve"


class RayServeError(Exception):
    """The Ray cluster cannot be reached or cannot hold the deployments asked for."""


class GeneratorReplica:
    """One model instance of the ``s4d-generator`` deployment."""

    def __init__(self, model: str, backend: str, device: str | None, threads: int | None) -> None:
        from ..batch.clips import load_generator

        self.generator = load_generator(model, backend, device, threads)

    def info(self) -> dict[str, Any]:
        """The model's run defaults and fixed frame count (to check requests at submission)."""
        return {"defaults": self.generator.defaults, "fixed_frames": self.generator.runtime.fixed_frames}

    def convert(self, video: bytes, suffix: str, request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """Run one job; returns its outcome and, when it succeeded, its files (name -> bytes)."""
        import ray

        from ..core.progress import SilentProgress

        with tempfile.TemporaryDirectory(prefix="s4d-serve-job-") as tmp:
            source = Path(tmp) / f"input{suffix}"
            source.write_bytes(video)
            out = Path(tmp) / "out"
            outcome = convert_job(self.generator, source, request, out, SilentProgress(), timeout)
            files = {name: (out / name).read_bytes() for name in outcome.files} if outcome.state == "succeeded" else {}
        return {"outcome": asdict(outcome), "files": files, "node": ray.util.get_node_ip_address()}


class RayWorkers(WorkerPool):
    """The dispatchers of the ingress: one thread per replica, calling the generator deployment."""

    def __init__(self, server, handle, replicas: int) -> None:
        super().__init__(server.store, server.data, replicas)
        self.server, self.handle = server, handle

    def start(self) -> None:
        """Ask a replica for the model's defaults, then start one dispatcher per replica."""
        thread = threading.Thread(target=self._start, name="s4d-ray-start", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _start(self) -> None:
        while self._accepting and not self.model_info:
            try:
                self.model_info = self.handle.info.remote().result(timeout_s=30)
            except Exception as exc:  # replicas still starting
                self.load_error = f"{type(exc).__name__}: {exc}"
                time.sleep(1)
        self.load_error = None
        for index in range(self.count):
            thread = threading.Thread(target=self._dispatch, name=f"s4d-dispatch-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def cancel(self, job_id: str) -> None:
        """The store says cancel; the dispatcher discards the result when the replica returns."""

    def stop(self, drain: float) -> None:
        """Stop dispatching; wait up to ``drain`` seconds, then put unfinished jobs back in the queue."""
        self._drain(drain)
        for job_id in list(self._running):
            self.store.requeue(job_id, "re-queued: the server was stopped (SIGTERM) while it ran")

    def _dispatch(self) -> None:
        while self._accepting:
            job = self._next_job()
            if job is None:
                continue
            self._running[job.id] = True
            t0 = time.perf_counter()
            outcome, state = None, "failed"
            try:
                outcome, state = self._run(job)
            except Exception as exc:  # ours (disk, store), not the clip's: fail the job, keep dispatching
                self.last_error = f"{type(exc).__name__}: {exc}"
                try:
                    self.store.finish(job.id, "failed", error=f"internal error ({type(exc).__name__})")
                except Exception:
                    time.sleep(1.0)
            finally:
                self._running.pop(job.id, None)
            if state in FINISHED:
                self.data.remove_upload(job.id, job.request)
            self.server.finished(outcome, state, time.perf_counter() - t0)

    def _run(self, job) -> tuple[Outcome | None, str]:
        from ..core.atomic import atomic_directory
        from ..outputs.meshseq import written_sequence

        video = self.data.upload_of(job.id, job.request).read_bytes()
        try:
            reply = self.handle.convert.remote(video, job.request.get("suffix", ""), job.request,
                                               self.server.config.job_timeout).result()
        except Exception as exc:  # the replica died (crash, OOM kill): retry on another start
            if not self._accepting:
                return None, "queued"  # stop() re-queued it
            if job.attempts < self.server.config.max_attempts:
                self.store.requeue(job.id, f"re-queued: its replica failed ({type(exc).__name__})", count_attempt=True)
                self.notify()
                return None, "queued"
            self.store.finish(job.id, "failed", error=f"its replica failed {job.attempts} time(s) "
                              f"({type(exc).__name__}: {exc}); not retried again (--max-attempts)")
            return None, "failed"
        outcome = Outcome(**reply["outcome"])
        if outcome.state == "succeeded" and self.store.cancel_requested(job.id):
            self.store.finish(job.id, "cancelled")
            return None, "cancelled"
        if outcome.state == "succeeded":
            root = self.data.result_of(job.id)
            with atomic_directory(root, overwrite=True, owned=written_sequence) as tmp:
                for name, payload in reply["files"].items():
                    path = (tmp / name).resolve()
                    if not path.is_relative_to(tmp.resolve()):
                        raise ValueError(f"replica returned a file outside the job's directory: {name!r}")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(payload)
        if not self.store.finish(job.id, outcome.state, error=outcome.error, files=outcome.files,
                                 timings=outcome.timings, tracking=outcome.tracking):
            self.data.remove_results(job.id)  # cancelled while the files came back
            self.store.finish(job.id, "cancelled")
            return None, "cancelled"
        return outcome, outcome.state


class Ingress:
    """The ``s4d-ingress`` deployment: the HTTP app of ``sdk.serve.app`` over ``RayWorkers``."""

    def __init__(self, config: dict[str, Any], generator_handle, replicas: int) -> None:
        from .app import ServeConfig, Server

        self.server = Server(ServeConfig(**config), lambda s: RayWorkers(s, generator_handle, replicas))

    def __serve_build_asgi_app__(self):
        from .app import create_app

        return create_app(self.server)


def serve_on_ray(config, address: str, replicas: int, gpus_per_replica: float) -> None:
    """Deploy the service on a Ray cluster and block until SIGTERM / SIGINT, then drain and shut down."""
    from ..batch.distributed import LOCAL, ClusterError, connect
    from .jobs import DataDir

    require("ray", "s4d-serve --ray", "serve-ray")
    serve = require("ray.serve", "s4d-serve --ray", "serve-ray")
    DataDir(config.data_dir).prepare(lock=False)  # refuse a foreign directory before any cluster starts;
    # the ingress takes the lock
    try:
        ray, joined = connect(LOCAL if address in ("auto", LOCAL) else address)
    except ClusterError as exc:
        raise RayServeError(str(exc)) from None
    try:
        node = ray.util.get_node_ip_address()
        resources = ray.cluster_resources()
        if f"node:{node}" not in resources:
            raise RayServeError(f"s4d-serve --ray must run on a node of the cluster (its --data-dir lives there); "
                                f"this machine ({node}) is not one; start it on the head node")
        if gpus_per_replica and resources.get("GPU", 0) < gpus_per_replica * replicas:
            raise RayServeError(f"the cluster has {resources.get('GPU', 0):g} GPUs; --replicas {replicas} x "
                                f"--gpus-per-replica {gpus_per_replica:g} do not fit")
        serve.start(http_options={"host": config.host, "port": config.port})
        generator = serve.deployment(GeneratorReplica, name=GENERATOR, num_replicas=replicas, max_ongoing_requests=1,
                                     ray_actor_options={"num_cpus": 1, "num_gpus": gpus_per_replica})
        ingress = serve.deployment(serve.ingress()(Ingress), name=INGRESS, num_replicas=1,
                                   ray_actor_options={"num_cpus": 0, "resources": {f"node:{node}": 0.001}},
                                   graceful_shutdown_timeout_s=config.drain_timeout + 15)
        app = ingress.bind(asdict(config), generator.bind(config.model, config.backend, config.device,
                                                          config.threads), replicas)
        try:
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        except Exception as exc:  # a replica's constructor failed (bad --model), or the cluster is too small
            raise RayServeError(f"Ray Serve could not start the deployments: {type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:2000]}") from None
        print(f"s4d-serve: Ray Serve on http://{config.host}:{config.port} ({replicas} replica"
              f"{'s' if replicas > 1 else ''}; data in {Path(config.data_dir).absolute()}; cluster "
              f"{joined or 'started here'})", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
        print("s4d-serve: draining", flush=True)
        serve.delete(APP_NAME)  # the ingress's lifespan shutdown drains (up to --drain-timeout)
        serve.shutdown()
    finally:
        ray.shutdown()

