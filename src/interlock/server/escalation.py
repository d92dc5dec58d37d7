"""Human escalation: open, wait for, answer and expire escalations (the EscalationHandler).

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from interlock.config import EscalationConfig
from interlock.engine import AgentRuntime, Decision, Guard, Verdict
from interlock.errors import (
    FailedPrecondition,
    InterlockError,
    InvalidRequest,
    NotFound,
    ResourceExhausted,
    UnknownAgent,
    shorten,
)
from interlock.server.escalation_store import EscalationStore
from interlock.server.metrics import Metrics
from interlock.tensors import from_numpy, to_numpy
from interlock.v1 import interlock_pb2 as pb

log = logging.getLogger(__name__)

PENDING = pb.ESCALATION_STATE_PENDING
APPROVED = pb.ESCALATION_STATE_APPROVED
REJECTED = pb.ESCALATION_STATE_REJECTED
SUBSTITUTED = pb.ESCALATION_STATE_SUBSTITUTED
EXPIRED = pb.ESCALATION_STATE_EXPIRED

STATE_NAMES = {
    PENDING: "pending",
    APPROVED: "approved",
    REJECTED: "rejected",
    SUBSTITUTED: "substituted",
    EXPIRED: "expired",
}
STATE_OF_RESOLUTION = {
    pb.RESOLUTION_APPROVE: APPROVED,
    pb.RESOLUTION_REJECT: REJECTED,
    pb.RESOLUTION_SUBSTITUTE: SUBSTITUTED,
}
#: Fallback name reported in decisions whose action an operator gave.
OPERATOR_FALLBACK = "operator"
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
#: Changes a watcher may fall behind before it is dropped.
WATCH_QUEUE = 1000
_CLOSED: Any = object()


def iso(t: float) -> str:
    """Unix seconds as an ISO 8601 UTC time (second precision), for messages."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_escalation_id() -> str:
    return "esc-" + os.urandom(8).hex()


@dataclass
class _Pending:
    """In-memory index entry of one pending escalation."""

    escalation_id: str
    agent_id: str
    rule: str
    deadline: float
    mode: str
    waiter: asyncio.Future | None = None


@dataclass
class _Remembered:
    escalation: pb.Escalation
    until: float


