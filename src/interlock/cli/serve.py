"""``interlock serve``: run the gRPC guard service (one process, or several sharing the port)."""

from __future__ import annotations

import argparse
import asyncio
import logging


def _cmd_serve(args: argparse.Namespace) -> int:
    from interlock.server.app import serve

    if not args.verbose:
        # A server reports its life at INFO (start, reloads, resolved escalations); other commands stay quiet.
        logging.getLogger("interlock").setLevel(logging.INFO)

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


def register(sub: argparse._SubParsersAction) -> None:
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
