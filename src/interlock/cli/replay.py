"""``interlock replay``: recompute recorded decisions with a new config and report what would change."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from interlock.config import load_config
    from interlock.engine import Guard
    from interlock.replay import read_source, replay

    guard = Guard(load_config(args.config)).load()
    items = list(read_source(args.source))
    if args.limit:
        items = items[-args.limit :]
    with tqdm(total=len(items), desc="replay", unit="decision", disable=args.quiet, file=sys.stderr) as bar:
        report = replay(guard, items, batch=args.batch, examples=args.examples, progress=bar.update)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.format())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "replay",
        help="recompute recorded decisions with a new config and report what would change",
        description="Replay recorded traffic (an audit log or an .npz of observations/actions/agent_ids) "
        "through --config and report verdict transitions, rules fired and examples. Audit logs with "
        "record: non_allow hold no plain ALLOWs; use record: all (or sample_allow) for the full picture.",
    )
    r.add_argument("--config", required=True, metavar="NEW.yaml", help="the config to try")
    r.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="AUDIT_OR_NPZ",
        help="audit SQLite file, postgresql:// DSN, or .npz file",
    )
    r.add_argument("--limit", type=int, default=None, help="only the newest N records")
    r.add_argument("--batch", type=int, default=256, help="requests decided together (default 256)")
    r.add_argument("--examples", type=int, default=10, help="changed decisions to show (default 10)")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_replay)