@dataclass(eq=False)
class _Subscriber:
    agent_id: str
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=WATCH_QUEUE))
    overflowed: bool = False


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
        self._pending: dict[str, _Pending] = {}
        self._by_agent: dict[str, set[str]] = {}
        self._open_by_key: dict[tuple[str, str], str] = {}
        self._remembered: dict[tuple[str, str], _Remembered] = {}
        self._subscribers: set[_Subscriber] = set()
        self._sweeper: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the store, reload pending escalations and remembered answers, expire overdue ones."""
        await self.store.open()
        now = self.clock()
        for rec in await self.store.pending():
            self._index(rec)
        longest = max((a.config.escalation.remember for a in self.guard().agents), default=0.0)
        if longest > 0:
            for rec in await self.store.resolved_since(now - longest):
                self._remember(rec)
        self.metrics.escalations_pending.set(len(self._pending))
        await self._expire_due()
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep(), name="interlock-escalation-sweeper"
        )
        log.info("escalations: %d pending after start", len(self._pending))

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self.stop_watchers()
        await self.store.close()

    # ------------------------------------------------------------------ the request path

    async def handle(self, guard: Guard, decisions: list[Decision]) -> None:
        """Update decisions in place: halt held agents, apply remembered answers, open and wait."""
        if (
            not self._pending
            and not self._remembered
            and all(d.verdict is not Verdict.ESCALATE for d in decisions)
        ):
            return
        now = self.clock()
        opened: list[tuple[Decision, pb.Escalation, EscalationConfig]] = []
        for d in decisions:
            rt = guard.agent(d.agent_id)
            cfg = rt.config.escalation
            if cfg.mode == "deferred" and cfg.while_pending == "halt":
                held = next(iter(sorted(self._by_agent.get(d.agent_id, ()))), None)
                if held is not None:
                    self._hold(rt, d, held)
                    continue
            if d.verdict is not Verdict.ESCALATE:
                continue
            key = (d.agent_id, d.rule)
            known = self._remembered.get(key)
            if known is not None:
                if known.until > now:
                    self._apply(d, known.escalation, remembered=True)
                    continue
                del self._remembered[key]
            if cfg.mode == "deferred" and key in self._open_by_key:
                eid = self._open_by_key[key]
                d.escalation_id = eid
                d.reasons.append(
                    f"escalation {eid} is waiting for an operator: the fail-safe fallback '{d.fallback}' "
                    "applies until they answer"
                )
                continue
            label = rt.config.id
            if len(self._by_agent.get(d.agent_id, ())) >= cfg.max_pending:
                self._drop(
                    d,
                    label,
                    f"agent '{d.agent_id}' already has {cfg.max_pending} pending escalations "
                    "(escalation.max_pending)",
                )
                continue
            if len(self._pending) >= self.max_pending_total:
                self._drop(
                    d,
                    label,
                    f"{self.max_pending_total} escalations are already pending "
                    "(escalations.max_pending_total)",
                )
                continue
            rec = self._record(d, cfg, now)
            self._index(rec)
            opened.append((d, rec, cfg))
        if not opened:
            return
        try:
            await self.store.create([rec for _, rec, _ in opened])
        except Exception as e:  # fail closed: the fail-safe applies, nothing is acknowledged
            why = e.message if isinstance(e, InterlockError) else f"{type(e).__name__}: {e}"
            log.error("escalations: cannot store %d new escalations: %s", len(opened), why)
            for d, rec, _ in opened:
                self._unindex(rec.escalation_id)
                self.metrics.internal_errors.labels(
                    agent=guard.agent(d.agent_id).config.id, stage="escalation_store"
                ).inc()
                self._drop(d, guard.agent(d.agent_id).config.id, f"the escalation store failed ({why})")
            return
        self.metrics.escalations_pending.set(len(self._pending))
        waits = []
        for d, rec, cfg in opened:
            self._publish(rec)
            d.escalation_id = rec.escalation_id
            if cfg.mode == "deferred":
                d.reasons.append(
                    f"escalated to an operator as {rec.escalation_id} (answer by {iso(rec.deadline_time)}); "
                    f"the fail-safe fallback '{d.fallback}' applies until they answer"
                )
            else:
                waits.append(self._wait(d, rec))
        if waits:
            await asyncio.gather(*waits)

    def _record(self, d: Decision, cfg: EscalationConfig, now: float) -> pb.Escalation:
        return pb.Escalation(
            escalation_id=new_escalation_id(),
            agent_id=d.agent_id,
            episode_id=d.episode_id,
            step=d.step,
            observation=from_numpy(d.observation),
            proposed_action=from_numpy(d.proposed_action),
            signals=[pb.Signal(name=n, value=v, threshold=t, tripped=tr) for n, v, t, tr in d.signals],
            state=PENDING,
            fallback=d.fallback,
            fallback_action=from_numpy(d.action),
            created_time=now,
            deadline_time=now + cfg.timeout_seconds,
            reasons=list(d.reasons),
            labels=d.labels,
            rule=d.rule,
            decision_id=d.decision_id,
            mode=cfg.mode,
            config_version=d.config_version,
        )

    async def _wait(self, d: Decision, rec: pb.Escalation) -> None:
        entry = self._pending.get(rec.escalation_id)
        final: pb.Escalation | None = None
        if entry is not None and entry.waiter is not None:
            remaining = max(0.0, rec.deadline_time - self.clock())
            with contextlib.suppress(asyncio.TimeoutError):
                final = await asyncio.wait_for(asyncio.shield(entry.waiter), remaining)
        if final is None:
            final = await self._expire(rec.escalation_id)
        self._apply(d, final)

    def _apply(self, d: Decision, esc: pb.Escalation, remembered: bool = False) -> None:
        """Turn an answered (or expired) escalation into this decision's verdict and action."""
        d.escalation_id = esc.escalation_id
        who = esc.operator or esc.authenticated_as or "an operator"
        note = f": {esc.comment}" if esc.comment else ""
        prefix = (
            f"remembered answer to escalation {esc.escalation_id} "
            f"(agent '{esc.agent_id}', rule '{esc.rule}'): "
            if remembered
            else ""
        )
        if esc.state == APPROVED:
            d.verdict, d.action, d.fallback = Verdict.ALLOW, d.proposed_action, ""
            d.reasons.append(f"{prefix}{who} approved escalation {esc.escalation_id}{note}")
        elif esc.state == SUBSTITUTED:
            action = to_numpy(esc.resolved_action, "resolved_action").astype(d.proposed_action.dtype)
            d.verdict, d.action, d.fallback = Verdict.SUBSTITUTE, action, OPERATOR_FALLBACK
            d.reasons.append(
                f"{prefix}{who} substituted action {action.tolist()} in escalation {esc.escalation_id}{note}"
            )
        elif esc.state == REJECTED:
            d.verdict = Verdict.SUBSTITUTE
            d.reasons.append(
                f"{prefix}{who} rejected escalation {esc.escalation_id}{note}; "
                f"the fail-safe fallback '{d.fallback}' applies"
            )
        else:  # EXPIRED
            d.verdict = Verdict.SUBSTITUTE
            waited = esc.deadline_time - esc.created_time
            d.reasons.append(
                f"no operator answered escalation {esc.escalation_id} within {waited:g} s: "
                f"the fail-safe fallback '{d.fallback}' applied"
            )

    def _drop(self, d: Decision, label: str, why: str) -> None:
        self.metrics.escalations.labels(agent=label, outcome="dropped").inc()
        d.verdict = Verdict.SUBSTITUTE
        d.reasons.append(f"no escalation was opened: {why}; the fail-safe fallback '{d.fallback}' applies")

    def _hold(self, rt: AgentRuntime, d: Decision, escalation_id: str) -> None:
        """HALT every decision of an agent whose deferred escalation waits (``while_pending: halt``)."""
        d.verdict = Verdict.HALT
        d.escalation_id = escalation_id
        d.reasons.append(f"halted until an operator answers escalation {escalation_id}")
        name = rt.config.escalation.fallback or rt.config.fail_safe
        d.action, d.fallback = None, ""
        if not name:
            return
        try:
            action = rt.fallback_action(name, d)
        except Exception as e:
            log.exception("fail-safe fallback %s failed while halting %s", name, d.agent_id)
            d.errors.append(f"fallback:{name}")
            d.reasons.append(f"fail-safe fallback '{name}' failed: {type(e).__name__}: {e}")
            return
        d.action, d.fallback = action, name

    # ------------------------------------------------------------------ in-memory index

    def _index(self, rec: pb.Escalation) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future() if rec.mode == "blocking" else None
        self._pending[rec.escalation_id] = _Pending(
            rec.escalation_id, rec.agent_id, rec.rule, rec.deadline_time, rec.mode, waiter
        )
        self._by_agent.setdefault(rec.agent_id, set()).add(rec.escalation_id)
        if rec.mode == "deferred":
            self._open_by_key.setdefault((rec.agent_id, rec.rule), rec.escalation_id)

    def _unindex(self, escalation_id: str) -> _Pending | None:
        entry = self._pending.pop(escalation_id, None)
        if entry is None:
            return None
        ids = self._by_agent.get(entry.agent_id)
        if ids is not None:
            ids.discard(escalation_id)
            if not ids:
                del self._by_agent[entry.agent_id]
        key = (entry.agent_id, entry.rule)
        if self._open_by_key.get(key) == escalation_id:
            del self._open_by_key[key]
        return entry

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

    def _remember(self, rec: pb.Escalation) -> None:
        seconds = self._config(rec.agent_id).remember
        if seconds > 0 and rec.state in (APPROVED, REJECTED, SUBSTITUTED):
            until = rec.resolved_time + seconds
            if until > self.clock():
                self._remembered[(rec.agent_id, rec.rule)] = _Remembered(rec, until)

    def _finished(self, rec: pb.Escalation) -> None:
        """Bookkeeping after ``rec`` won the store's compare-and-set."""
        entry = self._unindex(rec.escalation_id)
        outcome = STATE_NAMES[rec.state]
        self.metrics.escalations.labels(agent=self._label(rec.agent_id), outcome=outcome).inc()
        self.metrics.escalation_wait.observe(max(0.0, rec.resolved_time - rec.created_time))
        self.metrics.escalations_pending.set(len(self._pending))
        self._remember(rec)
        if entry is not None and entry.waiter is not None and not entry.waiter.done():
            entry.waiter.set_result(rec)
        self._publish(rec)
        log.info(
            "escalation %s (agent %s, rule %s) %s by %s",
            rec.escalation_id,
            rec.agent_id,
            rec.rule,
            outcome,
            rec.operator or "deadline",
        )

    # ------------------------------------------------------------------ expiry

    async def _expire(self, escalation_id: str) -> pb.Escalation:
        """Mark it EXPIRED unless an answer won; returns the final record either way."""
        rec = await self.store.get(escalation_id)
        if rec is None:
            raise NotFound(f"no escalation '{shorten(escalation_id)}'")
        if rec.state != PENDING:
            return rec
        final = pb.Escalation()
        final.CopyFrom(rec)
        final.state = EXPIRED
        final.resolved_time = self.clock()
        final.resolved_action.CopyFrom(rec.fallback_action)
        final.reasons.append(
            f"no operator answered by the deadline {iso(rec.deadline_time)}: "
            f"the fail-safe fallback '{rec.fallback}' applied"
        )
        if await self.store.finish(final):
            self._finished(final)
            return final
        return await self.store.get(escalation_id) or final

    async def _expire_due(self) -> None:
        now = self.clock()
        for eid in [e.escalation_id for e in self._pending.values() if e.deadline <= now]:
            try:
                await self._expire(eid)
            except InterlockError as e:
                log.error("escalations: cannot expire %s: %s", eid, e.message)

    async def _sweep(self) -> None:
        while True:
            await self._expire_due()
            now = self.clock()
            nxt = min((e.deadline for e in self._pending.values()), default=now + 0.5)
            await asyncio.sleep(min(max(nxt - now, 0.02), 0.5))

    # ------------------------------------------------------------------ operator side

    async def get(self, escalation_id: str) -> pb.Escalation:
        """One escalation; raises NotFound."""
        rec = await self.store.get(escalation_id) if escalation_id else None
        if rec is None:
            raise NotFound(
                f"no escalation '{shorten(escalation_id)}'; list them with "
                "`interlock escalations list --state all`"
            )
        return rec

    async def list(
        self, state: int = 0, agent_id: str = "", limit: int = 0, resolved: bool = False
    ) -> list[pb.Escalation]:
        """Newest first; ``limit`` 0 is 100, at most 1000; ``resolved`` skips pending ones."""
        if limit < 0:
            raise InvalidRequest(
                f"limit is {limit}; use 0 (default {DEFAULT_LIST_LIMIT}) or a positive number"
            )
        if state not in STATE_NAMES and state != 0:
            raise InvalidRequest(f"state {state} is not a known EscalationState")
        return await self.store.list(
            state, agent_id, min(limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT), resolved
        )

    async def resolve(
        self,
        escalation_id: str,
        resolution: int,
        action: np.ndarray | None = None,
        operator: str = "",
        comment: str = "",
        authenticated_as: str = "",
    ) -> pb.Escalation:
        """Answer an escalation. Final and idempotent.

        Args:
            resolution: ``pb.RESOLUTION_APPROVE`` / ``_REJECT`` / ``_SUBSTITUTE``.
            action: The operator's action (SUBSTITUTE only), one action of the agent's space.

        Raises:
            InvalidRequest: unknown resolution, missing/extra/out-of-space action.
            NotFound: no such escalation.
            FailedPrecondition: already answered differently, or past its deadline.
        """
        state = STATE_OF_RESOLUTION.get(resolution)
        if state is None:
            raise InvalidRequest(
                "resolution must be RESOLUTION_APPROVE, RESOLUTION_REJECT or RESOLUTION_SUBSTITUTE"
            )
        if state != SUBSTITUTED and action is not None:
            raise InvalidRequest("action is only used with RESOLUTION_SUBSTITUTE; leave it unset")
        if state == SUBSTITUTED and action is None:
            raise InvalidRequest("RESOLUTION_SUBSTITUTE needs the operator's action in 'action'")
        rec = await self.get(escalation_id)
        if state == SUBSTITUTED:
            action = self._checked_action(rec, action)  # type: ignore[arg-type]
        for _ in range(3):
            if rec.state != PENDING:
                return self._same_or_conflict(rec, state, action)
            if self.clock() > rec.deadline_time:
                rec = await self._expire(escalation_id)
                continue
            final = pb.Escalation()
            final.CopyFrom(rec)
            final.state = state
            final.resolved_time = self.clock()
            final.operator = operator or authenticated_as
            final.comment = comment
            final.authenticated_as = authenticated_as
            if state == APPROVED:
                final.resolved_action.CopyFrom(rec.proposed_action)
            elif state == REJECTED:
                final.resolved_action.CopyFrom(rec.fallback_action)
            else:
                final.resolved_action.CopyFrom(from_numpy(action))  # type: ignore[arg-type]
            if await self.store.finish(final):
                self._finished(final)
                return final
            rec = await self.get(escalation_id)
        raise FailedPrecondition(f"escalation {escalation_id} changed while resolving it; try again")

    def _checked_action(self, rec: pb.Escalation, action: np.ndarray) -> np.ndarray:
        try:
            rt = self.guard().agent(rec.agent_id)
        except UnknownAgent:
            raise FailedPrecondition(
                f"agent '{rec.agent_id}' is no longer in the config, so a substitute action cannot be "
                "checked; approve or reject instead"
            ) from None
        space = rt.spaces.action
        coerced = space.coerce(np.asarray(action), "action")
        if space.invalid(coerced[None])[0]:
            where = (
                f"0..{space.n - 1}" if space.discrete else f"[{space.low.tolist()}, {space.high.tolist()}]"
            )  # type: ignore[union-attr]
            raise InvalidRequest(
                f"action {coerced.tolist()} is outside the action space of '{rt.config.id}' ({where})"
            )
        return coerced

    @staticmethod
    def _same_or_conflict(rec: pb.Escalation, state: int, action: np.ndarray | None) -> pb.Escalation:
        if rec.state == EXPIRED:
            raise FailedPrecondition(
                f"escalation {rec.escalation_id} expired at its deadline {iso(rec.deadline_time)} before "
                f"anyone answered; the fail-safe fallback '{rec.fallback}' applied"
            )
        same = rec.state == state
        if same and state == SUBSTITUTED:
            given = to_numpy(rec.resolved_action, "resolved_action")
            same = given.shape == action.shape and bool(np.array_equal(given, action))  # type: ignore[union-attr]
        if same:
            return rec
        raise FailedPrecondition(
            f"escalation {rec.escalation_id} was already {STATE_NAMES[rec.state]} by "
            f"{rec.operator or rec.authenticated_as} at {iso(rec.resolved_time)}; a resolution is final"
        )

    # ------------------------------------------------------------------ watching

    def _publish(self, rec: pb.Escalation) -> None:
        for sub in list(self._subscribers):
            if sub.agent_id and sub.agent_id != rec.agent_id:
                continue
            try:
                sub.queue.put_nowait(rec)
            except asyncio.QueueFull:
                sub.overflowed = True
                self._subscribers.discard(sub)

    async def watch(
        self, agent_id: str = "", include_pending: bool = False, heartbeat: float | None = None
    ) -> AsyncIterator[pb.Escalation | None]:
        """Every change (opened, answered, expired) from now on; first the pending ones if asked.

        Args:
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
                for rec in await self.store.pending():
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
                if rec.state == PENDING and rec.escalation_id in sent:
                    continue  # already sent from the pending list
                yield rec
                if sub.overflowed and sub.queue.empty():
                    raise ResourceExhausted(
                        f"this watcher fell {WATCH_QUEUE} changes behind and was dropped; watch again"
                    )
        finally:
            self._subscribers.discard(sub)

    def stop_watchers(self) -> None:
        """End every watch() stream (before shutting down what serves them)."""
        for sub in list(self._subscribers):
            if sub.queue.full():
                sub.queue.get_nowait()
            sub.queue.put_nowait(_CLOSED)
        self._subscribers.clear()

    @property
    def pending_count(self) -> int:
        return len(self._pending)
