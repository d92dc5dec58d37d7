"""Expiry: an escalation nobody answered by its deadline becomes EXPIRED (its fail-safe applied)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable

from interlock.errors import InterlockError, NotFound, shorten
from interlock.escalation.index import EscalationIndex
from interlock.escalation.model import Escalation, EscalationState, iso
from interlock.escalation.store import EscalationStore

log = logging.getLogger(__name__)


class Expiry:
    """Expires one escalation on demand, and every overdue one from a background sweeper task.

    Args:
        store: Where the compare-and-set happens (an answer racing the deadline wins or loses there).
        index: The pending escalations and their deadlines.
        clock: Wall-clock seconds.
        finished: Bookkeeping for a record that won the compare-and-set.
        settle: Bookkeeping for a record another process finished (it leaves the index).
    """

    def __init__(
        self,
        store: EscalationStore,
        index: EscalationIndex,
        clock: Callable[[], float],
        finished: Callable[[Escalation], None],
        settle: Callable[[Escalation], None],
    ) -> None:
        self.store = store
        self.index = index
        self.clock = clock
        self.finished = finished
        self.settle = settle
        self._sweeper: asyncio.Task[None] | None = None

    async def expire(self, escalation_id: str) -> Escalation:
        """Mark it EXPIRED unless an answer won; returns the final record either way."""
        rec = await self.store.get(escalation_id)
        if rec is None:
            raise NotFound(f"no escalation '{shorten(escalation_id)}'")
        if not rec.pending:
            self.settle(rec)  # answered elsewhere (another replica): stop sweeping it here
            return rec
        final = dataclasses.replace(
            rec,
            state=EscalationState.EXPIRED,
            resolved_time=self.clock(),
            resolved_action=rec.fallback_action,
            reasons=[
                *rec.reasons,
                f"no operator answered by the deadline {iso(rec.deadline_time)}: "
                f"the fail-safe fallback '{rec.fallback}' applied",
            ],
        )
        if await self.store.finish(final):
            self.finished(final)
            return final
        won = await self.store.get(escalation_id) or final
        self.settle(won)
        return won

    async def expire_due(self) -> None:
        now = self.clock()
        for eid in [e.escalation_id for e in self.index.entries() if e.deadline <= now]:
            try:
                await self.expire(eid)
            except InterlockError as e:
                log.error("escalations: cannot expire %s: %s", eid, e.message)

    async def _sweep(self) -> None:
        while True:
            await self.expire_due()
            now = self.clock()
            nxt = min((e.deadline for e in self.index.entries()), default=now + 0.5)
            await asyncio.sleep(min(max(nxt - now, 0.02), 0.5))

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep(), name="interlock-escalation-sweeper"
        )

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
