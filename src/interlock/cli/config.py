"""``interlock config check|schema``: validate a config file or print its JSON Schema."""

from __future__ import annotations

import argparse


def _cmd_config_check(args: argparse.Namespace) -> int:
    from interlock.config import load_config
    from interlock.engine import Guard

    loaded = load_config(args.file)
    guard = Guard(loaded)  # compiles every rule: CEL errors surface here
    if not args.no_models:
        guard.load()
    agents = ", ".join(a.id for a in loaded.config.agents)
    print(f"{args.file}: OK (version {loaded.version}; agents: {agents})")
    return 0


def _cmd_config_schema(args: argparse.Namespace) -> int:
    from interlock.config import json_schema

    print(json_schema())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="validate a config or print its JSON Schema")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = csub.add_parser(
        "check",
        help="validate a config file (keys, CEL rules, models)",
        description="Load and compile a config: reports the file, key path and problem.",
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument("--no-models", action="store_true", help="skip loading ONNX models")
    check.set_defaults(func=_cmd_config_check)
    schema = csub.add_parser("schema", help="print the JSON Schema of the config file")
    schema.set_defaults(func=_cmd_config_schema)
