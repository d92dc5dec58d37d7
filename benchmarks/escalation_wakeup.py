"""Cross-replica escalation latency: approve through replica B, the agent blocked on replica A answers.

Two real ``interlock serve`` processes share one escalation store: PostgreSQL (LISTEN/NOTIFY) and
one SQLite file (the change table polled through ``PRAGMA data_version``, exactly what the
processes of ``interlock serve --workers N`` share). Per trial: an agent's Check on A opens a
blocking escalation (deadline 30 s) and B's WatchEscalations stream sees it (the *open* latency,
from sending the Check to A); the operator approves through B's Operator API, and the time from
there to the agent's answer on A is the *wake-up* latency (target: p99 <= 100 ms). Also prints
each server's idle CPU while nothing happens (the cost of listening/polling). Usage::

    python benchmarks/escalation_wakeup.py --trials 50
    INTERLOCK_TEST_POSTGRES_DSN=postgresql://... python benchmarks/escalation_wakeup.py   # adds PostgreSQL
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interlock import GuardClient
from interlock.client.operator import OperatorClient
from interlock.v1 import interlock_pb2 as pb
from tests.support.escalation import AGENT, OPERATOR_TOKEN, RISKY, example_data, write_config
from tests.support.ops import POSTGRES_DSN, ServerProcess, postgres_schema


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(backend: str, trials: int, idle_seconds: float) -> dict[str, object]:
    os.environ["INTERLOCK_OPERATOR_TOKEN"] = OPERATOR_TOKEN
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        data = example_data(Path(tmp), timeout_seconds=30.0)
        env = {}
        if backend == "postgres":
            env["INTERLOCK_BENCH_DSN"] = stack.enter_context(postgres_schema("interlock_bench"))
            data["escalations"]["store"] = {"kind": "postgres", "dsn": "${INTERLOCK_BENCH_DSN}"}
        path = write_config(Path(tmp), data)
        a = stack.enter_context(ServerProcess(path, env=env))
        b = stack.enter_context(ServerProcess(path, env=env))
        agent = stack.enter_context(GuardClient(a.address, agent_id=AGENT, timeout=40))
        ops = stack.enter_context(OperatorClient(b.address, token=OPERATOR_TOKEN))
        agent.wait_ready()

        time.sleep(1.0)  # let start-up settle, then measure idle CPU
        before = [cpu_seconds(p.proc.pid) for p in (a, b)]
        time.sleep(idle_seconds)
        idle = [(cpu_seconds(p.proc.pid) - t) / idle_seconds for p, t in zip((a, b), before, strict=True)]

        events: queue.Queue[tuple[float, pb.Escalation]] = queue.Queue()
        stream = ops.watch(include_pending=False)

        def read() -> None:
            try:
                for esc in stream:
                    events.put((time.perf_counter(), esc))
            except Exception:
                pass  # cancelled at the end

        threading.Thread(target=read, daemon=True).start()
        time.sleep(0.3)
        opened_ms, wakeup_ms = [], []
        for i in range(trials):
            answered: list[float] = []

            def check(step: int = i, answered: list[float] = answered) -> None:
                result = agent.check(RISKY, 1, step=step)
                answered.append(time.perf_counter())
                assert result.allowed, result.reasons

            started = time.perf_counter()
            caller = threading.Thread(target=check)
            caller.start()
            while True:
                seen_at, esc = events.get(timeout=30)
                if esc.state == pb.ESCALATION_STATE_PENDING and esc.step == i:
                    break
            opened_ms.append((seen_at - started) * 1000)
            approved_at = time.perf_counter()
            ops.approve(esc.escalation_id)
            caller.join(40)
            wakeup_ms.append((answered[0] - approved_at) * 1000)
        stream.cancel()
    return {
        "backend": backend,
        "trials": trials,
        "wakeup_p50": percentile(wakeup_ms, 50),
        "wakeup_p99": percentile(wakeup_ms, 99),
        "wakeup_max": max(wakeup_ms),
        "opened_p50": percentile(opened_ms, 50),
        "opened_p99": percentile(opened_ms, 99),
        "idle_cpu_percent": [round(100 * x, 2) for x in idle],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends and not POSTGRES_DSN:
        print("INTERLOCK_TEST_POSTGRES_DSN is unset: PostgreSQL skipped")
        backends.remove("postgres")
    print(
        "| store | trials | approve -> answer p50 | p99 | max "
        "| Check sent to A -> seen by B's watcher p50 | p99 | idle CPU per server |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for backend in backends:
        r = run(backend, args.trials, args.idle_seconds)
        print(
            f"| {backend} | {r['trials']} | {r['wakeup_p50']:.1f} ms | {r['wakeup_p99']:.1f} ms "
            f"| {r['wakeup_max']:.1f} ms | {r['opened_p50']:.1f} ms | {r['opened_p99']:.1f} ms "
            f"| {', '.join(f'{c}%' for c in r['idle_cpu_percent'])} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
