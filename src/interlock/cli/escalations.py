"""``interlock escalations``: list, inspect and answer escalations from a terminal.

Examples:
    export INTERLOCK_OPERATOR_TOKEN=...          # or --token-file FILE
    interlock escalations list
    interlock escalations show esc-0123abcd
    interlock escalations approve esc-0123abcd --comment "path is clear"
    interlock escalations substitute esc-0123abcd --action 0
    interlock escalations watch
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import time
from pathlib import Path
from typing import Any

import grpc

from interlock.cli.errors import CliError, UsageError
from interlock.errors import ConfigError
from interlock.escalation.convert import FRAME_LABEL, from_pb
from interlock.escalation.convert import escalation_dict as _plain_dict
from interlock.escalation.model import Escalation, EscalationState, Resolution
from interlock.tokens import read_token_file

DEFAULT_TARGET = "127.0.0.1:50051"
#: ``--state`` choices: every state by name, and "all".
STATES = {"all": int(EscalationState.UNSPECIFIED), **{k: int(v) for k, v in EscalationState.named().items()}}


def escalation_dict(e: Escalation) -> dict[str, Any]:
    """JSON-friendly view (``--json``); a frame label is replaced by its size."""
    d = _plain_dict(e)
    if FRAME_LABEL in d["labels"]:
        d["labels"][FRAME_LABEL] = f"<{len(d['labels'][FRAME_LABEL])} base64 characters>"
    return d


def _list(array: Any) -> Any:
    return None if array is None else array.tolist()


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _deadline(e: Escalation) -> str:
    if not e.pending:
        return "-"
    left = e.deadline_time - time.time()
    return f"{left:.1f}s left" if left > 0 else "due"


def _short(value: Any, width: int = 28) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(rows: list[Escalation]) -> None:
    if not rows:
        print("no escalations")
        return
    head = ("ID", "STATE", "AGENT", "RULE", "CREATED", "DEADLINE", "PROPOSED", "OPERATOR")
    body = [
        (
            e.escalation_id,
            e.state.label,
            e.agent_id,
            e.rule,
            _when(e.created_time),
            _deadline(e),
            _short(_list(e.proposed_action)),
            e.operator,
        )
        for e in rows
    ]
    widths = [max(len(str(r[i])) for r in (head, *body)) for i in range(len(head))]
    for r in (head, *body):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def print_detail(e: Escalation) -> None:
    d = escalation_dict(e)
    print(f"escalation {e.escalation_id}: {d['state']} ({e.mode or 'unknown'} mode)")
    print(f"  agent     {e.agent_id}   episode {e.episode_id or '-'}   step {e.step}")
    print(f"  rule      {e.rule}")
    print(f"  created   {_when(e.created_time)}   deadline {_when(e.deadline_time)} ({_deadline(e)})")
    obs = e.observation
    if obs is not None:
        print(f"  observation {list(obs.shape)} {obs.dtype.name}:")
        for i, v in enumerate(obs.reshape(-1).tolist()):
            print(f"    [{i}] {v:.6g}" if isinstance(v, float) else f"    [{i}] {v}")
    print(f"  proposed action  {json.dumps(d['proposed_action'])}")
    print(f"  fail-safe        {e.fallback!r} -> {json.dumps(d['fallback_action'])}")
    if e.signals:
        print("  signals:")
        w = max(len(s.name) for s in e.signals)
        for s in e.signals:
            mark = "TRIPPED" if s.tripped else ""
            print(f"    {s.name.ljust(w)}  {s.value:>10.4g}  threshold {s.threshold:<10.4g} {mark}".rstrip())
    for r in e.reasons:
        print(f"  reason    {r}")
    for k, v in d["labels"].items():
        print(f"  label     {k} = {v}")
    if not e.pending:
        who = e.operator or "the deadline"
        if e.authenticated_as and e.authenticated_as != e.operator:
            who += f" (credential {e.authenticated_as})"
        print(f"  resolved  {d['state']} by {who} at {_when(e.resolved_time)}")
        print(f"  executed  {json.dumps(d['resolved_action'])}")
        if e.comment:
            print(f"  comment   {e.comment}")


# --------------------------------------------------------------------------- plumbing


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _client(args: argparse.Namespace):
    from interlock.client.operator import OPERATOR_TOKEN_ENV, OperatorClient

    token = args.token
    if args.token_file:
        try:
            tokens = read_token_file(Path(args.token_file), lambda n: f"line {n}", what="the token file")
        except ConfigError as e:
            raise UsageError(e.message) from None
        if not tokens:
            raise UsageError(f"the token file {args.token_file} holds no token")
        token = tokens[0][1]
    token = token or os.environ.get(OPERATOR_TOKEN_ENV) or None
    creds = None
    if args.tls_ca or args.tls_cert:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise UsageError("--tls-cert and --tls-key go together (the client certificate and its key)")
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(args.tls_ca, "the CA file"),
            private_key=_read(args.tls_key, "the key file"),
            certificate_chain=_read(args.tls_cert, "the certificate file"),
        )
    if token is None and creds is None:
        raise UsageError(
            f"no operator credential: set ${OPERATOR_TOKEN_ENV}, or pass --token-file FILE "
            "(or --tls-cert/--tls-key for mTLS)"
        )
    return OperatorClient(args.target, token=token or "", credentials=creds, timeout=args.timeout)


def _operator(args: argparse.Namespace) -> str:
    if args.operator:
        return args.operator
    try:
        return getpass.getuser()
    except Exception:
        return ""


def _cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as ops:
        rows = [from_pb(e) for e in ops.list(STATES[args.state], args.agent or "", args.limit)]
    if args.json:
        print(json.dumps([escalation_dict(e) for e in rows], indent=2))
    else:
        print_table(rows)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as ops:
        e = from_pb(ops.get(args.id))
    if args.json:
        print(json.dumps(escalation_dict(e), indent=2))
    else:
        print_detail(e)
    return 0


def _resolve(args: argparse.Namespace, resolution: int, action: Any = None) -> int:
    with _client(args) as ops:
        e = from_pb(ops.resolve(args.id, resolution, action, _operator(args), args.comment or ""))
    if args.json:
        print(json.dumps(escalation_dict(e), indent=2))
    else:
        executed = json.dumps(_list(e.resolved_action))
        print(f"{e.escalation_id}: {e.state.label} by {e.operator}; the agent executes {executed}")
    return 0


def _cmd_approve(args: argparse.Namespace) -> int:
    return _resolve(args, Resolution.APPROVE)


def _cmd_reject(args: argparse.Namespace) -> int:
    return _resolve(args, Resolution.REJECT)


def _cmd_substitute(args: argparse.Namespace) -> int:
    try:
        action = json.loads(args.action)
    except json.JSONDecodeError:
        raise UsageError(
            f"--action {args.action!r} is not JSON: use an integer for discrete actions (--action 0) "
            "or a list for box actions (--action '[0.5, -0.2]')"
        ) from None
    if isinstance(action, bool) or not isinstance(action, int | float | list):
        raise UsageError("--action must be a number or a list of numbers")
    return _resolve(args, Resolution.SUBSTITUTE, action)


def _cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as ops:
        stream = ops.watch(args.agent or "", include_pending=not args.no_pending)
        try:
            for msg in stream:
                e = from_pb(msg)
                if args.json:
                    print(json.dumps(escalation_dict(e)), flush=True)
                else:
                    d = escalation_dict(e)
                    extra = (
                        f"deadline {_deadline(e)}" if d["state"] == "pending" else f"by {e.operator or '-'}"
                    )
                    print(
                        f"{time.strftime('%H:%M:%S')} {e.escalation_id} {d['state']:<11} {e.agent_id} "
                        f"rule={e.rule} proposed={json.dumps(d['proposed_action'])} {extra}",
                        flush=True,
                    )
        except KeyboardInterrupt:
            stream.cancel()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``interlock escalations ...``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--target",
        default=os.environ.get("INTERLOCK_TARGET", DEFAULT_TARGET),
        help=f"host:port of the Interlock server (default: $INTERLOCK_TARGET or {DEFAULT_TARGET})",
    )
    common.add_argument(
        "--token",
        default=None,
        help="operator token (default: $INTERLOCK_OPERATOR_TOKEN; prefer the variable or --token-file, "
        "a flag is visible to other users in the process list)",
    )
    common.add_argument(
        "--token-file", default=None, metavar="FILE", help="read the operator token from FILE"
    )
    common.add_argument("--tls-ca", default=None, metavar="PEM", help="CA certificate to verify a TLS server")
    common.add_argument("--tls-cert", default=None, metavar="PEM", help="client certificate (mTLS)")
    common.add_argument("--tls-key", default=None, metavar="PEM", help="client key (mTLS)")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    answer = argparse.ArgumentParser(add_help=False)
    answer.add_argument("id", help="the escalation id (esc-...)")
    answer.add_argument("--comment", default="", help="why; stored with the resolution")
    answer.add_argument("--operator", default="", help="your name (default: your login name)")

    esc = subparsers.add_parser(
        "escalations",
        help="list, inspect and answer escalations (operators)",
        description="Answer the escalations Interlock raised. Needs an operator token "
        "($INTERLOCK_OPERATOR_TOKEN or --token-file). Resolutions are final: approve lets the "
        "proposed action go ahead, reject applies the fail-safe fallback, substitute applies your action.",
    )
    sub = esc.add_subparsers(dest="escalations_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", parents=[common], help="list escalations (pending by default)")
    p.add_argument("--state", choices=list(STATES), default="pending", help="which ones (default: pending)")
    p.add_argument("--agent", default="", help="only this agent_id")
    p.add_argument("--limit", type=int, default=0, help="at most this many, newest first (default 100)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", parents=[common], help="one escalation with its full context")
    p.add_argument("id", help="the escalation id (esc-...)")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("approve", parents=[common, answer], help="let the proposed action go ahead")
    p.set_defaults(func=_cmd_approve)
    p = sub.add_parser("reject", parents=[common, answer], help="apply the fail-safe fallback")
    p.set_defaults(func=_cmd_reject)
    p = sub.add_parser(
        "substitute",
        parents=[common, answer],
        help="apply your own action (checked against the agent's action space)",
    )
    p.add_argument(
        "--action", required=True, help="JSON: an integer for discrete actions, a list for box actions"
    )
    p.set_defaults(func=_cmd_substitute)

    p = sub.add_parser(
        "watch", parents=[common], help="print escalations as they open and close (Ctrl-C stops)"
    )
    p.add_argument("--agent", default="", help="only this agent_id")
    p.add_argument("--no-pending", action="store_true", help="skip the ones already pending")
    p.set_defaults(func=_cmd_watch)

    _install_error_handler(sub)


def _install_error_handler(sub: argparse._SubParsersAction) -> None:
    """Wrap every subcommand so that an RPC error becomes one clear CliError line (exit 1)."""
    for parser in sub.choices.values():
        func = parser.get_default("func")
        parser.set_defaults(func=_friendly(func))


def _friendly(func):
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except grpc.RpcError as e:
            code = e.code()
            hint = ""
            if code == grpc.StatusCode.UNAVAILABLE:
                hint = f" (is `interlock serve` running at {args.target}? set --target)"
            elif code == grpc.StatusCode.UNIMPLEMENTED:
                hint = " (this server has no escalations: no rule escalates and no 'escalations:' section)"
            raise CliError(f"escalations: {code.name}: {e.details()}{hint}") from None

    return run
