"""Check p50 at one call in flight, before/after, CartPole example and the bench scenario, interleaved.

Each (source tree, config) gets its own server, started in a subprocess whose PYTHONPATH is that
tree's sources, as ``interlock serve --workers 1`` runs it, with the benchmark's echo service on the
same grpc.aio server. One load generator (:mod:`interlock.bench.perf.loadgen`) then measures every
series once per round (echo and Check of every server, order rotated): rounds' medians, load noted.

    git archive <commit> src | tar -x -C /tmp/base      # the "before" sources in /tmp/base/src
    python benchmarks/unary_ab.py --tree before=/tmp/base/src --tree after=src --rounds 7 --json F
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from interlock.bench.perf import scenario, unary
from interlock.bench.perf.echo import SERVICE as ECHO
from interlock.bench.perf.loadgen import LoadGenerator

ROOT = Path(__file__).resolve().parents[1]
CARTPOLE = ROOT / "examples" / "cartpole" / "interlock.yaml"

#: Runs in the server subprocess with the tree's sources (APIs present on every tree since workers).
RUNNER = """
import sys
from interlock.bench.perf.echo import make_hook
from interlock.server.workers import start_workers
config, answer, request_len = sys.argv[1], open(sys.argv[2], "rb").read(), float(sys.argv[3])
with start_workers(config, 1, "127.0.0.1", 0, None, hooks=[make_hook(answer, request_len)]) as group:
    print(group.port, *[p.pid for p in group.processes], flush=True)
    sys.stdin.read()
"""


def start_server(stack: ExitStack, src: Path, config: Path, answer: Path, request_len: float):
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(config), str(answer), str(request_len)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def stop() -> None:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)

    stack.callback(stop)
    assert proc.stdout is not None
    port, *pids = proc.stdout.readline().split()
    return f"127.0.0.1:{port}", [int(p) for p in pids]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", required=True, help="NAME=SRC_DIR (repeat)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--no-scenario", action="store_true", help="the CartPole example only")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    trees = [(n, Path(p)) for n, p in (t.split("=", 1) for t in args.tree)]
    tmp = Path(tempfile.mkdtemp(prefix="unary-ab-"))
    configs = {"cartpole": (CARTPOLE, unary.config_payloads(CARTPOLE, "cartpole", "CartPole-v1"))}
    if not args.no_scenario:
        scn = scenario.build(tmp / "scn", {"max_batch": 64, "max_delay_ms": 2.0})
        configs["scenario"] = (scn.config_path, [r.SerializeToString() for r in scn.requests()[:256]])
    series = []
    with ExitStack() as stack:
        for cname, (path, payloads) in configs.items():
            answer, request_len = unary.echo_answer(path, payloads)
            answer_file = tmp / f"{cname}.answer"
            answer_file.write_bytes(answer)
            for tname, src in trees:
                target, pids = start_server(stack, src, path, answer_file, request_len)
                series.append(unary.Series(f"{cname}/{tname}/echo", target, ECHO, payloads, pids))
                series.append(unary.Series(f"{cname}/{tname}/check", target, unary.GUARD, payloads, pids))
        with LoadGenerator(1) as gen:
            result = unary.interleaved_p50(series, gen, args.rounds, args.duration, args.warmup)
    result["loadavg_after"] = os.getloadavg()[0]
    rows = []
    for cname in configs:
        for tname, _ in trees:
            c = result["series"][f"{cname}/{tname}/check"]
            e = result["series"][f"{cname}/{tname}/echo"]
            ratios = [a / b for a, b in zip(c["p50_us"], e["p50_us"], strict=True)]
            rows.append(
                {
                    "config": cname,
                    "tree": tname,
                    "check_p50_us": c["p50_us_median"],
                    "echo_p50_us": e["p50_us_median"],
                    "ratio_of_medians": c["p50_us_median"] / e["p50_us_median"],
                    "round_ratios_median": statistics.median(ratios),
                    "round_ratios": ratios,
                    "check_server_cpu_us": c["server_cpu_us_per_call_median"],
                    "echo_server_cpu_us": e["server_cpu_us_per_call_median"],
                }
            )
    result["rows"] = rows
    print(f"load average per round: {[round(x, 1) for x in result['loadavg']]}")
    for r in rows:
        print(
            f"{r['config']:9s} {r['tree']:7s} check p50 {r['check_p50_us']:7.0f} us  "
            f"echo {r['echo_p50_us']:6.0f} us"
            f"  ratio {r['ratio_of_medians']:.2f} (rounds' median {r['round_ratios_median']:.2f}, "
            f"{min(r['round_ratios']):.2f}-{max(r['round_ratios']):.2f})  server CPU/call "
            f"{r['check_server_cpu_us']:.0f} vs echo {r['echo_server_cpu_us']:.0f} us"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
