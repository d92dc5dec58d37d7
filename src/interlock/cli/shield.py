"""``interlock shield build``: precompute and cache the tables of every tabular reachability monitor.

Loading a config solves any tabular model whose cache is missing or stale, which
is fine for small models and slow for large ones; this command does that work
ahead of time (with progress bars) and writes ``<transitions>.shield.npz`` (or the
model's ``cache:`` path). The cache is keyed by a hash of the transitions file and
the settings, so it is rebuilt only when either changes.
"""

from __future__ import annotations

import argparse
import time

from interlock.cli.errors import CliError, UsageError

_EPILOG = """examples:
  interlock shield build examples/cliffwalking/interlock.yaml
  interlock shield build examples/frozenlake/interlock.yaml --agent frozenlake-8x8 --force
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``shield build`` to the ``interlock`` command line."""
    shield = subparsers.add_parser(
        "shield",
        help="precompute shield tables for tabular reachability monitors",
        description="Exact and probabilistic shields over finite models (see docs/reachability.md).",
    )
    ssub = shield.add_subparsers(dest="shield_command", metavar="ACTION", required=True)
    build = ssub.add_parser(
        "build",
        help="solve the safety games of a config's tabular models and cache the tables",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("config", metavar="CONFIG", help="the Interlock YAML config")
    build.add_argument(
        "--agent", action="append", metavar="ID", help="only this agent id (repeatable); default: every agent"
    )
    build.add_argument("--force", action="store_true", help="solve again even if the cache is up to date")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=_cmd_build)

    cal = ssub.add_parser(
        "calibrate",
        help="suggest constraint margins for a dynamics shield from in-distribution episodes",
        description="Measure the one-step and open-loop H-step error of an agent's dynamics reachability "
        "monitor on in-distribution transitions (obs, action, next_obs, episode), per dimension, and "
        "suggest constraint margins: the largest per-step quantile over the first STEPS steps. Writes a "
        "JSON report with the constraints tightened by those margins (see docs/shield.md). Use "
        "in-distribution data only.",
        epilog="example: interlock shield calibrate --config interlock.yaml --agent cartpole --data "
        "in_dist.npz --quantile 0.99 --steps 5 -o margins.json",
    )
    cal.add_argument("--config", required=True, metavar="FILE", help="the Interlock YAML config")
    cal.add_argument("--agent", required=True, metavar="ID", help="the agent whose monitor to calibrate")
    cal.add_argument("--data", required=True, metavar="FILE.npz", help="in-distribution transitions")
    cal.add_argument(
        "--monitor", default=None, metavar="NAME", help="the reachability monitor (default: first)"
    )
    cal.add_argument("--quantile", type=float, default=0.99, help="error quantile per step (default 0.99)")
    cal.add_argument(
        "--steps", type=int, default=None, help="open-loop steps (default: the monitor's horizon)"
    )
    cal.add_argument("--max-starts", type=int, default=2000, help="rollout start rows sampled (default 2000)")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("-o", "--output", required=True, metavar="FILE.json", help="where to write the report")
    cal.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from interlock.ensembles.common import EnsembleError
    from interlock.reachability.margins import calibrate_margins

    kwargs = {"quantile": args.quantile, "max_starts": args.max_starts, "seed": args.seed}
    if args.steps is not None:
        kwargs["steps"] = args.steps
    try:
        report = calibrate_margins(args.config, args.agent, args.data, args.monitor, **kwargs)
    except EnsembleError as e:
        raise UsageError(e.message) from None
    print(report.summary())
    print(f"wrote {report.write(args.output)}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from interlock.config import TabularModelConfig, load_config
    from interlock.reachability.shield_build import ShieldSettings, default_cache_path, tables_for

    loaded = load_config(args.config)
    wanted = set(args.agent or [])
    unknown = wanted - {a.id for a in loaded.config.agents}
    if unknown:
        have = ", ".join(a.id for a in loaded.config.agents)
        raise UsageError(f"no agent {', '.join(sorted(unknown))} in {args.config} (agents: {have})")
    built = 0
    for agent in loaded.config.agents:
        if wanted and agent.id not in wanted:
            continue
        for mon in agent.monitors:
            if mon.kind != "reachability" or not isinstance(mon.model, TabularModelConfig):
                continue
            transitions = loaded.resolve(mon.model.transitions)
            risk = mon.risk
            settings = ShieldSettings(
                delta=risk.delta if risk else None,
                horizon=risk.horizon if risk else ShieldSettings.horizon,
                relative=risk.relative if risk else False,
                relative_reachability=mon.relative_reachability,
            )
            cache = (
                loaded.resolve(mon.model.cache)
                if mon.model.cache
                else default_cache_path(transitions, settings)
            )
            start = time.perf_counter()
            tables, origin = tables_for(
                transitions,
                settings,
                cache=cache,
                write_cache=True,
                progress=not args.quiet,
                force=args.force,
            )
            took = time.perf_counter() - start
            s = tables.summary()
            what = "up to date" if origin in ("cache", "memory") else f"solved in {took:.2f} s"
            print(
                f"{agent.id}/{mon.name}: {cache} ({what}): {s['states']} states, {s['actions']} actions; "
                f"winning {s['winning']}, lost {s['lost']}, unsafe {s['unsafe']}; "
                f"allowed {s['allowed_pairs']}/{s['live_pairs']} live state-action pairs"
            )
            built += 1
    if not built:
        raise CliError(f"{args.config} has no reachability monitor with a tabular model")
    return 0
