"""``s4d-serve``: an HTTP service that turns uploaded videos into mesh sequences.

Loads the model once, keeps every job in a durable queue (SQLite in --data-dir) and runs them one
at a time per model instance (--workers). Submit with ``curl -F video=@clip.mp4``, poll the job,
download its files; the API is described at ``/docs``. A restart on the same --data-dir (after a
crash, ``kill -9`` or SIGTERM) loses no accepted job. SIGTERM drains: no new jobs, the running one
finishes (up to --drain-timeout) or goes back to the queue.

Security: a bearer token (--token or $S4D_SERVE_TOKEN) guards /v1 and /metrics. Without a token the
server only binds a loopback address, unless --allow-no-token says the network is trusted.

Exit codes: 0 after a clean shutdown, 2 for bad options, a data directory that is not ours, or a
model that does not load.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from . import run, usage_error

app = typer.Typer(add_completion=False, rich_markup_mode=None)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@app.command(help=__doc__)
def serve(
    data_dir: str = typer.Option(..., "--data-dir", "-d", help="Where jobs, uploads and results live (created if "
                                 "missing; an existing one must be empty or an s4d-serve data directory)."),
    model: str = typer.Option("default", "--model", "-m", help="As s4d-convert --model: 'default' (the embedded "
                              "demo), 'tiny-random', a checkpoint, an s4d-export onnx or engine directory."),
    backend: str = typer.Option("auto", help="auto, torch, onnxruntime or tensorrt (as s4d-convert)."),
    device: Optional[str] = typer.Option(None, help="Device, e.g. cpu or cuda:0 (default: cuda if available)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; a non-loopback address needs --token (or "
                             "--allow-no-token)."),
    port: int = typer.Option(8000, help="TCP port."),
    token: Optional[str] = typer.Option(None, envvar="S4D_SERVE_TOKEN", help="Bearer token clients must send "
                                        "(Authorization: Bearer TOKEN) [env: S4D_SERVE_TOKEN]."),
    allow_no_token: bool = typer.Option(False, "--allow-no-token", help="Bind a non-loopback address without a "
                                        "token (only on a network you trust, e.g. behind an authenticating proxy)."),
    max_queue: int = typer.Option(100, "--max-queue", help="Most jobs queued or running; more get 429 with "
                                  "Retry-After."),
    max_upload_mb: float = typer.Option(512.0, "--max-upload-mb", help="Largest accepted video, in MB (2^20 "
                                        "bytes); larger uploads get 413."),
    workers: int = typer.Option(1, "--workers", help="Model instances, each running one job at a time (more only "
                                "where memory holds several)."),
    keep_days: float = typer.Option(7.0, "--keep-days", help="Finished jobs (and their results) are deleted this "
                                    "many days after they ended."),
    max_attempts: int = typer.Option(2, "--max-attempts", help="Times a job may be started; a job that was "
                                     "running when the server died is re-run until then, then failed."),
    drain_timeout: float = typer.Option(30.0, "--drain-timeout", help="On SIGTERM: seconds a running job may take "
                                        "to finish before it goes back to the queue."),
    job_timeout: Optional[float] = typer.Option(None, "--job-timeout", help="Seconds one job may take; past it "
                                                "the job fails with 'timed out'."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="CPU threads for torch and the C++ "
                                          "kernels (per process)."),
    ray_address: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]", help="Serve on a Ray cluster "
                                              "with Ray Serve ([serve-ray] extra): --ray alone uses $RAY_ADDRESS or "
                                              "starts a local cluster; --ray=ADDRESS joins that one."),
    replicas: int = typer.Option(1, "--replicas", help="With --ray: model replicas (each runs one job at a time)."),
    gpus_per_replica: float = typer.Option(0.0, "--gpus-per-replica", help="With --ray: GPUs per replica "
                                           "(fractions pack several on one GPU)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn's log level: critical, error, warning, "
                                  "info, debug."),
) -> None:
    from ..generation.settings import BACKENDS

    # 1. options, all checked before anything loads
    if backend not in BACKENDS:
        usage_error(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not 0 <= port <= 65535:
        usage_error(f"--port must be between 0 and 65535, got {port}")
    if token is not None and not token.strip():
        usage_error("--token (or $S4D_SERVE_TOKEN) is empty")
    if token is not None and not all(33 <= ord(c) <= 126 for c in token):
        usage_error("--token must be printable ASCII without spaces (what an HTTP header carries unchanged)")
    if token is None and not _is_loopback(host) and not allow_no_token:
        usage_error(f"refusing to serve on {host} without a token: anyone who reaches it could submit jobs; pass "
                    "--token (or set S4D_SERVE_TOKEN), bind 127.0.0.1, or say --allow-no-token")
    for option, value, low in (("--max-queue", max_queue, 1), ("--workers", workers, 1),
                               ("--max-attempts", max_attempts, 1), ("--replicas", replicas, 1)):
        if value < low:
            usage_error(f"{option} must be >= {low}, got {value}")
    for option, value in (("--max-upload-mb", max_upload_mb), ("--keep-days", keep_days),
                          ("--job-timeout", job_timeout)):
        if value is not None and not 0 < value < float("inf"):
            usage_error(f"{option} must be a positive number, got {value}")
    if not 0 <= drain_timeout < float("inf"):
        usage_error(f"--drain-timeout must be >= 0 seconds, got {drain_timeout}")
    if not 0 <= gpus_per_replica < float("inf"):
        usage_error(f"--gpus-per-replica must be >= 0, got {gpus_per_replica}")
    if threads is not None and not 1 <= threads <= 1024:
        usage_error(f"--threads must be between 1 and 1024, got {threads}")
    if ray_address is None and (replicas, gpus_per_replica) != (1, 0.0):
        usage_error("--replicas and --gpus-per-replica need --ray")
    if ray_address is not None and workers != 1:
        usage_error("--workers is for one machine; with --ray use --replicas")
    if model not in ("default", "tiny-random") and "://" not in model and not os.path.exists(model):
        usage_error(f"--model {model}: no such file or directory (or 'default', 'tiny-random')")

    from ..core.extras import require
    from ..serve.app import ServeConfig, Server, create_app
    from ..serve.jobs import DataDirError

    uvicorn = require("uvicorn", "s4d-serve", "serve")
    data_dir = str(Path(data_dir).expanduser().absolute())  # the Ray ingress runs in another working directory
    config = ServeConfig(data_dir=data_dir, model=model, backend=backend, device=device, host=host, port=port,
                         token=token, max_queue=max_queue, max_upload_mb=max_upload_mb, workers=workers,
                         keep_days=keep_days, max_attempts=max_attempts, drain_timeout=drain_timeout,
                         job_timeout=job_timeout, threads=threads)

    if ray_address is not None:
        from ..serve.ray_serve import RayServeError, serve_on_ray

        try:
            serve_on_ray(config, ray_address, replicas, gpus_per_replica)
        except (RayServeError, DataDirError) as exc:
            usage_error(str(exc))
        return

    # 2. the server: the model loads in the background while /healthz already answers
    from ..batch.clips import load_generator
    from ..serve.jobs import LocalWorkers

    def load():
        return load_generator(model, backend, device, threads)

    _check_port_free(host, port)  # before the data directory is taken and its jobs recovered
    try:
        server = Server(config, lambda s: LocalWorkers(s.store, s.data, load, workers, job_timeout,
                                                       on_finished=s.finished))
    except DataDirError as exc:
        usage_error(str(exc))
    uv = _server_class(uvicorn, server.begin_drain)(uvicorn.Config(create_app(server), host=host, port=port, log_level=log_level,
                                       timeout_graceful_shutdown=10, access_log=log_level == "debug"))
    failed = threading.Event()

    def watch_model() -> None:  # a model that does not load ends the server (exit 2): no silent 503 forever
        while not server.workers.ready and not uv.should_exit:
            if server.workers.load_error:
                typer.echo(f"error: cannot load model {model!r}: {server.workers.load_error}", err=True)
                failed.set()
                uv.should_exit = True
                return
            threading.Event().wait(0.2)
        if server.workers.ready:
            typer.echo(f"s4d-serve: model {model!r} loaded ({workers} worker{'s' if workers > 1 else ''}); "
                       f"data in {server.data.root}", err=True)

    threading.Thread(target=watch_model, daemon=True).start()
    uv.run()
    if failed.is_set():
        raise typer.Exit(code=2)


def _check_port_free(host: str, port: int) -> None:
    import socket

    if port == 0:
        return
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host.strip("[]"), port))
    except OSError as exc:
        usage_error(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def _server_class(uvicorn, on_signal):
    """uvicorn's Server, except that a SIGTERM / SIGINT starts the drain at once (``on_signal``: no
    job starts any more while uvicorn finishes open requests) and that after the drain the process
    exits 0 (uvicorn re-raises the signal, which ends the process by it: 143 to a supervisor)."""
    import contextlib
    import signal

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            on_signal()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return DrainingServer


def main() -> None:
    from .convert import optional_value_args

    sys.argv[1:] = optional_value_args(sys.argv[1:])
    run(app)
