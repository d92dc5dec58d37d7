"""Run an Interlock server on a background thread (for demos, tests and benchmarks)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from interlock.config import LoadedConfig
from interlock.server.app import InterlockServer
from interlock.server.tracing import DecisionTracer


@contextmanager
def background_server(
    loaded: LoadedConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics_port: int | None = None,
    tracer: DecisionTracer | None = None,
) -> Iterator[InterlockServer]:
    """Start a server on its own event loop thread; yields it once it is SERVING.

    ``tracer``: spans per decision (default: from ``OTEL_TRACES_EXPORTER``, off when unset).

    Example:
        >>> with background_server(load_config("examples/cartpole/interlock.yaml")) as srv:  # doctest: +SKIP
        ...     client = GuardClient(f"127.0.0.1:{srv.port}", agent_id="cartpole")
    """
    server = InterlockServer(loaded, host=host, port=port, metrics_port=metrics_port, tracer=tracer)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as e:  # report start-up errors to the caller's thread
            failure.append(e)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="interlock-server", daemon=True)
    thread.start()
    started.wait()
    if failure:
        loop.close()
        raise failure[0]
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace=0.5), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
