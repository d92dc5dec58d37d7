"""The ``interlock`` command line.

Subcommands are registered by modules listed in :data:`COMMAND_MODULES`; each
exposes ``register(subparsers)``, so features add commands without editing the
core parser.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Sequence

from interlock import __version__
from interlock.errors import ConfigError

#: Modules that add subcommands (each has ``register(subparsers)``).
COMMAND_MODULES: list[str] = [
    "interlock.demo",
    "interlock.bench",
    "interlock.cli_ops",
    "interlock.cli_escalations",
    "interlock.reachability.cli",
    "interlock.cli_ensemble",
]


def _cmd_serve(args: argparse.Namespace) -> int:
    from interlock.server.app import serve

    if args.workers > 1:
        from interlock.server.workers import serve_workers

        mport = -1 if args.metrics_port is None else args.metrics_port
        cport = -1 if args.console_port is None else args.console_port
        return serve_workers(args.config, args.workers, args.host, args.port, mport, args.verbose, cport)
    asyncio.run(
        serve(
            args.config,
            host=args.host,
            port=args.port,
            metrics_port=-1 if args.metrics_port is None else args.metrics_port,
            console_port=-1 if args.console_port is None else args.console_port,
        )
    )
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interlock",
        description="Interlock: a runtime safety layer for RL agents. Agents ask it before every action; "
        "it answers ALLOW, SUBSTITUTE (a safer action), ESCALATE (ask a human) or HALT.",
    )
    parser.add_argument("--version", action="version", version=f"interlock {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the gRPC guard service",
        description="Serve the Guard service (plus gRPC health and reflection) for a config. "
        "SIGHUP (or, with server.reload.watch, a changed config or model file) reloads the config "
        "without downtime; SIGTERM drains, finishes in-flight calls, flushes the audit log and exits.",
    )
    serve.add_argument("--config", required=True, metavar="FILE", help="the Interlock YAML config")
    serve.add_argument("--host", default=None, help="address to bind (default: server.host in the config)")
    serve.add_argument(
        "--port", type=int, default=None, help="gRPC port (default: server.port; 0 = any free)"
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Prometheus /metrics port (default: server.metrics_port)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the port via SO_REUSEPORT (one per core; Python serves about one "
        "core per process); metrics of all workers are summed on the metrics port",
    )
    serve.add_argument(
        "--console-port",
        type=int,
        default=None,
        help="operator web console port (default: server.console_port; 0 = any free)",
    )
    serve.set_defaults(func=_cmd_serve)

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

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"interlock: config error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
