"""The request path: ESCALATE decisions become escalations; held agents halt; standing answers apply."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from interlock.config import EscalationConfig
from interlock.errors import InterlockError
from interlock.escalation import outcome
from interlock.escalation.expiry import Expiry
from interlock.escalation.index import EscalationIndex
from interlock.escalation.model import Escalation, EscalationState, Signal, new_escalation_id
from interlock.escalation.store import EscalationStore
from interlock.types import Decision, Verdict

if TYPE_CHECKING:
    from interlock.engine import Guard
    from interlock.server.metrics import Metrics

log = logging.getLogger(__name__)


class RequestPath:
    """Opens, attaches to and waits for escalations on behalf of decisions (``EscalationHandler.handle``).

    Args:
        store: Durable storage; nothing is acknowledged before it commits.
        index: Pending escalations and remembered answers.
        expiry: Expires a blocking escalation whose deadline passed while the Check waited.
        metrics: Escalation counters, the pending gauge, internal errors.
        publish: Tells watchers about a new escalation.
        clock: Wall-clock seconds.
        max_pending_total: Flood limit over all agents.
    """

    def __init__(
        self,
        store: EscalationStore,
        index: EscalationIndex,
        expiry: Expiry,
        metrics: Metrics,
        publish: Callable[[Escalation], None],
        clock: Callable[[], float],
        max_pending_total: int,
    ) -> None:
        self.store = store
        self.index = index
        self.expiry = expiry
        self.metrics = metrics
        self.publish = publish
        self.clock = clock
        self.max_pending_total = max_pending_total

    async def handle(self, guard: Guard, decisions: list[Decision]) -> None:
        """Update decisions in place: halt held agents, apply remembered answers, open and wait."""
        if self.index.empty and all(d.verdict is not Verdict.ESCALATE for d in decisions):
            return
        now = self.clock()
        opened: list[tuple[Decision, Escalation, EscalationConfig]] = []
        for d in decisions:
            rt = guard.agent(d.agent_id)
            cfg = rt.config.escalation
            if cfg.mode == "deferred" and cfg.while_pending == "halt":
                held = self.index.held_by(d.agent_id)
                if held is not None:
                    outcome.hold(rt, d, held)
                    continue
            if d.verdict is not Verdict.ESCALATE:
                continue
            known = self.index.remembered(d.agent_id, d.rule, now)
            if known is not None:
                outcome.apply_answer(d, known, remembered=True)
                continue
            waiting = self.index.open_for(d.agent_id, d.rule) if cfg.mode == "deferred" else None
            if waiting is not None:
                outcome.attach(d, waiting)
                continue
            label = rt.config.id
            if self.index.count_for(d.agent_id) >= cfg.max_pending:
                self._drop(
                    d,
                    label,
                    f"agent '{d.agent_id}' already has {cfg.max_pending} pending escalations "
                    "(escalation.max_pending)",
                )
                continue
            if len(self.index) >= self.max_pending_total:
                self._drop(
                    d,
                    label,
                    f"{self.max_pending_total} escalations are already pending "
                    "(escalations.max_pending_total)",
                )
                continue
            rec = self._record(d, cfg, now)
            self.index.add(rec)
            opened.append((d, rec, cfg))
        if not opened:
            return
        try:
            await self.store.create([rec for _, rec, _ in opened])
        except Exception as e:  # fail closed: the fail-safe applies, nothing is acknowledged
            why = e.message if isinstance(e, InterlockError) else f"{type(e).__name__}: {e}"
            log.error("escalations: cannot store %d new escalations: %s", len(opened), why)
            for d, rec, _ in opened:
                self.index.remove(rec.escalation_id)
                label = guard.agent(d.agent_id).config.id
                self.metrics.internal_errors.labels(agent=label, stage="escalation_store").inc()
                self._drop(d, label, f"the escalation store failed ({why})")
            return
        self.metrics.escalations_pending.set(len(self.index))
        waits = []
        for d, rec, cfg in opened:
            self.publish(rec)
            d.escalation_id = rec.escalation_id
            if cfg.mode == "deferred":
                outcome.deferred(d, rec)
            else:
                waits.append(self._wait(d, rec))
        if waits:
            await asyncio.gather(*waits)

    def _drop(self, d: Decision, label: str, why: str) -> None:
        self.metrics.escalations.labels(agent=label, outcome="dropped").inc()
        outcome.drop(d, why)

    @staticmethod
    def _record(d: Decision, cfg: EscalationConfig, now: float) -> Escalation:
        return Escalation(
            escalation_id=new_escalation_id(),
            agent_id=d.agent_id,
            episode_id=d.episode_id,
            step=d.step,
            observation=d.observation,
            proposed_action=d.proposed_action,
            signals=[Signal(n, v, t, tr) for n, v, t, tr in d.signals],
            state=EscalationState.PENDING,
            fallback=d.fallback,
            fallback_action=d.action,
            created_time=now,
            deadline_time=now + cfg.timeout_seconds,
            reasons=list(d.reasons),
            labels=dict(d.labels),
            rule=d.rule,
            decision_id=d.decision_id,
            mode=cfg.mode,
            config_version=d.config_version,
        )

    async def _wait(self, d: Decision, rec: Escalation) -> None:
        entry = self.index.get(rec.escalation_id)
        final: Escalation | None = None
        if entry is not None and entry.waiter is not None:
            remaining = max(0.0, rec.deadline_time - self.clock())
            with contextlib.suppress(asyncio.TimeoutError):
                final = await asyncio.wait_for(asyncio.shield(entry.waiter), remaining)
        if final is None:
            final = await self.expiry.expire(rec.escalation_id)
        outcome.apply_answer(d, final)
