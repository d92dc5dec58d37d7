"""Assemble and run the Interlock gRPC server: Guard, health, reflection, metrics.

Example:
    >>> cfg = "examples/cartpole/interlock.yaml"
    >>> server = InterlockServer.from_config_file(cfg, port=0)  # doctest: +SKIP
    >>> await server.start()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # the public name of the asyncio servicer

from interlock.audit import AuditLog
from interlock.config import LoadedConfig, load_config
from interlock.engine import Guard
from interlock.server import reflection, tracing
from interlock.server.auth import AuthInterceptor, Credentials
from interlock.server.guard_servicer import GuardServicer, add_guard_service
from interlock.server.limits import ServerLimits
from interlock.server.metrics import Metrics
from interlock.server.operators import OperatorSide
from interlock.server.reload import Reloader
from interlock.server.service import GuardService
from interlock.server.tls import ReloadableTls
from interlock.v1 import interlock_pb2 as pb

log = logging.getLogger(__name__)

GUARD_SERVICE = pb.DESCRIPTOR.services_by_name["Guard"].full_name
#: Slack above max_message_bytes at the transport, so that Interlock (not gRPC core)
#: answers most oversized requests, with a clear message and a metric.
_TRANSPORT_SLACK = 2


def metrics_note(port: int | None) -> str:
    """``metrics on :PORT``, or ``metrics off`` when ``server.metrics_port`` is null."""
    return "metrics off (server.metrics_port is null)" if port is None else f"metrics on :{port}"


class InterlockServer:
    """One gRPC server: the Guard service plus ``grpc.health.v1`` and reflection on the same port.

    Health reports SERVING for "" and ``interlock.v1.Guard`` only after the
    config and every model have loaded; ``stop()`` enters graceful shutdown first.
    """

    def __init__(
        self,
        loaded: LoadedConfig,
        host: str | None = None,
        port: int | None = None,
        metrics_port: int | None = -1,
        grace_seconds: float | None = None,
        console_port: int | None = -1,
        reuse_port: bool = False,
        hooks: Sequence[Callable[[InterlockServer], None]] = (),
        tracer: tracing.DecisionTracer | None = None,
    ) -> None:
        cfg = loaded.config.server
        self.loaded = loaded
        self.host = host if host is not None else cfg.host
        self.requested_port = port if port is not None else cfg.port
        self.metrics_port = cfg.metrics_port if metrics_port == -1 else metrics_port
        self.grace_seconds = cfg.grace_seconds if grace_seconds is None else grace_seconds
        #: SO_REUSEPORT, so several worker processes share the port (``interlock serve --workers``).
        self.reuse_port = reuse_port
        #: Called with this server after the services are added and before binding (extra services...).
        self.hooks = tuple(hooks)
        self.metrics = Metrics()
        #: Spans per decision: given (tests), else from OTEL_TRACES_EXPORTER at start (None: off).
        self.tracer = tracer
        self.audit: AuditLog | None = None
        self.tls: ReloadableTls | None = None
        self.reloader: Reloader | None = None
        self._watch: asyncio.Task | None = None
        self.health = health_aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.service: GuardService | None = None
        self.port = 0
        self.bound_metrics_port: int | None = None
        # Raises ConfigError on a bad token file or token, before anything binds.
        self.credentials = Credentials.from_config(loaded.config.auth, loaded)
        self.escalation = OperatorSide(loaded, self.metrics, self.credentials)  # escalations, console
        self.requested_console_port = cfg.console_port if console_port == -1 else console_port
        self.console_port: int | None = None

    @classmethod
    def from_config_file(cls, path: str, **kwargs) -> InterlockServer:
        return cls(load_config(path), **kwargs)

    async def start(self) -> int:
        """Load everything, bind, start serving; returns the bound port."""
        cfg = self.loaded.config.server
        for name in ("", GUARD_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.tracer is None:
            self.tracer = tracing.from_env()  # ConfigError: asked for but not installed
        guard = Guard(self.loaded).load()
        if cfg.audit is not None:
            self.audit = AuditLog.from_config(cfg.audit, self.loaded.base_dir, self.metrics)
            await asyncio.to_thread(self.audit.start)
        self.service = GuardService(
            guard, self.metrics, audit=self.audit, batching=cfg.batching, tracer=self.tracer
        )
        limit = cfg.max_message_bytes * _TRANSPORT_SLACK
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", int(self.reuse_port)),
            ],
            interceptors=[
                ServerLimits(cfg.max_concurrent_rpcs, self.metrics),  # limits, deadlines, in-flight gauge
                AuthInterceptor(self.credentials, on_reject=self.metrics.reject),  # tokens, mTLS names
            ],
        )
        add_guard_service(GuardServicer(self.service, cfg.max_message_bytes, cfg.max_batch), self.server)
        await self.escalation.attach(self.server, self.service)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                GUARD_SERVICE,
                *self.escalation.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            ),
            self.server,
        )
        for hook in self.hooks:
            hook(self)
        address = f"{self.host}:{self.requested_port}"
        if cfg.tls is not None:
            self.tls = ReloadableTls(cfg.tls, self.loaded.base_dir)
            self.port = self.server.add_secure_port(address, self.tls.credentials())
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind {self.host}:{self.requested_port}: is another server using it?")
        await self.server.start()
        if self.metrics_port is not None:
            self.bound_metrics_port = self.metrics.serve_http(self.metrics_port, addr=self.host)
        if Path(self.loaded.source).is_file():
            self.reloader = Reloader(self, self.loaded.source)
            if cfg.reload.watch:
                self._watch = asyncio.create_task(self.reloader.watch(cfg.reload.poll_seconds))
        self.console_port = await self.escalation.start_console(self.host, self.requested_console_port)
        for name in ("", GUARD_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "interlock serving config %s on %s:%d (%s)",
            self.loaded.version,
            self.host,
            self.port,
            metrics_note(self.bound_metrics_port),
        )
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, (drain), in-flight calls finish within the grace period, audit flushed."""
        await self.health.enter_graceful_shutdown()
        if self._watch is not None:
            self._watch.cancel()
        self.escalation.stop_watchers()
        if self.server is not None:
            await asyncio.sleep(self.loaded.config.server.drain_seconds if grace is None else 0)
            await self.server.stop(self.grace_seconds if grace is None else grace)
        if self.audit is not None:
            await asyncio.to_thread(self.audit.close)
        await self.escalation.close()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # export the spans still queued
        self.metrics.close()
        if self.service is not None:
            self.service.guard.unload()

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()


async def serve(
    config_path: str,
    host: str | None = None,
    port: int | None = None,
    metrics_port: int | None = -1,
    ready: asyncio.Event | None = None,
    console_port: int | None = -1,
) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    server = InterlockServer.from_config_file(
        config_path, host=host, port=port, metrics_port=metrics_port, console_port=console_port
    )
    await server.start()
    print(
        f"interlock: serving {config_path} (config {server.loaded.version}) on {server.host}:{server.port}; "
        f"{metrics_note(server.bound_metrics_port)}"
        + (f"; console on http://{server.host}:{server.console_port}/" if server.console_port else ""),
        flush=True,
    )
    if ready is not None:
        ready.set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if server.reloader is not None:
        reload, pending = server.reloader.reload, set()

        def on_sighup() -> None:
            task = asyncio.ensure_future(reload("SIGHUP"))
            pending.add(task)  # keep a reference until it is done
            task.add_done_callback(pending.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stop.wait()
    print("interlock: shutting down", flush=True)
    await server.stop()
