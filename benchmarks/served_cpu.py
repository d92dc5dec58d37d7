"""Served CartPole Check: thread CPU per call of the engine (``Guard.check``) and of the whole servicer
method (``GuardServicer.Check``), for several source trees interleaved, with Check p50 against the echo.

Each tree gets its own in-process server (a subprocess with that tree's sources on PYTHONPATH:
``InterlockServer`` on the CartPole example, the benchmark's echo service on the same grpc.aio server).
In the server, ``Guard.check`` and ``GuardServicer.Check`` are wrapped to add up their thread CPU
(``time.thread_time_ns``); Check runs on the event loop without suspending (no batching, escalation
or audit in the example), so the servicer's figure is its whole work. One closed-loop client
(:mod:`interlock.bench.perf.loadgen`) measures, per round and tree (order alternating), the echo and
then Check at one call in flight. Reported: medians over rounds.

    git archive <commit> src | tar -x -C /tmp/base      # the "before" sources in /tmp/base/src
    python benchmarks/served_cpu.py --tree before=/tmp/base/src --tree after=src --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from interlock.bench.perf import unary
from interlock.bench.perf.echo import SERVICE as ECHO
from interlock.bench.perf.loadgen import LoadGenerator

ROOT = Path(__file__).resolve().parents[1]
CARTPOLE = ROOT / "examples" / "cartpole" / "interlock.yaml"

#: Runs in the server subprocess with the tree's sources. Commands on stdin: "reset", "stats", EOF.
SERVER = """
import asyncio, json, os, sys, time
from interlock.config import load_config
from interlock.engine import Guard
from interlock.server.app import InterlockServer
from interlock.server.guard_servicer import GuardServicer
from interlock.bench.perf.echo import make_hook
config, answer_file, request_len = sys.argv[1], sys.argv[2], float(sys.argv[3])
clock = time.thread_time_ns
acc = {"engine_ns": 0, "engine_calls": 0, "servicer_ns": 0, "servicer_calls": 0}
engine_check, servicer_check = Guard.check, GuardServicer.Check
def check(self, *args, **kwargs):
    t = clock()
    try:
        return engine_check(self, *args, **kwargs)
    finally:
        acc["engine_ns"] += clock() - t
        acc["engine_calls"] += 1
async def Check(self, request, context):
    t = clock()
    try:
        return await servicer_check(self, request, context)
    finally:
        acc["servicer_ns"] += clock() - t
        acc["servicer_calls"] += 1
Guard.check, GuardServicer.Check = check, Check
async def main():
    hook = make_hook(open(answer_file, "rb").read(), request_len)
    server = InterlockServer(load_config(config), host="127.0.0.1", port=0, metrics_port=None,
                             console_port=None, hooks=[hook])
    port = await server.start()
    print(port, os.getpid(), flush=True)
    loop = asyncio.get_running_loop()
    while (line := (await loop.run_in_executor(None, sys.stdin.readline)).strip()):
        if line == "reset":
            acc.update(dict.fromkeys(acc, 0))
        print(json.dumps(acc), flush=True)
    await server.stop(0)
asyncio.run(main())
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", required=True, help="NAME=SRC_DIR (repeat)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    payloads = unary.config_payloads(CARTPOLE, "cartpole", "CartPole-v1")
    answer, request_len = unary.echo_answer(CARTPOLE, payloads)
    answer_file = Path(tempfile.mkdtemp(prefix="served-cpu-")) / "answer"
    answer_file.write_bytes(answer)
    servers = {}
    for name, src in trees.items():
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(CARTPOLE), str(answer_file), str(request_len)],
            env={**os.environ, "PYTHONPATH": str(Path(src).resolve())},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        port, pid = proc.stdout.readline().split()
        servers[name] = (proc, f"127.0.0.1:{port}", int(pid))

    def command(proc: subprocess.Popen, line: str) -> dict:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    keys = ("engine_us", "servicer_us", "server_cpu_us", "check_p50_us", "echo_p50_us", "ratio", "load")
    result: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in trees}
    try:
        with LoadGenerator(1) as gen:
            for r in range(args.rounds):
                for name in list(trees) if r % 2 == 0 else list(trees)[::-1]:
                    proc, target, pid = servers[name]
                    load = os.getloadavg()[0]
                    echo = gen.run(target, ECHO, "Check", payloads, 1, args.duration, 0.3, server_pids=[pid])
                    command(proc, "reset")
                    check = gen.run(
                        target, unary.GUARD, "Check", payloads, 1, args.duration, 0.3, server_pids=[pid]
                    )
                    st = command(proc, "stats")
                    row = result[name]
                    row["engine_us"].append(st["engine_ns"] / max(1, st["engine_calls"]) / 1e3)
                    row["servicer_us"].append(st["servicer_ns"] / max(1, st["servicer_calls"]) / 1e3)
                    row["server_cpu_us"].append(check.server_cpu_s / max(1, len(check.latencies_ns)) * 1e6)
                    row["check_p50_us"].append(check.percentile_us(50))
                    row["echo_p50_us"].append(echo.percentile_us(50))
                    row["ratio"].append(row["check_p50_us"][-1] / row["echo_p50_us"][-1])
                    row["load"].append(load)
    finally:
        for proc, _, _ in servers.values():
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)
    for name, row in result.items():
        cells = ", ".join(f"{k} {statistics.median(v):,.2f}" for k, v in row.items())
        print(f"{name}: {cells}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
