"""``interlock bench perf|safety``: run the harnesses of :mod:`interlock.bench`.

The harnesses ship with the package. Full runs write their sections of ``docs/benchmarks.md`` in the
working directory (run them from the checkout) unless ``--docs DIR`` says elsewhere; some safety
scenarios read agents from the checkout's ``examples/`` (see
:func:`interlock.bench.safety.common.example_dir`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from interlock.cli.errors import UsageError


def _docs_dir(args: argparse.Namespace) -> str | None:
    """Where to write tables and plots: ``--docs``, else ./docs for full runs, else nowhere (``--quick``)."""
    if args.docs is None and not args.quick:
        return "docs"
    return args.docs


def _redraw(report, from_json: str, docs: str) -> int:
    """Rewrite a benchmark's docs section and plots from a saved JSON result, without measuring."""
    import json

    result = json.loads(Path(from_json).read_text())
    report.write(result, Path(docs))
    print(report.summary_text(result))
    return 0


def _cmd_perf(args: argparse.Namespace) -> int:
    from interlock.bench.perf.run import main

    docs = _docs_dir(args)
    if args.from_json:
        from interlock.bench.perf import report

        return _redraw(report, args.from_json, docs or "docs")
    if args.config is not None and args.agent is None:
        raise UsageError("bench perf: --config needs --agent, the agent id of the config to send requests as")
    if args.config is None and (args.agent is not None or args.env is not None):
        raise UsageError("bench perf: --agent and --env apply to --config FILE; give the config too")
    main(args.json, args.quick, docs, args.config, args.agent, args.env, args.config_rounds)
    return 0


def _cmd_safety(args: argparse.Namespace) -> int:
    from interlock.bench.safety.run import SCENARIOS, main

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    unknown = sorted(set(only or ()) - set(SCENARIOS))
    if unknown:
        raise UsageError(f"bench safety: unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    docs = _docs_dir(args)
    if args.from_json:
        from interlock.bench.safety import report

        return _redraw(report, args.from_json, docs or "docs")
    result = main(args.json, args.quick, docs, seeds=args.seeds, only=only)
    return 1 if result.get("failed") else 0


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
        description="Serve a realistic config (5-member 2x256 MLP ensemble, a reachability rollout of "
        "horizon 10, rules, an ONNX backup policy) on loopback and drive Check, CheckStream and CheckBatch "
        "from separate client processes at several "
        "concurrency levels and batch sizes. In the same run it measures an echo RPC of the same message "
        "sizes on the same server (the transport floor) and the bare in-process ensemble call (the compute "
        "floor), and reports ratios to both. The full run takes a few minutes; --quick takes seconds.",
    )
    _add_run_arguments(perf, "few points, short windows (seconds, for CI)")
    perf.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="also measure Check p50 (one call in flight) on this config, served by one worker with its "
        "own server settings, against the echo on the same server (same message sizes), in interleaved "
        "rounds; reported as check_p50_over_transport_floor_config (target <= 1.5). Needs --agent",
    )
    perf.add_argument("--agent", metavar="ID", default=None, help="with --config: the agent id to check as")
    perf.add_argument(
        "--env",
        metavar="GYM_ID",
        default=None,
        help="with --config: take observations from this Gymnasium environment (seeded resets and random "
        "steps), e.g. CartPole-v1; default: values drawn from the agent's observation spec",
    )
    perf.add_argument(
        "--config-rounds",
        type=int,
        default=None,
        metavar="N",
        help="with --config: interleaved echo/Check rounds, medians reported (default 7; 2 with --quick)",
    )
    _add_docs_arguments(perf, "measure nothing")
    perf.set_defaults(func=_cmd_perf)
    safety = bsub.add_parser(
        "safety",
        help="catastrophes prevented under shift, and the cost in distribution",
        description="Real environments with real shifts (MiniGrid DistShift1 -> DistShift2, CartPole with a "
        "longer pole, CliffWalking deterministic -> slippery, highway-env denser traffic and LunarLander "
        "wind and a weak main engine when their scenarios and packages are present); agents trained by "
        "scripts in the repo, each run unguarded and "
        "guarded through interlock.engine.Guard over many seeds, with a simulated operator answering "
        "escalations. Reports catastrophe rate, return, intervention, escalation and false-intervention "
        "rates against the targets. The full run takes about ten minutes on 2 cores; --quick takes seconds.",
    )
    _add_run_arguments(safety, "2 seeds per condition, short episodes (for CI)")
    safety.add_argument("--seeds", type=int, default=None, help="episodes (one per seed) per condition")
    safety.add_argument(
        "--only",
        metavar="NAMES",
        default=None,
        help="comma-separated scenarios (minigrid_distshift, cartpole_shift, cliffwalking, highway, "
        "lunarlander)",
    )
    _add_docs_arguments(safety, "run nothing")
    safety.set_defaults(func=_cmd_safety)


def _add_run_arguments(parser: argparse.ArgumentParser, quick: str) -> None:
    """``--json FILE`` and ``--quick`` (``quick``: how small the smoke run is), for every benchmark."""
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick}")


def _add_docs_arguments(parser: argparse.ArgumentParser, nothing: str) -> None:
    """``--docs DIR`` and ``--from-json FILE``, the same for every benchmark."""
    parser.add_argument(
        "--docs",
        metavar="DIR",
        default=None,
        help="write the markdown section of DIR/benchmarks.md and plots in DIR/img (default: docs/ in the "
        "working directory for a full run; nothing for --quick)",
    )
    parser.add_argument(
        "--from-json",
        metavar="FILE",
        default=None,
        help=f"{nothing}: regenerate the markdown and plots from a previous --json FILE",
    )
