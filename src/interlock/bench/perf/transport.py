"""Transport options for the unary Check: is the Python gRPC server the wall?

``python -m interlock.bench.perf.transport [--rounds 3] [--json F]`` measures, interleaved
in one run (every point once per round, the rounds' medians reported):

* ``echo_aio``: the grpc.aio echo (the transport floor of ``interlock bench perf``, 1 worker);
* ``echo_sync``: the same echo answers on a sync ``grpc.server`` with a ThreadPoolExecutor;
* ``check_aio``: Interlock's real Check on the product server (grpc.aio, 1 worker);
* ``check_sync``: the same engine behind a minimal sync-server servicer in a thread pool
  (:class:`SyncGuardServicer`, benchmark only: decode, ``Guard.check``, metrics, encode;
  no interceptors, no micro-batcher, no audit or tracing);
* ``echo_aio_2w`` / ``check_aio_2w``: the aio server with 2 worker processes (``--workers 2``).

Each at 1 call in flight (p50 latency) and 16 closed-loop clients (calls/s), with the server
processes' CPU per call from /proc. The load generator is :mod:`interlock.bench.perf.loadgen`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np

from interlock.bench.perf import scenario
from interlock.bench.perf.echo import SERVICE as ECHO
from interlock.bench.perf.echo import make_hook
from interlock.bench.perf.loadgen import LoadGenerator

GUARD = "interlock.v1.Guard"
#: The sync server's benchmark-only statistics service (engine CPU inside the serving process).
STATS = "interlock.bench.v1.TransportStats"
#: (name, server, service) of every measured series; the server names key ``_Servers.targets``.
SERIES = (
    ("echo_aio", "aio", ECHO),
    ("echo_sync", "sync", ECHO),
    ("check_aio", "aio", GUARD),
    ("check_sync", "sync", GUARD),
    ("echo_aio_2w", "aio2", ECHO),
    ("check_aio_2w", "aio2", GUARD),
)
#: The micro-batching of ``interlock bench perf``'s main setup (the aio servers use it).
BATCHING = {"max_batch": 64, "max_delay_ms": 2.0}


class SyncGuardServicer:
    """Check on a sync gRPC server: the work of ``GuardService.check`` without await (benchmark only).

    Raw-bytes handler: decode the CheckRequest, ``Guard.check`` one item, apply the no-operator
    escalation outcome, count metrics, encode the Decision. Bad input is answered with the status
    the product gives it (``status_for``); nothing is answered ALLOW unchecked.
    """

    def __init__(self, config_path: str) -> None:
        from interlock.config import load_config
        from interlock.engine import Guard
        from interlock.server.metrics import Metrics

        self.guard = Guard(load_config(config_path)).load()
        self.metrics = Metrics()
        #: Thread CPU spent inside ``Guard.check`` and calls since the last :meth:`stats` call.
        self.engine_cpu_ns = 0
        #: Thread CPU of the whole handler (decode, engine, metrics, encode).
        self.handler_cpu_ns = 0
        self.calls = 0

    def stats(self, request: bytes, context) -> bytes:
        """``engine_cpu_us_per_call`` since the last call, as JSON (then resets the counters)."""
        calls, cpu, handler = self.calls, self.engine_cpu_ns, self.handler_cpu_ns
        self.calls = self.engine_cpu_ns = self.handler_cpu_ns = 0
        per = max(1, calls) * 1e3
        return json.dumps(
            {"calls": calls, "engine_cpu_us_per_call": cpu / per, "handler_cpu_us_per_call": handler / per}
        ).encode()

    def check(self, request: bytes, context) -> bytes:
        from interlock.escalation import outcome
        from interlock.server.convert import decision_to_pb, request_to_input
        from interlock.server.errors import status_for
        from interlock.types import Verdict
        from interlock.v1 import interlock_pb2 as pb

        start, h0 = time.perf_counter(), time.thread_time_ns()
        guard = self.guard
        try:
            item = request_to_input(pb.CheckRequest.FromString(request))
            c0 = time.thread_time_ns()
            decisions = guard.check([item])
            self.engine_cpu_ns += time.thread_time_ns() - c0  # racy across threads; a benchmark figure
            self.calls += 1
        except Exception as e:  # fail closed: a status, never an unchecked ALLOW
            code, message = status_for(e)
            context.abort(code, message)
        for d in decisions:
            if d.verdict is Verdict.ESCALATE:
                outcome.no_operator_channel(d)
        labels = [guard.agent(d.agent_id).config.id for d in decisions]
        self.metrics.record(decisions, labels, time.perf_counter() - start)
        answer = decision_to_pb(decisions[0]).SerializeToString()
        self.handler_cpu_ns += time.thread_time_ns() - h0
        return answer


def _sync_server_main(config_path: str, decision: bytes, threads: int, ports, stop) -> None:
    """A spawned process: sync grpc.server with the echo's Check and the Guard's Check on one port."""
    import grpc

    servicer = SyncGuardServicer(config_path)

    def echo(request: bytes, context) -> bytes:
        return decision

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(ECHO, {"Check": grpc.unary_unary_rpc_method_handler(echo)}),
            grpc.method_handlers_generic_handler(
                GUARD, {"Check": grpc.unary_unary_rpc_method_handler(servicer.check)}
            ),
            grpc.method_handlers_generic_handler(
                STATS, {"Engine": grpc.unary_unary_rpc_method_handler(servicer.stats)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ports.put(port)
    stop.wait()
    server.stop(1).wait()


def _engine_stats(target: str) -> dict[str, float]:
    """Engine CPU per Check inside the sync server since the last call (and reset)."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{STATS}/Engine")
        answer = call(b"", timeout=10)
    return json.loads(answer)


