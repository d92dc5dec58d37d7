"""``interlock audit query|export|prune``: read, export and prune the decision log."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from typing import TYPE_CHECKING

from interlock.cli.errors import CliError, UsageError
from interlock.errors import ConfigError

if TYPE_CHECKING:
    from interlock.audit.transitions import TransitionCounts

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str) -> float:
    """Unix seconds from ``"2026-05-01T12:00"`` (UTC unless an offset is given), ``"90m"`` / ``"2d"`` ago,
    or a number of Unix seconds.
    """
    m = _RELATIVE.match(text.strip())
    if m:
        return time.time() - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"cannot read the time '{text}': use ISO 8601 (2026-05-01T12:00), an age such as 30m, 12h, 7d, "
            "or Unix seconds"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def _backend(args: argparse.Namespace):
    from interlock.audit import backend_for_config, open_backend

    if args.db:
        return open_backend(args.db)
    if not args.config:
        raise ConfigError("say which audit log: --config FILE (its server.audit) or --db PATH_OR_DSN")
    from interlock.config import load_config

    loaded = load_config(args.config)
    audit = loaded.config.server.audit
    if audit is None:
        raise ConfigError(f"{args.config}: has no server.audit section, so there is no audit log to read")
    return backend_for_config(audit, loaded.base_dir)


def _query(args: argparse.Namespace, newest_first: bool):
    from interlock.audit import AuditQuery

    return AuditQuery(
        agent_id=args.agent,
        episode_id=args.episode,
        verdict=args.verdict,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        limit=args.limit,
        newest_first=newest_first,
    )


def _open(args: argparse.Namespace):
    backend = _backend(args)
    path = getattr(backend, "path", None)
    if path is not None and not path.exists():
        raise ConfigError(f"no audit log at {path}: nothing was recorded there yet, or the path is wrong")
    try:
        backend.open()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"cannot open the audit log at {backend.where()}: {e}") from None
    return backend


def _cmd_query(args: argparse.Namespace) -> int:
    backend = _open(args)
    try:
        records = list(backend.query(_query(args, newest_first=True)))
    finally:
        backend.close()
    records.reverse()  # the newest N, shown oldest first
    if args.json:
        for r in records:
            print(json.dumps(r.to_json()))
        return 0
    print(
        f"{'time (UTC)':<20} {'decision_id':<24} {'agent':<14} {'episode':<10} {'step':>6} "
        f"{'verdict':<18} {'rule':<16} config"
    )
    for r in records:
        when = dt.datetime.fromtimestamp(r.time, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        verdict = f"{r.verdict} (shadow {r.shadow_verdict})" if r.shadow_verdict else r.verdict
        print(
            f"{when:<20} {r.decision_id:<24} {r.agent_id[:14]:<14} {r.episode_id[:10]:<10} {r.step:>6} "
            f"{verdict:<18} {r.rule[:16]:<16} {r.config_version}"
        )
    print(f"({len(records)} record(s))", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    if args.npz is not None:
        return _export_npz(args)
    backend = _open(args)
    n = 0
    try:
        out = sys.stdout
        for r in backend.query(_query(args, newest_first=False)):
            out.write(json.dumps(r.to_json()) + "\n")
            n += 1
    finally:
        backend.close()
    print(f"exported {n} record(s)", file=sys.stderr)
    return 0


def _no_transitions_hint(agent: str, counts: TransitionCounts) -> str:
    """Why the log gave no transition, and what to do about it."""
    if counts.records == 0:
        return (
            f"the audit log holds no decision of agent '{agent}' in this period: check --agent (the id the "
            "agent sends), --since/--until and the log (--config or --db)"
        )
    if counts.skipped == counts.records:
        return (
            "no record has an episode_id, so steps cannot be chained: the agent must send episode_id and "
            "step with every check (the Gymnasium wrapper interlock.InterlockWrapper does; with GuardClient "
            "pass episode_id=... and step=...)"
        )
    if counts.duplicates and counts.records - counts.skipped - counts.duplicates == counts.episodes:
        # one distinct step per episode: the same step (0, the default) sent with every check
        return (
            "every episode has one step recorded many times: the agent sends episode_id but not step "
            "(send the step number within the episode, 0, 1, 2, ...)"
        )
    return (
        "no two consecutive steps of an episode were recorded: the log holds only some decisions "
        "(server.audit.record: non_allow keeps the non-ALLOW ones and sampled ALLOWs); set "
        "server.audit.record: all for the calibration period and run the agent again"
    )


def _export_npz(args: argparse.Namespace) -> int:
    """``export --agent ID --npz OUT``: the agent's transitions for ``interlock calibrate --data``."""
    from pathlib import Path

    from tqdm import tqdm

    from interlock.audit.transitions import transitions_from_records
    from interlock.storage.npz import write_npz

    if not args.agent:
        raise UsageError(
            "--npz needs --agent ID: transitions are one agent's observations and actions "
            "(interlock audit export --agent ID --npz OUT.npz)"
        )
    if args.verdict:
        raise UsageError(
            "--verdict cannot be used with --npz: transitions need every decision of an episode, "
            "whatever its verdict"
        )
    backend = _open(args)
    query = _query(args, newest_first=False)
    try:
        total = backend.count(query)
        if args.limit is not None:
            total = min(total, args.limit)
        with tqdm(
            backend.query(query),
            total=total,
            desc=f"reading {args.agent}'s decisions",
            unit="record",
            disable=args.quiet,
            file=sys.stderr,
        ) as records:
            try:
                found = transitions_from_records(records)
            except ValueError as e:
                raise UsageError(str(e)) from None
    finally:
        backend.close()
    counts = found.counts
    print(f"agent '{args.agent}': {counts.summary()}", file=sys.stderr)
    if counts.transitions == 0:
        raise CliError(
            f"no transitions for agent '{args.agent}', nothing written to {args.npz}: "
            + _no_transitions_hint(args.agent, counts)
        )
    if counts.gaps:
        print(
            f"note: {counts.gaps} gap(s): some steps are missing from the log (server.audit.record: all "
            "records every decision); the transitions around them are left out",
            file=sys.stderr,
        )
    out = Path(args.npz)
    write_npz(out, found.arrays())
    print(
        f"wrote {counts.transitions} transition(s) of {counts.episodes_used} episode(s) to {out}; next: "
        f"interlock calibrate --config FILE --agent {args.agent} --data {out}",
        file=sys.stderr,
    )
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    if args.older_than is None and args.keep is None:
        raise ConfigError("say what to delete: --older-than AGE (e.g. 30d) and/or --keep N")
    backend = _open(args)
    try:
        age = None if args.older_than is None else time.time() - parse_time(args.older_than)
        deleted = backend.prune(age, args.keep)
    finally:
        backend.close()
    print(f"deleted {deleted} record(s)")
    return 0


