"""What OpenTelemetry tracing costs on the request path: off, sampled at 1 %, always on.

Measured in process on ``GuardService.check`` (engine, stage times, span building; no
gRPC, no audit, so that neither the transport nor disk I/O hides the difference), for
a single Check and a CheckBatch of 64, in interleaved rounds (the machine is shared:
each mode sees the same minutes) with the median round kept. The figure is the process's
CPU time per decision (the export thread's included; each point ends with a flush of the
spans it made), which other load on the machine disturbs less than wall-clock time. Modes:

* ``off``: no tracer (what every server without ``OTEL_TRACES_EXPORTER`` runs);
* ``sampled_1pct``: ``parentbased_traceidratio`` at 0.01 (requests carry no traceparent,
  so 1 % of decisions start a sampled trace);
* ``always_on``: every decision traced, spans handed to the SDK's ``BatchSpanProcessor``
  (its queue and export thread are real; queue raised to 65,536 so no span is dropped) with
  an exporter that discards them, so the
  figure is Interlock's and the SDK's cost, not the I/O of an exporter;
* ``always_on_console``: the same with the console exporter writing JSON to /dev/null
  (an upper bound: serialising every span competes for the interpreter).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

from interlock.bench.perf.scenario import Scenario

MODES = ("off", "sampled_1pct", "always_on", "always_on_console")
BATCHES = (1, 64)


def _tracer(mode: str):
    """A DecisionTracer for ``mode`` (None for off), and what to close after."""
    if mode == "off":
        return None, None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBasedTraceIdRatio

    from interlock.server.tracing import DecisionTracer

    class Discard(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    sampler = ParentBasedTraceIdRatio(0.01) if mode == "sampled_1pct" else ALWAYS_ON
    provider = TracerProvider(sampler=sampler)
    devnull = None
    if mode == "always_on_console":
        devnull = open(os.devnull, "w")  # noqa: SIM115 (closed after the run)
        exporter: SpanExporter = ConsoleSpanExporter(out=devnull)
    else:
        exporter = Discard()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 16))
    return DecisionTracer(provider), devnull


def tracing_cost(scn: Scenario, seconds_per_point: float, rounds: int) -> dict[str, Any]:
    """Microseconds per decision of ``GuardService.check`` per mode and batch, and the ratios to off."""
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        return {"skipped": "opentelemetry-sdk is not installed (pip install 'interlock[otel]')"}
    from interlock.config import load_config
    from interlock.engine import Guard
    from interlock.server.service import GuardService

    guard = Guard(load_config(scn.config_path)).load()
    inputs = scn.inputs()
    services, closers = {}, []
    for mode in MODES:
        tracer, devnull = _tracer(mode)
        services[mode] = GuardService(guard, tracer=tracer)
        closers.append((tracer, devnull))

    async def point(service: GuardService, batch: int) -> float:
        """CPU seconds per decision over at least ``seconds_per_point`` of wall-clock time."""
        calls, k = 0, 0
        start, cpu = time.perf_counter(), time.process_time()
        while True:
            for _ in range(16):
                items = [inputs[(k + i) % len(inputs)] for i in range(batch)]
                k += batch
                await service.check(items, indexed=batch > 1)
                calls += 1
            if time.perf_counter() - start >= seconds_per_point:
                if service.tracer is not None:
                    service.tracer.provider.force_flush()  # its export work counts to it
                return (time.process_time() - cpu) / (calls * batch)

    async def measure() -> dict[str, dict[int, list[float]]]:
        out: dict[str, dict[int, list[float]]] = {m: {b: [] for b in BATCHES} for m in MODES}
        for b in BATCHES:
            for m in MODES:  # warm-up
                await point(services[m], b)
            for _ in range(rounds):
                for m in MODES:
                    out[m][b].append(await point(services[m], b))
        return out

    try:
        samples = asyncio.run(measure())
    finally:
        for tracer, devnull in closers:
            if tracer is not None:
                tracer.shutdown()
            if devnull is not None:
                devnull.close()
        guard.unload()
    result: dict[str, Any] = {"rounds": rounds, "seconds_per_point": seconds_per_point, "points": []}
    for b in BATCHES:
        off = statistics.median(samples["off"][b])
        for m in MODES:
            us = statistics.median(samples[m][b]) * 1e6
            result["points"].append(
                {"mode": m, "batch": b, "cpu_us_per_decision": us, "ratio_to_off": us / (off * 1e6)}
            )
    return result
