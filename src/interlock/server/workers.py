"""``interlock serve --workers N``: N server processes sharing one port (SO_REUSEPORT).

One Python process serves about one core of gRPC (the interpreter lock), so on a
machine with several cores Interlock runs several worker processes, as grpc's own
multiprocessing example does: the parent reserves the port with SO_REUSEPORT,
each worker binds the same port with ``grpc.so_reuseport=1``, and the kernel
spreads incoming connections over the workers. A client's channel is one
connection, so it sticks to one worker; many clients spread out.

Metrics use prometheus_client's multiprocess mode: every worker writes its
counters and histograms to files in a private temporary directory
(``PROMETHEUS_MULTIPROC_DIR``) and the parent serves ``/metrics`` on
``server.metrics_port`` with the sum over workers, so Prometheus scrapes one
target as with a single process. The directory is removed at shutdown.

Each worker loads the config and its models itself (models are small; memory
grows by one copy per worker). The workers share the escalation store and the
audit log as replicas do (docs/operations.md): worker 0 alone serves the
operator console, and it sees every worker's escalations. An answer given through
one worker wakes a Check blocked in another within about 20 ms through the store's
change feed (:mod:`interlock.escalation.sqlite` polls ``PRAGMA data_version``;
PostgreSQL uses LISTEN/NOTIFY).
Each worker reloads the config itself when the file changes.

If a worker dies, the parent stops the others and exits non-zero, so a
supervisor (systemd, Kubernetes) restarts the whole group.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: A picklable ``hook(server)`` run in every worker before it binds (see InterlockServer.hooks).
Hook = Callable[[Any], None]


@contextmanager
def reserve_port(host: str, port: int):
    """Bind (not listen) a SO_REUSEPORT socket on ``host:port``; yields the port (a free one for 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot reserve {host}:{port} for the workers: {e.strerror or e}") from None
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _worker_main(
    config_path: str,
    host: str,
    port: int,
    index: int,
    hooks: Sequence[Hook],
    queue,
    verbose: bool,
    console_port: int | None = None,
) -> None:
    """Body of one worker process: serve until SIGTERM/SIGINT."""
    import asyncio

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format=f"%(asctime)s %(levelname)s worker{index} %(name)s: %(message)s",
    )
    if not verbose:
        logging.getLogger("interlock").setLevel(logging.INFO)  # as `interlock serve`: start, reloads

    async def run() -> None:
        from interlock.server.app import InterlockServer

        server = InterlockServer.from_config_file(
            config_path,
            host=host,
            port=port,
            metrics_port=None,
            console_port=console_port,
            reuse_port=True,
            hooks=hooks,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
        except BaseException as e:
            queue.put(("error", index, f"{type(e).__name__}: {e}"))
            return
        queue.put(("ready", index, server.console_port))
        await stop.wait()
        await server.stop()

    asyncio.run(run())


@dataclass
class WorkerGroup:
    """A running group of worker processes (see :func:`start_workers`)."""

    host: str
    port: int
    processes: list[Any]
    metrics_dir: str
    metrics_port: int | None = None
    console_port: int | None = None
    _http: Any = None
    _reserved: Any = None
    _closed: bool = field(default=False, repr=False)

    @property
    def alive(self) -> bool:
        return all(p.is_alive() for p in self.processes)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every worker (graceful), kill what is left after ``timeout``, clean up."""
        if self._closed:
            return
        self._closed = True
        for p in self.processes:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in self.processes:
            if p.pid is None:  # never started
                continue
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.warning("worker %s did not stop in %.0f s; killing it", p.pid, timeout)
                p.kill()
                p.join(5)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._reserved is not None:
            self._reserved.__exit__(None, None, None)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_workers(
    config_path: str,
    workers: int,
    host: str | None = None,
    port: int | None = None,
    metrics_port: int | None = -1,
    hooks: Sequence[Hook] = (),
    verbose: bool = False,
    timeout: float = 60.0,
    console_port: int | None = None,
) -> WorkerGroup:
    """Start ``workers`` server processes on one port; returns once all are SERVING.

    Args:
        config_path: The Interlock YAML config (each worker loads it).
        workers: Number of processes (>= 1).
        host, port, metrics_port: As ``interlock serve``; ``None``/-1 take the config's values.
            Port 0 picks one free port shared by all workers.
        hooks: Top-level functions ``hook(server)`` each worker runs before binding.
        console_port: The operator console's port, served by worker 0 only (-1: the config's
            ``server.console_port``; None: no console).
        timeout: Seconds to wait for every worker to load its models.

    Raises:
        ConfigError: the config is invalid (checked in the parent first).
        RuntimeError: a worker failed to start (the message says which and why).
    """
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    from interlock.config import load_config

    if workers < 1:
        raise ValueError("workers must be at least 1")
    from interlock.server.auth import Credentials

    loaded = load_config(config_path)
    Credentials.from_config(loaded.config.auth, loaded)  # fail fast on a bad config or token, in the parent
    cfg = loaded.config.server
    host = host if host is not None else cfg.host
    port = port if port is not None else cfg.port
    metrics_port = cfg.metrics_port if metrics_port == -1 else metrics_port
    reserved = reserve_port(host, port)
    bound = reserved.__enter__()
    metrics_dir = tempfile.mkdtemp(prefix="interlock-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the spawned workers
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(
                config_path,
                host,
                bound,
                i,
                tuple(hooks),
                queue,
                verbose,
                console_port if i == 0 else None,
            ),
            name=f"interlock-worker-{i}",
            daemon=True,
        )
        for i in range(workers)
    ]
    group = WorkerGroup(host, bound, procs, metrics_dir, _reserved=reserved)
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        ready = 0
        while ready < workers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"only {ready} of {workers} workers were serving after {timeout:.0f} s")
            try:
                kind, index, detail = queue.get(timeout=min(remaining, 0.5))
            except Exception:  # queue.Empty
                dead = [p for p in procs if p.exitcode is not None]
                if dead:
                    raise RuntimeError(f"worker {dead[0].name} exited with code {dead[0].exitcode}") from None
                continue
            if kind == "error":
                raise RuntimeError(f"worker {index} failed to start: {detail}")
            if index == 0:
                group.console_port = detail
            ready += 1
        if metrics_port is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=metrics_dir)
            http, _ = start_http_server(metrics_port, addr=host, registry=registry)
            group._http = http
            group.metrics_port = http.server_address[1]
    except BaseException:
        group.stop(timeout=5)
        raise
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return group


def serve_workers(
    config_path: str,
    workers: int,
    host: str | None = None,
    port: int | None = None,
    metrics_port: int | None = -1,
    verbose: bool = False,
    console_port: int | None = -1,
) -> int:
    """Run a worker group until SIGTERM/SIGINT (or a worker dies); returns the exit code."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    group = start_workers(
        config_path, workers, host, port, metrics_port, verbose=verbose, console_port=console_port
    )
    pids = ", ".join(str(p.pid) for p in group.processes)
    print(
        f"interlock: serving {config_path} with {workers} workers (pids {pids}) "
        f"on {group.host}:{group.port}; "
        + (
            "metrics off (server.metrics_port is null)"
            if group.metrics_port is None
            else f"metrics (all workers) on :{group.metrics_port}"
        )
        + (
            f"; console (worker 0) on http://{group.host}:{group.console_port}/" if group.console_port else ""
        ),
        flush=True,
    )
    code = 0
    while not stop.wait(0.5):
        if not group.alive:
            dead = next(p for p in group.processes if not p.is_alive())
            print(f"interlock: worker pid {dead.pid} exited (code {dead.exitcode}); stopping", flush=True)
            code = 1
            break
    print("interlock: shutting down", flush=True)
    group.stop()
    return code
