"""The ``interlock`` command line; :mod:`interlock.cli.main` builds the parser and states the error rules."""

from __future__ import annotations

# Bound after the submodule import, so ``interlock.cli.main`` here is the function (the console script).
from interlock.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
