"""Closed-loop load generator in separate processes.

Each *client* is one agent: its own gRPC connection (channel) and one call in
flight at a time; the next call starts when the answer arrives. ``concurrency``
clients are spread over ``processes`` OS processes (asyncio in each), so the
load generator is not limited by one interpreter. Requests are serialized once
up front and answers are kept as bytes (the first answer of each client is
parsed and checked), so the clients spend as little CPU as possible: they share
the machine's cores with the server.

Every client connects first; then every process measures the same window
(CLOCK_MONOTONIC is shared by all processes): calls that start inside the
``duration`` window after ``warmup`` are counted (throughput = counted calls /
duration) and their latencies kept.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

UNARY = ("Check", "CheckBatch", "CheckColumns")
STREAM = ("CheckStream",)


@dataclass
class LoadResult:
    """One measured point.

    Attributes:
        latencies_ns: ``[calls]`` int64 latency of every counted call.
        calls_per_second: Counted calls / window length.
        errors: Calls that failed (any status other than OK).
        server_cpu_s: CPU seconds the server used in the window (when ``server_pids`` were given).
    """

    latencies_ns: np.ndarray
    calls_per_second: float
    errors: int
    #: CPU seconds (user + system) the server processes used during the measured window.
    server_cpu_s: float = float("nan")

    def percentile_us(self, q: float) -> float:
        return float(np.percentile(self.latencies_ns, q) / 1e3) if len(self.latencies_ns) else float("nan")


async def _client(target, path, kind, payloads, offset, window, connected, check) -> tuple[list[int], int]:
    import grpc

    opts = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 256 << 20)]
    lat: list[int] = []
    errors = 0
    n = len(payloads)
    i = offset
    now = time.monotonic
    clock = time.perf_counter_ns
    async with grpc.aio.insecure_channel(target, options=opts) as channel:
        await channel.channel_ready()
        connected.release()
        t_start, t_end = await window
        # The two timed loops repeat each other on purpose: a shared helper would add a call per request.
        if kind == "stream":
            call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(path)()
            first = True
            while True:
                t0 = now()
                if t0 >= t_end:
                    break
                c0 = clock()
                await call.write(payloads[i % n])
                answer = await call.read()
                c1 = clock()
                if first:
                    check(answer)
                    first = False
                if t0 >= t_start:
                    lat.append(c1 - c0)
                i += 1
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass
        else:
            mc: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
            first = True
            while True:
                t0 = now()
                if t0 >= t_end:
                    break
                c0 = clock()
                try:
                    answer = await mc(payloads[i % n], timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    i += 1
                    continue
                c1 = clock()
                if first:
                    check(answer)
                    first = False
                if t0 >= t_start:
                    lat.append(c1 - c0)
                i += 1
    return lat, errors


def _check_answer(method: str):
    """A parser that raises unless ``answer`` is a well-formed answer of ``method``."""
    from interlock.v1 import interlock_pb2 as pb

    def check(answer: bytes) -> None:
        if method == "CheckBatch":
            msg = pb.CheckBatchResponse.FromString(answer)
            ok = len(msg.decisions) > 0 and all(d.verdict for d in msg.decisions)
        elif method == "CheckColumns":
            cols = pb.CheckColumnsResponse.FromString(answer)
            ok = len(cols.verdicts) > 0 and all(cols.verdicts)
        else:
            ok = pb.Decision.FromString(answer).verdict != 0
        if not ok:
            raise RuntimeError(f"{method} answered with a message without a verdict")

    return check


def process_cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of processes so far (Linux /proc; NaN elsewhere)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _run_job(job, ready, go, window) -> tuple[np.ndarray, int]:
    target, path, kind, method, payloads, clients, first_index = job

    async def run():
        loop = asyncio.get_running_loop()
        check = _check_answer(method)
        connected = asyncio.Semaphore(0)
        win: asyncio.Future = loop.create_future()
        tasks = [
            asyncio.ensure_future(
                _client(target, path, kind, payloads, (first_index + c) * 7919, win, connected, check)
            )
            for c in range(clients)
        ]
        for _ in range(clients):
            await connected.acquire()
        ready.put(1)
        await loop.run_in_executor(None, go.wait)
        win.set_result((window[0], window[1]))
        return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    return np.array([x for r in results for x in r[0]], dtype=np.int64), sum(r[1] for r in results)


def _process_main(jobs, ready, go, window, out) -> None:
    """A load generator process: runs jobs until it receives None."""
    while True:
        job = jobs.get()
        if job is None:
            return
        try:
            lat, errors = _run_job(job, ready, go, window)
            out.put(("ok", lat, errors))
        except BaseException as e:  # report to the parent instead of hanging it
            ready.put(1)
            out.put(("error", f"{type(e).__name__}: {e}", 0))


class LoadGenerator:
    """``processes`` client processes, started once and reused for every measured point.

    Example:
        >>> with LoadGenerator(2) as gen:                                   # doctest: +SKIP
        ...     res = gen.run("127.0.0.1:50051", "interlock.v1.Guard", "Check", payloads, 16, 4.0, 1.0)
    """

    def __init__(self, processes: int = 2) -> None:
        ctx = mp.get_context("spawn")
        self._ready, self._go, self._out = ctx.Queue(), ctx.Event(), ctx.Queue()
        self._window = ctx.Array("d", 2)
        self._jobs = [ctx.Queue() for _ in range(processes)]
        self._procs = [
            ctx.Process(
                target=_process_main, args=(q, self._ready, self._go, self._window, self._out), daemon=True
            )
            for q in self._jobs
        ]
        for p in self._procs:
            p.start()

    def run(
        self,
        target: str,
        service: str,
        method: str,
        payloads: list[bytes],
        concurrency: int,
        duration: float,
        warmup: float,
        startup_timeout: float = 60.0,
        server_pids: Sequence[int] = (),
    ) -> LoadResult:
        """Drive ``/{service}/{method}`` with ``concurrency`` closed-loop clients; returns the measured point.

        Args:
            target: ``host:port``.
            service: ``interlock.v1.Guard`` or the echo service.
            method: ``Check``, ``CheckBatch`` or ``CheckStream``.
            payloads: Serialized requests, cycled (each client starts at a different one).
            concurrency: Clients (connections, one call in flight each), spread over the processes.
            duration: Measured seconds.
            warmup: Seconds run before measuring.
            startup_timeout: Seconds allowed for every client to connect.
            server_pids: Server processes whose CPU time is read at the window's start and end.
        """
        kind = "stream" if method in STREAM else "unary"
        n = max(1, min(len(self._procs), concurrency))
        per = [concurrency // n + (1 if i < concurrency % n else 0) for i in range(n)]
        self._go.clear()
        first = 0
        for q, clients in zip(self._jobs, per, strict=False):
            q.put((target, f"/{service}/{method}", kind, method, payloads, clients, first))
            first += clients
        for _ in range(n):  # every client connected
            self._ready.get(timeout=startup_timeout)
        t_start = time.monotonic() + warmup
        self._window[0], self._window[1] = t_start, t_start + duration
        self._go.set()
        cpu = float("nan")
        if server_pids:
            time.sleep(max(0.0, t_start - time.monotonic()))
            c0 = process_cpu_seconds(server_pids)
            time.sleep(max(0.0, t_start + duration - time.monotonic()))
            cpu = process_cpu_seconds(server_pids) - c0
        lats, errors, failure = [], 0, None
        for _ in range(n):
            status, payload, errs = self._out.get(timeout=warmup + duration + 120)
            if status != "ok":
                failure = payload
                continue
            lats.append(payload)
            errors += errs
        if failure:
            raise RuntimeError(f"load generator process failed: {failure}")
        lat = np.concatenate(lats)
        return LoadResult(lat, len(lat) / duration, errors, cpu)

    def close(self) -> None:
        for q in self._jobs:
            q.put(None)
        for p in self._procs:
            p.join(10)
            if p.is_alive():
                p.kill()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_load(
    target: str,
    service: str,
    method: str,
    payloads: list[bytes],
    concurrency: int,
    duration: float,
    warmup: float,
    processes: int = 2,
) -> LoadResult:
    """One point with a fresh :class:`LoadGenerator` (see :meth:`LoadGenerator.run`)."""
    with LoadGenerator(max(1, min(processes, concurrency))) as gen:
        return gen.run(target, service, method, payloads, concurrency, duration, warmup)
