"""``interlock bench perf``: latency and throughput of the Guard service against its two floors.

One run measures, on the same machine and in the same minutes:

* the **compute floor**: the bare fused ensemble call in-process, per batch size;
* the **transport floor**: an echo service on the same grpc.aio server, with
  messages of the same sizes as Check / CheckStream / CheckBatch;
* the Guard's Check (unary), CheckStream and CheckBatch under closed-loop load
  from separate processes at several concurrency levels, for several server
  setups (worker processes, micro-batching on or off);
* what OpenTelemetry tracing costs on the request path: off, sampled at 1 %, always on
  (``bench/perf/tracing.py``; skipped without ``interlock[otel]``).

and reports ratios to the floors next to the absolute figures. See docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from interlock.bench.perf import floors, scenario, tracing, unary
from interlock.bench.perf.echo import SERVICE as ECHO
from interlock.bench.perf.echo import make_hook
from interlock.bench.perf.loadgen import LoadGenerator

GUARD = "interlock.v1.Guard"

#: The issue's targets (docs/benchmarks.md states what was reached).
TARGETS = {
    "check_p50_over_transport_floor": ("<=", 1.5),
    "check_throughput_16_clients_over_transport_floor": (">=", 0.7),
    "columns_throughput_over_compute_floor": (">=", 0.5),
    "columns_over_batch_throughput": (">=", 10.0),
    "engine_batch1_over_onnx": ("<=", 2.0),
}
#: The Check p50 target measured on the operator's own config (``--config``), when one is given.
CONFIG_TARGET = ("check_p50_over_transport_floor_config", ("<=", 1.5))


@dataclass(frozen=True)
class Setup:
    """One server configuration under test."""

    name: str
    workers: int
    batching: dict[str, float] | None = None
    #: Which methods to measure on it ("check" only for comparison setups).
    full: bool = False

    def label(self) -> str:
        b = self.batching
        batching = f"batching {b['max_batch']:g}/{b['max_delay_ms']:g} ms" if b else "no batching"
        return f"{self.workers} worker{'s' if self.workers > 1 else ''}, {batching}"


@dataclass
class Plan:
    concurrency: list[int]
    batch_sizes: list[int]
    batch_concurrency: list[int]
    duration: float
    warmup: float
    floor_seconds: float
    setups: list[Setup]
    client_processes: int = 2
    #: Tracing cost: seconds per point and interleaved rounds (bench/perf/tracing.py).
    tracing_seconds: float = 0.5
    tracing_rounds: int = 5
    extra: dict[str, Any] = field(default_factory=dict)


def plans(cpus: int) -> dict[str, Plan]:
    workers = max(1, cpus)
    batching = {"max_batch": 64, "max_delay_ms": 2.0}
    main = Setup("main", workers, batching, full=True)
    return {
        "full": Plan(
            concurrency=[1, 4, 16, 64],
            batch_sizes=[1, 16, 64, 256, 1024],
            batch_concurrency=[1, workers],
            duration=4.0,
            warmup=1.0,
            floor_seconds=0.3,
            setups=[
                main,
                Setup("one_worker", 1, None),
                Setup("workers_unbatched", workers, None),
                Setup("one_worker_batched", 1, batching),
            ],
        ),
        "quick": Plan(
            concurrency=[1, 16],
            batch_sizes=[16, 256],
            batch_concurrency=[1],
            duration=0.4,
            warmup=0.2,
            floor_seconds=0.02,
            setups=[Setup("main", min(workers, 2), batching, full=True)],
            tracing_seconds=0.05,
            tracing_rounds=1,
        ),
    }


def _stats(method: str, service: str, concurrency: int, batch: int, res) -> dict[str, Any]:
    lat = res.latencies_ns
    return {
        "method": method,
        "service": "echo" if service == ECHO else "guard",
        "concurrency": concurrency,
        "batch": batch,
        "calls": len(lat),
        "errors": res.errors,
        "calls_per_second": res.calls_per_second,
        "decisions_per_second": res.calls_per_second * batch,
        "p50_us": res.percentile_us(50),
        "p99_us": res.percentile_us(99),
        "p999_us": res.percentile_us(99.9),
        "mean_us": float(lat.mean() / 1e3) if len(lat) else float("nan"),
        # Server CPU per decision: robust to other load on the machine (unlike wall-clock figures).
        "server_cpu_us_per_decision": res.server_cpu_s / max(1, len(lat) * batch) * 1e6,
    }


def _representative_decision(scn: scenario.Scenario) -> bytes:
    """The Decision the server returns for the first request (sizes the echo answers)."""
    from interlock.config import load_config
    from interlock.engine import Guard
    from interlock.server.convert import decision_to_pb

    guard = Guard(load_config(scn.config_path)).load()
    sizes = [(len(decision_to_pb(d).SerializeToString()), d) for d in guard.check(scn.inputs()[:64])]
    median = sorted(sizes, key=lambda x: x[0])[len(sizes) // 2][1]
    return decision_to_pb(median).SerializeToString()


def measure_setup(
    setup: Setup, plan: Plan, workdir: Path, scn_seed: int, gen: LoadGenerator, progress
) -> dict[str, Any]:
    """Start the server group for ``setup`` and run its points."""
    from interlock.server.workers import start_workers
    from interlock.v1 import interlock_pb2 as pb

    scn = scenario.build(workdir / setup.name, setup.batching, seed=scn_seed)
    requests = scn.requests()
    unary = [r.SerializeToString() for r in requests]
    decision = _representative_decision(scn)
    batches = {
        b: [
            pb.CheckBatchRequest(
                requests=[requests[(k * b + i) % len(requests)] for i in range(b)]
            ).SerializeToString()
            for k in range(max(1, min(8, 4096 // b)))
        ]
        for b in plan.batch_sizes
    }
    columns, column_answers = _columns_payloads(scn, plan.batch_sizes)
    hook = make_hook(decision, float(np.mean([len(u) for u in unary])), column_answers)
    points: list[dict[str, Any]] = []
    floor_session = floors.ensemble_session(scn)
    timed, clock = floors.timed_guard(scn)
    with start_workers(str(scn.config_path), setup.workers, "127.0.0.1", 0, None, hooks=[hook]) as group:
        target = f"127.0.0.1:{group.port}"
        pids = [p.pid for p in group.processes]

        def point(service: str, method: str, payloads: list[bytes], conc: int, batch: int) -> None:
            progress.set_postfix_str(f"{setup.name}: {service.split('.')[-1]}.{method} c={conc} b={batch}")
            res = gen.run(
                target, service, method, payloads, conc, plan.duration, plan.warmup, server_pids=pids
            )
            stats = _stats(method, service, conc, batch, res)
            if method in ("CheckBatch", "CheckColumns") and service == GUARD:
                # The floors again, right after: other load on the machine changes by the minute.
                stats["ensemble_floor_adjacent_decisions_per_second"] = floors.floor_point(
                    floor_session, scn, batch, plan.floor_seconds
                )["decisions_per_second"]
                onnx = floors.onnx_floor_point(timed, clock, scn, batch, plan.floor_seconds)
                stats["compute_floor_adjacent_decisions_per_second"] = onnx["decisions_per_second"]
                stats["compute_floor_onnx_runs_per_batch"] = onnx["onnx_runs_per_batch"]
            points.append(stats)
            progress.update(1)

        methods = ["Check", "CheckStream"] if setup.full else ["Check"]
        for method in methods:
            for conc in plan.concurrency:
                for service in (ECHO, GUARD) if setup.full else (GUARD,):
                    point(service, method, unary, conc, 1)
        if setup.full:
            for conc in plan.batch_concurrency:
                for b in plan.batch_sizes:
                    for service in (ECHO, GUARD):
                        point(service, "CheckBatch", batches[b], conc, b)
                    for service in (ECHO, GUARD):
                        point(service, "CheckColumns", columns[b], conc, b)
    timed.unload()
    return {"name": setup.name, "label": setup.label(), **asdict(setup), "points": points}


def _columns_payloads(
    scn: scenario.Scenario, sizes: list[int]
) -> tuple[dict[int, list[bytes]], dict[int, bytes]]:
    """CheckColumns requests per batch size, and the real answer to each (by request size) for the echo."""
    from interlock.client.guard import make_columns_request
    from interlock.config import load_config
    from interlock.engine import Guard
    from interlock.server.convert import columns_to_pb

    guard = Guard(load_config(scn.config_path)).load()
    n = len(scn.observations)
    payloads: dict[int, list[bytes]] = {}
    answers: dict[int, bytes] = {}
    for b in sizes:
        payloads[b] = []
        for k in range(max(1, min(8, 4096 // b))):
            idx = (np.arange(b) + k * b) % n
            obs, acts = scn.observations[idx], scn.actions[idx]
            episodes, steps = [f"ep-{i % 16}" for i in idx.tolist()], idx.tolist()
            req = make_columns_request(scenario.AGENT_ID, obs, acts, episodes, steps).SerializeToString()
            payloads[b].append(req)
            cd = guard.check_columns(scenario.AGENT_ID, obs, acts, episodes, steps)
            answers[len(req)] = columns_to_pb(cd).SerializeToString()
    guard.unload()
    return payloads, answers


def _count_points(plan: Plan) -> int:
    n = 0
    for s in plan.setups:
        if s.full:
            n += 2 * 2 * len(plan.concurrency) + 4 * len(plan.batch_sizes) * len(plan.batch_concurrency)
        else:
            n += len(plan.concurrency)
    return n


def _find(points: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for p in points:
        if all(p.get(k) == v for k, v in match.items()):
            return p
    return None


def _point(points: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    """The measured point matching ``match``; the plan always measures the points the summary reads."""
    p = _find(points, **match)
    if p is None:
        raise ValueError(f"the benchmark measured no point with {match}; check the plan's concurrency levels")
    return p


def summarize(result: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The headline figures, each against its target, plus the server-CPU view of the same points."""
    main = result["setups"][0]
    pts = main["points"]
    check1 = _point(pts, method="Check", service="guard", concurrency=1)
    echo1 = _point(pts, method="Check", service="echo", concurrency=1)
    out: dict[str, Any] = {
        "check_p50_us": check1["p50_us"],
        "transport_floor_p50_us": echo1["p50_us"],
        "check_p50_over_transport_floor": check1["p50_us"] / echo1["p50_us"],
    }
    bsize = 256 if 256 in plan.batch_sizes else max(plan.batch_sizes)
    batch = [
        p for p in pts if p["method"] == "CheckBatch" and p["service"] == "guard" and p["batch"] == bsize
    ]
    best = max(batch, key=lambda p: p["decisions_per_second"])
    floor = best["compute_floor_adjacent_decisions_per_second"]
    out.update(
        {
            "batch_size": bsize,
            "batch_concurrency": best["concurrency"],
            "batch_decisions_per_second": best["decisions_per_second"],
            "compute_floor_decisions_per_second": floor,
            "batch_throughput_over_compute_floor": best["decisions_per_second"] / floor,
            # CPU view (robust to other load): server CPU per decision against the floor's time per decision.
            "batch_server_cpu_us_per_decision": best["server_cpu_us_per_decision"],
            "compute_floor_us_per_decision": 1e6 / floor,
        }
    )
    conc = 16 if 16 in plan.concurrency else max(plan.concurrency)
    best16 = max(
        (_point(s["points"], method="Check", service="guard", concurrency=conc) for s in result["setups"]),
        key=lambda p: p["decisions_per_second"],
    )
    best_setup = next(s for s in result["setups"] if best16 in s["points"])
    echo16 = _point(pts, method="Check", service="echo", concurrency=conc)
    out.update(
        {
            "clients": conc,
            "check_decisions_per_second_16_clients": best16["decisions_per_second"],
            "check_16_clients_setup": best_setup["label"],
            "check_server_cpu_us_per_decision": best16["server_cpu_us_per_decision"],
            "echo_calls_per_second_16_clients": echo16["calls_per_second"],
            "echo_server_cpu_us_per_call": echo16["server_cpu_us_per_decision"],
        }
    )
    out["check_throughput_16_clients_over_transport_floor"] = (
        best16["decisions_per_second"] / echo16["calls_per_second"]
    )
    cols = [
        p for p in pts if p["method"] == "CheckColumns" and p["service"] == "guard" and p["batch"] == bsize
    ]
    best_cols = max(cols, key=lambda p: p["decisions_per_second"])
    cfloor = best_cols["compute_floor_adjacent_decisions_per_second"]
    out.update(
        {
            "columns_concurrency": best_cols["concurrency"],
            "columns_decisions_per_second": best_cols["decisions_per_second"],
            "columns_compute_floor_decisions_per_second": cfloor,
            "columns_throughput_over_compute_floor": best_cols["decisions_per_second"] / cfloor,
            "columns_over_batch_throughput": best_cols["decisions_per_second"] / best["decisions_per_second"],
            "columns_server_cpu_us_per_decision": best_cols["server_cpu_us_per_decision"],
            "compute_floor_onnx_runs_per_batch": best_cols.get("compute_floor_onnx_runs_per_batch"),
        }
    )
    one = _find(result.get("onnx_floor", []), batch=1)
    out["engine_batch1_us"] = one["engine_us_per_batch"] if one else float("nan")
    out["engine_batch1_onnx_us"] = one["onnx_us_per_batch"] if one else float("nan")
    out["engine_batch1_over_onnx"] = one["engine_over_onnx"] if one else float("nan")
    # Server CPU per decision, every path (the best point of each at its usual shape).
    stream1 = _find(pts, method="CheckStream", service="guard", concurrency=conc)
    out["server_cpu_us_per_decision"] = {
        f"Check, {conc} clients": best16["server_cpu_us_per_decision"],
        f"CheckStream, {conc} clients": stream1["server_cpu_us_per_decision"] if stream1 else float("nan"),
        f"CheckBatch of {bsize}": best["server_cpu_us_per_decision"],
        f"CheckColumns of {bsize}": best_cols["server_cpu_us_per_decision"],
    }
    targets = dict(TARGETS)
    cfg = result.get("config_unary")
    if cfg is not None:
        key, target = CONFIG_TARGET
        out[key] = cfg["check_p50_over_transport_floor"]
        out["config_check_p50_us"] = cfg["check_p50_us"]
        out["config_transport_floor_p50_us"] = cfg["transport_floor_p50_us"]
        targets[key] = target
    out["targets"] = {
        k: {"target": f"{op} {v:g}", "value": out[k], "met": out[k] <= v if op == "<=" else out[k] >= v}
        for k, (op, v) in targets.items()
    }
    return out