def engine_in_process(scn: scenario.Scenario, seconds: float) -> float:
    """CPU microseconds of ``Guard.check`` on one request, in a hot loop in this process."""
    from interlock.config import load_config
    from interlock.engine import Guard

    guard = Guard(load_config(scn.config_path)).load()
    items = scn.inputs()
    for item in items[:32]:  # warm up
        guard.check([item])
    calls, c0, end = 0, time.thread_time_ns(), time.monotonic() + seconds
    while time.monotonic() < end:
        guard.check([items[calls % len(items)]])
        calls += 1
    cpu = time.thread_time_ns() - c0
    guard.unload()
    return cpu / max(1, calls) / 1e3


def _median(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def measure(
    rounds: int = 3,
    duration: float = 1.5,
    warmup: float = 0.5,
    concurrency: tuple[int, ...] = (1, 16),
    threads: int = 16,
    workdir: Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every series at every concurrency once per round (order rotated each round).

    Returns:
        ``{"settings", "machine", "points": [every raw point], "series": {name: {concurrency:
        medians}}, "ratios": {...}}``; see :func:`ratios` for the headline figures.
    """
    from interlock.bench.perf.run import _representative_decision
    from interlock.server.workers import start_workers

    tmp = tempfile.TemporaryDirectory(prefix="interlock-transport-") if workdir is None else None
    base = Path(tmp.name) if tmp is not None else workdir
    assert base is not None
    load_before = os.getloadavg()
    try:
        scn = scenario.build(base / "transport", BATCHING, seed=seed)
        unary = [r.SerializeToString() for r in scn.requests()]
        decision = _representative_decision(scn)
        engine_hot = [engine_in_process(scn, min(1.0, duration))]
        hook = make_hook(decision, float(np.mean([len(u) for u in unary])))
        ctx = mp.get_context("spawn")
        ports, stop = ctx.Queue(), ctx.Event()
        sync_proc = ctx.Process(
            target=_sync_server_main, args=(str(scn.config_path), decision, threads, ports, stop), daemon=True
        )
        sync_proc.start()
        points: list[dict[str, Any]] = []
        try:
            sync_port = ports.get(timeout=120)
            with (
                start_workers(str(scn.config_path), 1, "127.0.0.1", 0, None, hooks=[hook]) as one,
                start_workers(str(scn.config_path), 2, "127.0.0.1", 0, None, hooks=[hook]) as two,
                LoadGenerator(2) as gen,
            ):
                servers = {
                    "aio": (f"127.0.0.1:{one.port}", [p.pid for p in one.processes]),
                    "aio2": (f"127.0.0.1:{two.port}", [p.pid for p in two.processes]),
                    "sync": (f"127.0.0.1:{sync_port}", [sync_proc.pid]),
                }
                jobs = [(name, srv, svc, c) for c in concurrency for name, srv, svc in SERIES]
                total = rounds * len(jobs)
                for r in range(rounds):
                    shift = r % len(jobs)
                    for name, srv, svc, conc in jobs[shift:] + jobs[:shift]:
                        target, pids = servers[srv]
                        engine = name == "check_sync"
                        if engine:
                            _engine_stats(target)  # resets the counters
                        res = gen.run(target, svc, "Check", unary, conc, duration, warmup, server_pids=pids)
                        n = len(res.latencies_ns)
                        stats = _engine_stats(target) if engine else {}
                        engine_us = stats.get("engine_cpu_us_per_call", float("nan"))
                        handler_us = stats.get("handler_cpu_us_per_call", float("nan"))
                        points.append(
                            {
                                "series": name,
                                "round": r,
                                "concurrency": conc,
                                "calls": n,
                                "errors": res.errors,
                                "calls_per_second": res.calls_per_second,
                                "p50_us": res.percentile_us(50),
                                "p99_us": res.percentile_us(99),
                                "server_cpu_us_per_call": res.server_cpu_s / max(1, n) * 1e6,
                                "engine_cpu_us_per_call": engine_us,
                                "handler_cpu_us_per_call": handler_us,
                            }
                        )
                        if progress:
                            last = points[-1]
                            print(
                                f"[{len(points)}/{total}] {name} c={conc}: p50 {last['p50_us']:.0f} us,"
                                f" {res.calls_per_second:.0f}/s,"
                                f" cpu {last['server_cpu_us_per_call']:.0f} us/call",
                                file=sys.stderr,
                                flush=True,
                            )
            engine_hot.append(engine_in_process(scn, min(1.0, duration)))
        finally:
            stop.set()
            sync_proc.join(10)
            if sync_proc.is_alive():
                sync_proc.kill()
    finally:
        if tmp is not None:
            tmp.cleanup()
    series: dict[str, dict[int, dict[str, float]]] = {}
    for name, _, _ in SERIES:
        series[name] = {}
        for c in concurrency:
            pts = [p for p in points if p["series"] == name and p["concurrency"] == c]
            series[name][c] = {
                k: _median([p[k] for p in pts])
                for k in (
                    "p50_us",
                    "p99_us",
                    "calls_per_second",
                    "server_cpu_us_per_call",
                    "engine_cpu_us_per_call",
                    "handler_cpu_us_per_call",
                )
            }
    machine = {"cpus": scenario.cpu_count(), "loadavg_before": list(load_before), "loadavg_after": []}
    machine["loadavg_after"] = list(os.getloadavg())
    result: dict[str, Any] = {
        "benchmark": "interlock.bench.perf.transport",
        "settings": {
            "rounds": rounds,
            "duration_s": duration,
            "warmup_s": warmup,
            "concurrency": list(concurrency),
            "sync_threads": threads,
            "aio_batching": BATCHING,
        },
        "machine": machine,
        "points": points,
        "series": series,
        #: Guard.check of one request in a hot loop in the parent, before and after the points.
        "engine_in_process_cpu_us_per_call": engine_hot,
    }
    result["ratios"] = ratios(series, max(concurrency))
    return result


def ratios(series: dict[str, dict[int, dict[str, float]]], clients: int) -> dict[str, float]:
    """The issue's two targets for each Check option, against its own floor and the aio echo."""
    out: dict[str, float] = {}
    floors = {"check_aio": "echo_aio", "check_sync": "echo_sync", "check_aio_2w": "echo_aio_2w"}
    for check, floor in floors.items():
        for ref in dict.fromkeys((floor, "echo_aio")):
            out[f"{check}_p50_over_{ref}"] = series[check][1]["p50_us"] / series[ref][1]["p50_us"]
            out[f"{check}_{clients}_clients_throughput_over_{ref}"] = (
                series[check][clients]["calls_per_second"] / series[ref][clients]["calls_per_second"]
            )
    return out


def table(result: dict[str, Any]) -> str:
    """The medians as a markdown table (docs/benchmarks.md, "Transport options")."""
    conc = result["settings"]["concurrency"]
    lo, hi = min(conc), max(conc)
    lines = [
        f"| series | p50 at {lo} in flight (us) | server CPU/call at {lo} (us) | calls/s at {hi} clients "
        f"| server CPU/call at {hi} (us) | in the sync handler at {lo} / {hi}: engine, whole handler (us) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in result["series"].items():
        a, b = s[lo], s[hi]
        lines.append(
            f"| {name} | {a['p50_us']:.0f} | {a['server_cpu_us_per_call']:.0f} "
            f"| {b['calls_per_second']:,.0f} | {b['server_cpu_us_per_call']:.0f} | "
            + (
                f"{a['engine_cpu_us_per_call']:.0f}, {a['handler_cpu_us_per_call']:.0f} / "
                f"{b['engine_cpu_us_per_call']:.0f}, {b['handler_cpu_us_per_call']:.0f} |"
                if np.isfinite(a["engine_cpu_us_per_call"])
                else "- |"
            )
        )
    hot = ", ".join(f"{v:.0f}" for v in result["engine_in_process_cpu_us_per_call"])
    lines += ["", f"Guard.check of one request in a hot loop in process (before, after): {hot} us of CPU."]
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f}x |" for k, v in result["ratios"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m interlock.bench.perf.transport", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    parser.add_argument("--duration", type=float, default=1.5, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds run before measuring")
    parser.add_argument("--threads", type=int, default=16, help="sync server's thread pool size")
    parser.add_argument("--json", help="write every point and the medians to this file")
    args = parser.parse_args(argv)
    result = measure(args.rounds, args.duration, args.warmup, threads=args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return result


if __name__ == "__main__":
    main()
