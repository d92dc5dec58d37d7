"""The ``interlock`` command line: one parser, one subcommand module each.

Subcommands: ``serve``, ``config``, ``audit``, ``replay``, ``escalations``, ``ensemble`` (and
``calibrate``), ``shield``, ``demo``, ``bench``; each module in :mod:`interlock.cli` has
``register(subparsers)``.

Error convention (every subcommand): a command reports a failure by raising, never by printing
and returning a code, and :func:`main` turns it into one line on stderr and an exit status:

* :class:`~interlock.cli.errors.UsageError` (a bad flag value, an unknown name) and
  :class:`~interlock.errors.ConfigError` (the config or another input file is wrong):
  ``interlock: MESSAGE`` (``interlock: config error: MESSAGE``), exit status 2, as argparse does
  for its own usage errors;
* :class:`~interlock.cli.errors.CliError` and any other :class:`~interlock.errors.InterlockError`
  (the work itself failed: a server refused, nothing to build): ``interlock: MESSAGE``, exit status 1;
* Ctrl-C: exit status 130.

A command that ran but found problems (``bench safety`` with a failed scenario) returns 1 itself.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from interlock import __version__
from interlock.cli import audit, bench, config, demo, ensemble, escalations, replay, serve, shield
from interlock.cli.errors import CliError, UsageError
from interlock.errors import ConfigError, InterlockError

#: Subcommand modules in the order ``interlock --help`` lists them.
COMMANDS = (serve, config, demo, bench, audit, replay, escalations, shield, ensemble)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interlock",
        description="Interlock: a runtime safety layer for RL agents. Agents ask it before every action; "
        "it answers ALLOW, SUBSTITUTE (a safer action), ESCALATE (ask a human) or HALT.",
    )
    parser.add_argument("--version", action="version", version=f"interlock {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
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
    except CliError as e:
        print(f"interlock: {e.message}", file=sys.stderr)
        return e.exit_code
    except InterlockError as e:
        print(f"interlock: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


__all__ = ["CliError", "UsageError", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
