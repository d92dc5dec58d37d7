"""The current call's deadline, visible to the whole request path without passing it along.

The transport (:class:`interlock.server.limits.ServerLimits`) sets it per call; waits on
the request path (the audit commit, a blocking escalation) read :func:`time_remaining` so
that they end when the caller stops listening. Outside a call there is no deadline.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

#: Monotonic time at which the current call's deadline passes (None: no deadline).
_DEADLINE: ContextVar[float | None] = ContextVar("interlock_deadline", default=None)


def set_deadline(remaining: float | None) -> None:
    """Start the current call's deadline ``remaining`` seconds from now (None: no deadline)."""
    _DEADLINE.set(None if remaining is None else time.monotonic() + remaining)


def time_remaining() -> float | None:
    """Seconds until the current call's deadline, or None when the caller set none."""
    d = _DEADLINE.get()
    return None if d is None else d - time.monotonic()