def run(
    quick: bool = False,
    workdir: Path | None = None,
    seed: int = 0,
    config: str | None = None,
    agent: str | None = None,
    env: str | None = None,
    config_rounds: int | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns every figure (see module docstring).

    ``config``/``agent``/``env``: also measure Check p50 on that config (one worker, its own server
    settings) against the echo on the same server, ``config_rounds`` interleaved rounds
    (:mod:`interlock.bench.perf.unary`); reported as ``check_p50_over_transport_floor_config``.
    """
    import grpc
    import onnxruntime
    from tqdm import tqdm

    cpus = scenario.cpu_count()
    plan = plans(cpus)["quick" if quick else "full"]
    tmp = tempfile.TemporaryDirectory(prefix="interlock-bench-") if workdir is None else None
    base = Path(tmp.name) if tmp is not None else workdir
    assert base is not None  # a TemporaryDirectory when no workdir is given
    try:
        started = time.time()
        load_before = os.getloadavg()
        scn = scenario.build(base / "floors", seed=seed)
        result: dict[str, Any] = {
            "benchmark": "interlock bench perf",
            "quick": quick,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "machine": {
                "cpus": cpus,
                "platform": platform.platform(),
                "python": sys.version.split()[0],
                "grpcio": grpc.__version__,
                "onnxruntime": onnxruntime.__version__,
                "loadavg_before": list(load_before),
            },
            "scenario": {
                "agent": scenario.AGENT_ID,
                "observation_dim": scenario.OBS_DIM,
                "actions": scenario.N_ACTIONS,
                "ensemble": f"{scenario.MEMBERS} x MLP {scenario.OBS_DIM}-{scenario.HIDDEN}-"
                f"{scenario.HIDDEN}-{scenario.N_ACTIONS}, fused, output [K, batch, n_actions]",
                "monitors": [
                    "uncertainty (q ensemble)",
                    "action_space",
                    f"recover (reachability: backup policy rolled out {scenario.HORIZON} steps through a "
                    f"{scenario.MEMBERS}-member dynamics ensemble)",
                    "limits (3 CEL constraints)",
                ],
                "policy_rules": 5,
                "reachability": f"horizon {scenario.HORIZON}",
                "verdicts_in_process": scenario.expected_verdicts(scn),
                "request_bytes": float(np.mean([r.ByteSize() for r in scn.requests()])),
                "decision_bytes": len(_representative_decision(scn)),
            },
            "settings": {
                "duration_s": plan.duration,
                "warmup_s": plan.warmup,
                "concurrency": plan.concurrency,
                "batch_sizes": plan.batch_sizes,
                "batch_concurrency": plan.batch_concurrency,
                "client_processes": plan.client_processes,
            },
        }
        sizes = sorted({1, *plan.batch_sizes})
        result["compute_floor"] = floors.compute_floor(scn, sizes, plan.floor_seconds)
        result["onnx_floor"] = floors.onnx_floor(scn, sorted({1, *sizes}), plan.floor_seconds)
        result["engine_in_process"] = floors.engine_in_process(scn, sizes, plan.floor_seconds)
        result["onnxruntime_settings"] = floors.onnxruntime_settings(
            scn, sorted({1, 256} & {1, *plan.batch_sizes}), plan.floor_seconds
        )
        result["tracing"] = tracing.tracing_cost(scn, plan.tracing_seconds, plan.tracing_rounds)
        result["setups"] = []
        bar = tqdm(total=_count_points(plan), desc="bench perf", unit="point", file=sys.stderr)
        with bar, LoadGenerator(plan.client_processes) as gen:
            for setup in plan.setups:
                result["setups"].append(measure_setup(setup, plan, base, seed, gen, bar))
            if config is not None:
                if agent is None:
                    raise ValueError("--config needs --agent: the agent id the requests are for")
                rounds = config_rounds or (2 if quick else 7)
                bar.set_postfix_str(f"{Path(config).name}: echo and Check, {rounds} rounds")
                result["config_unary"] = unary.measure_config(
                    config,
                    agent,
                    env,
                    gen,
                    rounds=rounds,
                    duration=plan.duration / 4 if not quick else plan.duration,
                    warmup=plan.warmup / 2 if not quick else plan.warmup,
                )
        result["machine"]["loadavg_after"] = list(os.getloadavg())
        result["elapsed_s"] = time.time() - started
        summary = summarize(result, plan)
        result["summary"] = summary
        for key in summary["targets"]:
            result[key] = summary[key]
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def main(
    json_path: str | None,
    quick: bool,
    docs: str | None,
    config: str | None = None,
    agent: str | None = None,
    env: str | None = None,
    config_rounds: int | None = None,
) -> dict[str, Any]:
    from interlock.bench.perf import report

    result = run(quick=quick, config=config, agent=agent, env=env, config_rounds=config_rounds)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if docs:
        report.write(result, Path(docs))
    print(report.summary_text(result))
    return result
