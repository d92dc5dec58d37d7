"""Human escalation: open, wait for, answer and expire escalations (the EscalationHandler).

:class:`EscalationManager` wires the parts, one job each: the request path
(:mod:`.requests`), the in-memory index (:mod:`.index`), the expiry sweeper
(:mod:`.expiry`), the operator API (:mod:`.operator`) and watch pub/sub
(:mod:`.watch`). Decisions are changed only in :mod:`.outcome`.

Every ESCALATE decision becomes an escalation in a durable store with its
context (agent, episode, step, observation, proposed action, signals, the
fallback that applies, created time and deadline), unless flood control drops it.

* ``mode: blocking``: the Check waits (without blocking the event loop) until an
  operator answers or the deadline passes; the answer decides the verdict:
  APPROVE -> ALLOW with the proposed action, REJECT -> SUBSTITUTE with the fail-safe
  action, SUBSTITUTE -> SUBSTITUTE with the operator's action; no answer in time ->
  SUBSTITUTE with the fail-safe action and a reason saying so.
* ``mode: deferred``: the Check answers at once with VERDICT_ESCALATE, the fail-safe
  action and the escalation id. While it waits, later escalations of the same
  agent_id and rule attach to it (``while_pending: fallback``), or every decision of
  that agent_id is HALT (``while_pending: halt``). Once answered, the answer applies
  to that agent_id and rule for ``remember_seconds``.

Nothing is acknowledged before the store has committed it: an agent only sees an
escalation id, and an operator only sees a resolution confirmed, once it is on disk.
After a restart pending escalations, deadlines and remembered answers are reloaded.

Several replicas (or ``--workers``) on one store act as one service through the
store's change feed (:meth:`EscalationStore.listen`): an answer given on another
replica wakes the Check blocked here at once, and watchers here see escalations
opened and answered there. The in-memory index stays per replica (flood limits,
held agents and expiry cover the escalations this replica opened); remembered
answers are shared.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import numpy as np

from interlock.config import EscalationConfig
from interlock.errors import InterlockError
from interlock.escalation.expiry import Expiry
from interlock.escalation.index import EscalationIndex
from interlock.escalation.model import Escalation, EscalationState
from interlock.escalation.operator import OperatorApi
from interlock.escalation.requests import RequestPath
from interlock.escalation.store import CREATED, Change, EscalationStore
from interlock.escalation.watch import Watchers
from interlock.types import Decision

if TYPE_CHECKING:
    from interlock.engine import Guard
    from interlock.server.metrics import Metrics

log = logging.getLogger(__name__)

_ANSWERED = (EscalationState.APPROVED, EscalationState.REJECTED, EscalationState.SUBSTITUTED)


class EscalationManager:
    """Implements ``EscalationHandler``; the Operator service and the console answer through it.

    Args:
        store: Durable storage (opened by :meth:`start`).
        metrics: Where escalation counters, the pending gauge and wait times go.
        guard: Returns the current engine (it changes on hot reload).
        max_pending_total: Flood limit over all agents (``escalations.max_pending_total``).
        clock: Wall-clock seconds (deadlines are persisted, so they are wall-clock).
    """

    def __init__(
        self,
        store: EscalationStore,
        metrics: Metrics,
        guard: Callable[[], Guard],
        max_pending_total: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.guard = guard
        self.max_pending_total = max_pending_total
        self.clock = clock
        self.index = EscalationIndex()
        self.watchers = Watchers()
        self.expiry = Expiry(store, self.index, clock, self._finished, self._settle)
        self.requests = RequestPath(
            store, self.index, self.expiry, metrics, self.watchers.publish, clock, max_pending_total
        )
        self.operator = OperatorApi(store, guard, self.expiry, clock, self._finished)
        #: Other processes' changes waiting to be applied here (None: re-read what we hold).
        self._changes: asyncio.Queue[list[Change] | None] | None = None
        self._follower: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the store, reload pending escalations and remembered answers, expire overdue ones."""
        await self.store.open()
        now = self.clock()
        for rec in await self.store.pending():
            self.index.add(rec)
        longest = max((a.config.escalation.remember for a in self.guard().agents), default=0.0)
        if longest > 0:
            for rec in await self.store.resolved_since(now - longest):
                self._remember(rec)
        self.metrics.escalations_pending.set(len(self.index))
        await self.expiry.expire_due()
        self.expiry.start()
        self._changes = asyncio.Queue()
        self._follower = asyncio.get_running_loop().create_task(
            self._follow(self._changes), name="interlock-escalation-follower"
        )
        await self.store.listen(self._changes.put_nowait)
        log.info("escalations: %d pending after start", len(self.index))

    async def close(self) -> None:
        await self.expiry.stop()
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        self.stop_watchers()
        await self.store.close()

    # ------------------------------------------------------------------ the request path

    def idle(self) -> bool:
        """No escalation is pending: :meth:`handle` changes only ESCALATE decisions (CheckColumns then
        builds per-row decisions for those rows alone)."""
        return self.requests.index.empty

    async def handle(self, guard: Guard, decisions: list[Decision]) -> None:
        """Update decisions in place: halt held agents, apply remembered answers, open and wait."""
        await self.requests.handle(guard, decisions)

    # ------------------------------------------------------------------ operator side
    # These delegate to OperatorApi with its signatures: the manager is the one entry point servicers hold.

    async def get(self, escalation_id: str) -> Escalation:
        """One escalation; raises NotFound."""
        return await self.operator.get(escalation_id)

    async def list(
        self, state: int = 0, agent_id: str = "", limit: int = 0, resolved: bool = False
    ) -> list[Escalation]:
        """Newest first; ``limit`` 0 is 100, at most 1000; ``resolved`` skips pending ones."""
        return await self.operator.list(state, agent_id, limit, resolved)

    async def resolve(
        self,
        escalation_id: str,
        resolution: int,
        action: np.ndarray | None = None,
        operator: str = "",
        comment: str = "",
        authenticated_as: str = "",
    ) -> Escalation:
        """Answer an escalation, final and idempotent (see :meth:`OperatorApi.resolve`)."""
        return await self.operator.resolve(
            escalation_id, resolution, action, operator, comment, authenticated_as
        )

    # ------------------------------------------------------------------ watching

    def watch(
        self, agent_id: str = "", include_pending: bool = False, heartbeat: float | None = None
    ) -> AsyncIterator[Escalation | None]:
        """Every change (opened, answered, expired) from now on (see :meth:`Watchers.watch`)."""
        return self.watchers.watch(self.store.pending, agent_id, include_pending, heartbeat)

    def stop_watchers(self) -> None:
        """End every watch() stream (before shutting down what serves them)."""
        self.watchers.stop()

    @property
    def pending_count(self) -> int:
        return len(self.index)

    # ------------------------------------------------------------------ bookkeeping

    def _config(self, agent_id: str) -> EscalationConfig:
        try:
            return self.guard().agent(agent_id).config.escalation
        except InterlockError:
            return EscalationConfig(remember_seconds=0)

    def _label(self, agent_id: str) -> str:
        try:
            return self.guard().agent(agent_id).config.id
        except InterlockError:
            return agent_id

    def _remember(self, rec: Escalation) -> None:
        seconds = self._config(rec.agent_id).remember
        if seconds > 0 and rec.state in _ANSWERED:
            until = rec.resolved_time + seconds
            if until > self.clock():
                self.index.remember(rec, until)

    def _settle(self, rec: Escalation) -> None:
        """Apply a final record here: leave the index, remember the answer, wake the waiting Check.

        Idempotent; counts nothing (the process whose compare-and-set won counts, in :meth:`_finished`).
        """
        entry = self.index.remove(rec.escalation_id)
        if entry is not None:
            self.metrics.escalations_pending.set(len(self.index))
        self._remember(rec)
        if entry is not None and entry.waiter is not None and not entry.waiter.done():
            entry.waiter.set_result(rec)

    async def _follow(self, changes: asyncio.Queue[builtins.list[Change] | None]) -> None:
        """Apply other processes' changes, one batch at a time, in the order they committed."""
        while True:
            batch = await changes.get()
            try:
                if batch is None:
                    await self._resync()
                    continue
                for change in batch:
                    rec = await self.store.get(change.escalation_id)
                    if rec is None:
                        continue  # another deployment's table on the same channel
                    if change.kind == CREATED:
                        if rec.pending:  # else its FINISHED change follows and publishes it
                            self.watchers.publish(rec)
                    elif not rec.pending:
                        self._settle(rec)
                        self.watchers.publish(rec)
            except InterlockError as e:  # the store failed: blocked Checks still end at their deadline
                log.error("escalations: cannot apply another replica's change: %s", e.message)

    async def _resync(self) -> None:
        """Settle every escalation held here that another process finished while we were not listening."""
        if not len(self.index):
            return
        still = {rec.escalation_id for rec in await self.store.pending()}
        for entry in self.index.entries():
            if entry.escalation_id not in still:
                rec = await self.store.get(entry.escalation_id)
                if rec is not None and not rec.pending:
                    self._settle(rec)
                    self.watchers.publish(rec)

    def _finished(self, rec: Escalation) -> None:
        """Bookkeeping after ``rec`` won the store's compare-and-set."""
        outcome = rec.state.label
        self.metrics.escalations.labels(agent=self._label(rec.agent_id), outcome=outcome).inc()
        self.metrics.escalation_wait.observe(max(0.0, rec.resolved_time - rec.created_time))
        self._settle(rec)
        self.metrics.escalations_pending.set(len(self.index))
        self.watchers.publish(rec)
        log.info(
            "escalation %s (agent %s, rule %s) %s by %s",
            rec.escalation_id,
            rec.agent_id,
            rec.rule,
            outcome,
            rec.operator or "deadline",
        )
