"""``interlock bench``: the benchmark commands (``perf`` now; ``safety`` registers here too).

The harnesses live in ``benchmarks/`` of the source checkout (they are not part
of the installed package); these commands find the checkout from the working
directory or from this package's location (an editable install).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


def checkout_root() -> Path:
    """The Interlock source checkout that holds ``benchmarks/``; puts it on ``sys.path``."""
    for base in (Path.cwd(), CHECKOUT):
        if (base / "benchmarks" / "perf" / "run.py").is_file():
            if str(base) not in sys.path:
                sys.path.insert(0, str(base))
            return base
    raise SystemExit(
        "interlock bench: benchmarks/ not found; run from the Interlock source checkout "
        "(git clone, then pip install -e '.[dev]')"
    )


def _cmd_perf(args: argparse.Namespace) -> int:
    root = checkout_root()
    from benchmarks.perf.run import main

    docs = args.docs
    if docs is None and not args.quick:
        docs = str(root / "docs")
    main(args.json, args.quick, docs)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="run the benchmarks (speed; safety)",
        description="Reproducible benchmarks; results as JSON, markdown tables and plots in "
        "docs/benchmarks.md.",
    )
    bsub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    perf = bsub.add_parser(
        "perf",
        help="latency and throughput against the transport and compute floors",
        description="Serve a realistic config (5-member 2x256 MLP ensemble, rules, an ONNX backup policy) on "
        "loopback and drive Check, CheckStream and CheckBatch from separate client processes at several "
        "concurrency levels and batch sizes. In the same run it measures an echo RPC of the same message "
        "sizes on the same server (the transport floor) and the bare in-process ensemble call (the compute "
        "floor), and reports ratios to both. The full run takes a few minutes; --quick takes seconds.",
    )
    perf.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    perf.add_argument(
        "--quick", action="store_true", help="smoke run: few points, short windows (seconds, for CI)"
    )
    perf.add_argument(
        "--docs",
        metavar="DIR",
        default=None,
        help="write the markdown section of DIR/benchmarks.md and plots in DIR/img (default: the checkout's "
        "docs/ for a full run; nothing for --quick)",
    )
    perf.set_defaults(func=_cmd_perf)
