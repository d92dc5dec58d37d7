"""The request path around the engine: escalation, audit and metrics (no gRPC here).

Servicers call :meth:`GuardService.check`; tests can call it directly. The
engine (``Guard``) is swappable at run time so that a reload replaces the whole
config atomically: a request sees exactly one config version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from interlock.config import BatchingConfig
from interlock.engine import ColumnDecisions, Guard
from interlock.errors import InterlockError
from interlock.escalation import outcome
from interlock.server.batcher import MicroBatcher
from interlock.server.metrics import Metrics
from interlock.stagetimes import StageTimes
from interlock.types import CheckInput, Decision, Verdict

if TYPE_CHECKING:
    from interlock.server.tracing import DecisionTracer

log = logging.getLogger(__name__)


class EscalationHandler(Protocol):
    """Routes ESCALATE decisions to people (see :mod:`interlock.escalation.manager`)."""

    async def handle(self, guard: Guard, decisions: list[Decision]) -> None:
        """Update decisions in place: open escalations, wait (blocking mode), apply standing answers."""

    def idle(self) -> bool:
        """No escalation is pending: :meth:`handle` leaves decisions that are not ESCALATE alone."""


class AuditSink(Protocol):
    """Durable decision log (see ``interlock.audit``)."""

    async def record(self, decisions: Sequence[Decision]) -> None:
        """Persist decisions before their answers are returned."""


class GuardService:
    """Engine plus the cross-cutting work every decision goes through.

    Args:
        guard: The loaded engine.
        metrics: Where to count decisions and rejections.
        escalations: Optional handler for ESCALATE verdicts; without one the
            fail-safe action applies at once with a reason saying so.
        audit: Optional durable log, written before answers are returned.
        batching: Micro-batch concurrent single-request checks (off when max_delay_ms is 0).
        tracer: OpenTelemetry spans per decision (``server.tracing``); None: tracing off.
    """

    def __init__(
        self,
        guard: Guard,
        metrics: Metrics | None = None,
        escalations: EscalationHandler | None = None,
        audit: AuditSink | None = None,
        batching: BatchingConfig | None = None,
        tracer: DecisionTracer | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.tracer = tracer
        self.escalations = escalations
        self.audit = audit
        self.guard = guard
        self.metrics.set_config_version(guard.version)
        self.batcher = (
            MicroBatcher(
                lambda: self.guard, batching.max_batch, batching.max_delay_ms, timed=tracer is not None
            )
            if batching is not None and batching.max_delay_ms > 0
            else None
        )

    def swap(self, guard: Guard) -> Guard:
        """Atomically replace the engine (hot reload); returns the old one."""
        old, self.guard = self.guard, guard
        self.metrics.set_config_version(guard.version)
        return old

    async def check(
        self,
        items: Sequence[CheckInput],
        indexed: bool = False,
        columns: tuple[np.ndarray, np.ndarray] | None = None,
        trace_parent: Any = None,
    ) -> list[Decision]:
        """Decide ``items`` in order; raises InterlockError for malformed requests (counted).

        ``columns``: the items' observations and actions already stacked (``[n, *obs_shape]``,
        ``[n, *action_shape]``, one agent), passed on to :meth:`Guard.check`.
        ``trace_parent``: the caller's trace context (``tracer.extract`` of the request metadata).
        """
        start = time.perf_counter()
        trace = self.tracer.start(trace_parent) if self.tracer is not None else None
        guard = self.guard  # one config version for the whole call
        try:
            if self.batcher is not None and len(items) == 1 and not indexed:
                decisions = [await self.batcher.submit(items[0])]
                guard = self.guard
            else:
                times = StageTimes() if trace is not None else None
                decisions = guard.check(items, indexed=indexed, columns=columns, times=times)
        except InterlockError as e:
            self.metrics.reject(e.reason)
            raise
        try:
            if any(d.verdict is Verdict.ESCALATE for d in decisions) or self.escalations is not None:
                if trace is not None:
                    trace.begin_escalation(decisions)
                await self._escalate(guard, decisions)
                if trace is not None:
                    trace.end()
            if self.audit is not None:
                if trace is not None:
                    trace.begin("interlock.audit.commit")
                await self.audit.record(decisions)
                if trace is not None:
                    trace.end()
        except BaseException as e:
            if trace is not None:
                self.tracer.emit(trace, decisions, e)  # type: ignore[union-attr]
            raise
        if trace is not None:
            self.tracer.emit(trace, decisions)  # type: ignore[union-attr]
        labels = [guard.agent(d.agent_id).config.id for d in decisions]
        self.metrics.record(decisions, labels, time.perf_counter() - start)
        return decisions

    async def check_columns(
        self,
        agent_id: str,
        observations: np.ndarray,
        actions: np.ndarray,
        episode_ids: Sequence[str] = (),
        steps: Sequence[int] = (),
        labels: dict[str, str] | None = None,
    ) -> ColumnDecisions:
        """Decide the rows of one agent given as columns; the same escalation, audit and metrics as
        :meth:`check` gives each row, with per-row objects only for the rows that need them."""
        start = time.perf_counter()
        guard = self.guard
        try:
            cd = guard.check_columns(agent_id, observations, actions, episode_ids, steps, labels)
        except InterlockError as e:
            self.metrics.reject(e.reason)
            raise
        for unchecked in cd.unchecked.values():
            self.metrics.reject(unchecked.reason)
        checked = (
            np.flatnonzero(~np.isin(np.arange(len(cd)), list(cd.unchecked)))
            if cd.unchecked
            else np.arange(len(cd))
        )
        escalating = bool((cd.verdicts[checked] == int(Verdict.ESCALATE)).any())
        if self.escalations is not None:
            idle = getattr(self.escalations, "idle", None)
            # A pending escalation can hold an agent's other rows too (deferred mode): they go through.
            if escalating or idle is None or not idle():
                await self._per_row(guard, cd, checked, self._escalate)
        elif escalating:
            rows = checked[cd.verdicts[checked] == int(Verdict.ESCALATE)]
            await self._per_row(guard, cd, rows, self._escalate)
        if self.audit is not None:
            cfg = getattr(self.audit, "cfg", None)
            every = cfg is None or cfg.record == "all" or cfg.sample_allow > 0
            rows = checked if every else checked[cd.needs_detail()[checked]]
            if len(rows):
                await self.audit.record([cd.decision(i) for i in rows.tolist()])
        label = guard.agent(agent_id).config.id
        errors = (
            cd.errors if not cd.unchecked else {i: e for i, e in cd.errors.items() if i not in cd.unchecked}
        )
        self.metrics.record_columns(
            label,
            cd.verdicts[checked],
            cd.rules[checked],
            cd.rule_names,
            errors,
            cd.shadow[checked] if cd.shadow is not None else None,
            time.perf_counter() - start,
        )
        return cd

    @staticmethod
    async def _per_row(guard: Guard, cd: ColumnDecisions, rows: np.ndarray, handle) -> None:
        """Run ``handle(guard, decisions)`` on the given rows as Decisions and write them back."""
        at = rows.tolist()
        decisions = [cd.decision(i) for i in at]
        await handle(guard, decisions)
        for i, d in zip(at, decisions, strict=True):
            cd.put(i, d)

    async def _escalate(self, guard: Guard, decisions: list[Decision]) -> None:
        if self.escalations is not None:
            await self.escalations.handle(guard, decisions)
            return
        for d in decisions:
            if d.verdict is Verdict.ESCALATE:
                outcome.no_operator_channel(d)
