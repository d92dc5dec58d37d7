"""The command line's one error convention (see :mod:`interlock.cli.main`)."""

from __future__ import annotations


class CliError(Exception):
    """A command failed at run time: ``interlock: MESSAGE`` on stderr, exit status 1."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CliError):
    """The command was asked for something it cannot do (bad flag value, unknown name): exit status 2."""

    exit_code = 2
