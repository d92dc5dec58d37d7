"""Before/after of ``interlock bench perf --quick`` on a shared machine: interleaved runs, medians.

Wall-clock figures on a shared machine move by up to 2x from minute to minute, so two versions
are compared only in the same minutes: each round runs ``bench perf --quick`` once with each
source tree (the order alternating between rounds), and the report gives, per headline ratio,
the median over rounds and every round's value, with the load average at each run's start.

    # the branch point's sources in /tmp/base/src (git archive <commit> src | tar -x -C /tmp/base)
    python benchmarks/perf_ab.py --before /tmp/base/src --after src --rounds 4 \\
        --out /tmp/ab --plot docs/img/perf_one_row_ab.png

``--out DIR`` keeps each run's JSON (``quick_{before,after}_<round>.json``); with ``--from-dir DIR``
nothing is run and the JSON files already there are summarised (and plotted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: The headline ratios of ``bench perf`` (its TARGETS) and what each should be.
KEYS = {
    "engine_batch1_over_onnx": "<= 2",
    "check_p50_over_transport_floor": "<= 1.5",
    "check_throughput_16_clients_over_transport_floor": ">= 0.7",
    "columns_throughput_over_compute_floor": ">= 0.5",
}
EXTRA = ["engine_batch1_us", "engine_batch1_onnx_us", "check_p50_us", "transport_floor_p50_us"]


def run_rounds(before: Path, after: Path, rounds: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for r in range(1, rounds + 1):
        order = ("before", "after") if r % 2 else ("after", "before")
        for which in order:
            src = before if which == "before" else after
            path = out / f"quick_{which}_{r}.json"
            load = os.getloadavg()[0]
            env = {**os.environ, "PYTHONPATH": str(src.resolve())}
            cmd = [sys.executable, "-m", "interlock.cli", "bench", "perf", "--quick", "--json", str(path)]
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            data = json.loads(path.read_text())
            data["ab_load_at_start"] = load
            path.write_text(json.dumps(data, indent=2) + "\n")
            print(f"round {r} {which}: load {load:.1f} at {time.strftime('%H:%M:%S')}", file=sys.stderr)


def summarise(out: Path) -> dict:
    table: dict = {}
    for which in ("before", "after"):
        runs = [json.loads(p.read_text()) for p in sorted(out.glob(f"quick_{which}_*.json"))]
        table[which] = {
            "runs": len(runs),
            "load_at_start": [r.get("ab_load_at_start", r["machine"]["loadavg_before"][0]) for r in runs],
            **{k: [r["summary"][k] for r in runs] for k in [*KEYS, *EXTRA]},
        }
    return table


def report(table: dict) -> str:
    lines = [
        "| figure | target | before: median [every run] | after: median [every run] |",
        "|---|---|---|---|",
    ]
    for k in [*KEYS, *EXTRA]:
        cells = []
        for which in ("before", "after"):
            vals = table[which][k]
            fmt = "{:.2f}" if k in KEYS else "{:,.0f}"
            cells.append(f"{fmt.format(statistics.median(vals))} [{', '.join(fmt.format(v) for v in vals)}]")
        lines.append(f"| `{k}` | {KEYS.get(k, '')} | {cells[0]} | {cells[1]} |")
    loads = {w: ", ".join(f"{x:.1f}" for x in table[w]["load_at_start"]) for w in ("before", "after")}
    lines.append(f"\nLoad average at each run's start: before {loads['before']}; after {loads['after']}.")
    return "\n".join(lines)


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KEYS), figsize=(3.2 * len(KEYS), 3.2))
    for ax, (k, target) in zip(axes, KEYS.items(), strict=True):
        for x, which in enumerate(("before", "after")):
            vals = table[which][k]
            ax.scatter([x] * len(vals), vals, alpha=0.6)
            ax.hlines(statistics.median(vals), x - 0.25, x + 0.25, color="black")
        ax.axhline(float(target.split()[1]), color="red", linestyle="--", linewidth=1)
        ax.set_xticks([0, 1], ["before", "after"])
        ax.set_title(k.replace("_over_", " /\n"), fontsize=8)
        ax.set_xlim(-0.6, 1.6)
    fig.suptitle("bench perf --quick, interleaved runs (bar: median; dashed: target)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="source tree (the directory holding interlock/) before")
    ap.add_argument("--after", type=Path, help="source tree after")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("perf-ab"))
    ap.add_argument("--from-dir", type=Path, default=None, help="summarise existing runs; run nothing")
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    args = ap.parse_args()
    out = args.from_dir or args.out
    if args.from_dir is None:
        if args.before is None or args.after is None:
            ap.error("--before and --after are needed unless --from-dir is given")
        run_rounds(args.before, args.after, args.rounds, out)
    table = summarise(out)
    print(report(table))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    if args.plot:
        plot(table, args.plot)


if __name__ == "__main__":
    main()
