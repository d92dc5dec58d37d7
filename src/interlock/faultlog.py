"""Rate-limited logging of a stage that keeps failing (a monitor, a fallback).

A broken model, or an agent that sends what makes it raise, must not write a
traceback per request: that floods the log and the alerts. The first failure is
logged with its traceback (and kept in :attr:`FailureLog.first_traceback`); later
ones are counted and logged as one line per interval.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable

from interlock.errors import shorten


class FailureLog:
    """Counts the failures of one stage and logs them at most once per ``interval`` seconds.

    Args:
        logger: Where to log.
        what: The stage, as it appears in the message ("monitor 'q_doubt'").
        interval: Seconds between two summary lines.
        clock: Monotonic clock (injected by tests).
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.interval = interval
        self.clock = clock
        #: The first failure's formatted traceback (None until something failed).
        self.first_traceback: str | None = None
        #: Failures since construction.
        self.total = 0
        self._unlogged = 0
        self._window_start = 0.0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        """Record one failure; logs the first with its traceback, then one counted line per interval."""
        now = self.clock()
        with self._lock:
            self.total += 1
            if self.first_traceback is None:
                self.first_traceback = "".join(traceback.format_exception(exc))
                self._window_start = now
                first = True
            else:
                first = False
                self._unlogged += 1
                if now - self._window_start < self.interval:
                    return
                count, since = self._unlogged, now - self._window_start
                self._unlogged, self._window_start = 0, now
        if first:
            self.logger.error(
                "%s failed (later failures are counted and logged once per %.0f s)",
                self.what,
                self.interval,
                exc_info=exc,
            )
        else:
            self.logger.error(
                "%s failed %d more times in the last %.0f s (%d in all; latest: %s: %s)",
                self.what,
                count,
                since,
                self.total,
                type(exc).__name__,
                shorten(str(exc), 200),
            )