def _add_filters(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("which log")
    src.add_argument("--config", metavar="FILE", help="the server's config; its server.audit names the log")
    src.add_argument(
        "--db", metavar="PATH_OR_DSN", help="an audit SQLite file or a postgresql:// DSN instead"
    )
    f = p.add_argument_group("filters")
    f.add_argument("--agent", help="only this agent_id (as sent by the agent)")
    f.add_argument("--episode", help="only this episode_id")
    f.add_argument(
        "--verdict",
        choices=["allow", "substitute", "escalate", "halt"],
        help="only this verdict (shadow-mode would-be verdicts match too)",
    )
    f.add_argument(
        "--since", metavar="TIME", help="from this time: ISO 8601, an age (30m, 12h, 7d) or Unix s"
    )
    f.add_argument("--until", metavar="TIME", help="before this time (same forms as --since)")


def register(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser(
        "audit",
        help="read, export or prune the decision audit log",
        description="The audit log holds every decision other than a plain ALLOW (all of them with "
        "server.audit.record: all), with its observation and action, written before the answer was returned.",
    )
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    q = asub.add_parser(
        "query",
        help="show recent decisions as a table",
        description="Show the newest matching decisions (oldest of them first).",
    )
    _add_filters(q)
    q.add_argument("--limit", type=int, default=50, help="at most this many, the newest (default 50)")
    q.add_argument("--json", action="store_true", help="JSON Lines instead of a table")
    q.set_defaults(func=_cmd_query)

    e = asub.add_parser(
        "export",
        help="print decisions as JSON Lines on stdout, or one agent's transitions as .npz",
        description="One decision a line, oldest first: decision_id, agent_id, verdict, "
        "config_version, time (ISO 8601 UTC), signals, reasons, observation and actions. With --npz: "
        "the transitions of one agent (--agent) instead, for `interlock calibrate --data`: the "
        "observation at step t, the action executed at t and the observation at t + 1 of each episode "
        "(needs the agent to send episode_id and step, and server.audit.record: all).",
        epilog="example: interlock audit export --config interlock.yaml --agent cartpole --since 7d "
        "--npz own_traffic.npz, then: interlock calibrate --config interlock.yaml --agent cartpole "
        "--data own_traffic.npz",
    )
    _add_filters(e)
    e.add_argument("--limit", type=int, default=None, help="at most this many")
    e.add_argument(
        "--npz",
        metavar="OUT.npz",
        default=None,
        help="write the agent's transitions (obs, action, next_obs, episode, step, episode_id) to this "
        ".npz instead of printing decisions; needs --agent",
    )
    e.add_argument("-q", "--quiet", action="store_true", help="with --npz: no progress bar")
    e.set_defaults(func=_cmd_export)

    pr = asub.add_parser(
        "prune", help="delete old records now (the server also applies server.audit.retention)"
    )
    src = pr.add_argument_group("which log")
    src.add_argument("--config", metavar="FILE")
    src.add_argument("--db", metavar="PATH_OR_DSN")
    pr.add_argument("--older-than", metavar="AGE", help="delete records older than this (30m, 12h, 7d)")
    pr.add_argument("--keep", type=int, metavar="N", help="keep only the newest N records")
    pr.set_defaults(func=_cmd_prune)
