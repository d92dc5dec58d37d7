"""Watch pub/sub: every change (opened, answered, expired) to the Operator service's and console's streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from interlock.errors import ResourceExhausted
from interlock.escalation.model import Escalation

#: Changes a watcher may fall behind before it is dropped.
WATCH_QUEUE = 1000
_CLOSED: Any = object()


@dataclass(eq=False)
class _Subscriber:
    agent_id: str
    queue: asyncio.Queue[Any] = field(default_factory=lambda: asyncio.Queue(maxsize=WATCH_QUEUE))
    overflowed: bool = False


class Watchers:
    """The open watch streams. Runs on the event loop only."""

    def __init__(self) -> None:
        self._subscribers: set[_Subscriber] = set()

    def publish(self, rec: Escalation) -> None:
        for sub in list(self._subscribers):
            if sub.agent_id and sub.agent_id != rec.agent_id:
                continue
            try:
                sub.queue.put_nowait(rec)
            except asyncio.QueueFull:
                sub.overflowed = True
                self._subscribers.discard(sub)

    async def watch(
        self,
        pending: Callable[[], Awaitable[list[Escalation]]],
        agent_id: str = "",
        include_pending: bool = False,
        heartbeat: float | None = None,
    ) -> AsyncIterator[Escalation | None]:
        """Every change from now on; first the pending ones (``pending()``) if asked.

        Args:
            pending: Reads every pending escalation (the store's).
            agent_id: Only this agent's escalations ("" for all).
            include_pending: Start with every escalation pending now.
            heartbeat: Yield ``None`` after this many idle seconds (keeps HTTP streams alive).

        Raises:
            ResourceExhausted: the watcher fell ``WATCH_QUEUE`` changes behind.
        """
        sub = _Subscriber(agent_id)
        self._subscribers.add(sub)
        try:
            sent: set[str] = set()
            if include_pending:
                for rec in await pending():
                    if not agent_id or rec.agent_id == agent_id:
                        sent.add(rec.escalation_id)
                        yield rec
            while True:
                if heartbeat is None:
                    rec = await sub.queue.get()
                else:
                    try:
                        rec = await asyncio.wait_for(sub.queue.get(), heartbeat)
                    except asyncio.TimeoutError:
                        yield None
                        continue
                if rec is _CLOSED:
                    return
                if rec.pending and rec.escalation_id in sent:
                    continue  # already sent from the pending list
                yield rec
                if sub.overflowed and sub.queue.empty():
                    raise ResourceExhausted(
                        f"this watcher fell {WATCH_QUEUE} changes behind and was dropped; watch again"
                    )
        finally:
            self._subscribers.discard(sub)

    def stop(self) -> None:
        """End every stream (before shutting down what serves them)."""
        for sub in list(self._subscribers):
            if sub.queue.full():
                sub.queue.get_nowait()
            sub.queue.put_nowait(_CLOSED)
        self._subscribers.clear()
