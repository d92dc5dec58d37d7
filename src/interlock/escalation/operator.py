"""The operator API: read and answer escalations (the Operator service and the console call it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from interlock.errors import FailedPrecondition, InvalidRequest, NotFound, UnknownAgent, shorten
from interlock.escalation.expiry import Expiry
from interlock.escalation.model import Escalation, EscalationState, Resolution, iso
from interlock.escalation.store import EscalationStore

if TYPE_CHECKING:
    from interlock.engine import Guard

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000


class OperatorApi:
    """Reads go to the store; an answer is a compare-and-set there, final and idempotent.

    Args:
        store: Durable storage.
        guard: The current engine (to check a substitute action against the agent's space).
        expiry: Expires an escalation answered after its deadline.
        clock: Wall-clock seconds.
        finished: Bookkeeping for a record that won the compare-and-set.
    """

    def __init__(
        self,
        store: EscalationStore,
        guard: Callable[[], Guard],
        expiry: Expiry,
        clock: Callable[[], float],
        finished: Callable[[Escalation], None],
    ) -> None:
        self.store = store
        self.guard = guard
        self.expiry = expiry
        self.clock = clock
        self.finished = finished

    async def get(self, escalation_id: str) -> Escalation:
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
    ) -> list[Escalation]:
        """Newest first; ``state`` 0 is any; ``limit`` 0 is 100, at most 1000; ``resolved`` skips pending."""
        if limit < 0:
            raise InvalidRequest(
                f"limit is {limit}; use 0 (default {DEFAULT_LIST_LIMIT}) or a positive number"
            )
        try:
            EscalationState(state)
        except ValueError:
            raise InvalidRequest(f"state {state} is not a known EscalationState") from None
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
    ) -> Escalation:
        """Answer an escalation. Final and idempotent.

        Args:
            resolution: :class:`Resolution` APPROVE / REJECT / SUBSTITUTE (the wire's numbers).
            action: The operator's action (SUBSTITUTE only), one action of the agent's space.

        Raises:
            InvalidRequest: unknown resolution, missing/extra/out-of-space action.
            NotFound: no such escalation.
            FailedPrecondition: already answered differently, or past its deadline.
        """
        if resolution not in (Resolution.APPROVE, Resolution.REJECT, Resolution.SUBSTITUTE):
            raise InvalidRequest(
                "resolution must be RESOLUTION_APPROVE, RESOLUTION_REJECT or RESOLUTION_SUBSTITUTE"
            )
        state = Resolution(resolution).state
        if state != EscalationState.SUBSTITUTED and action is not None:
            raise InvalidRequest("action is only used with RESOLUTION_SUBSTITUTE; leave it unset")
        if state == EscalationState.SUBSTITUTED and action is None:
            raise InvalidRequest("RESOLUTION_SUBSTITUTE needs the operator's action in 'action'")
        rec = await self.get(escalation_id)
        if action is not None:
            action = self._checked_action(rec, action)
        for _ in range(3):
            if not rec.pending:
                return self._same_or_conflict(rec, state, action)
            if self.clock() > rec.deadline_time:
                rec = await self.expiry.expire(escalation_id)
                continue
            if state == EscalationState.APPROVED:
                executed = rec.proposed_action
            elif state == EscalationState.REJECTED:
                executed = rec.fallback_action
            else:
                executed = action
            final = dataclasses.replace(
                rec,
                state=state,
                resolved_time=self.clock(),
                operator=operator or authenticated_as,
                comment=comment,
                authenticated_as=authenticated_as,
                resolved_action=executed,
            )
            if await self.store.finish(final):
                self.finished(final)
                return final
            rec = await self.get(escalation_id)
        raise FailedPrecondition(f"escalation {escalation_id} changed while resolving it; try again")

    def _checked_action(self, rec: Escalation, action: np.ndarray) -> np.ndarray:
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
            if space.discrete:
                where = f"0..{space.n - 1}"
            else:
                low, high = space.bounds()
                where = f"[{low.tolist()}, {high.tolist()}]"
            raise InvalidRequest(
                f"action {coerced.tolist()} is outside the action space of '{rt.config.id}' ({where})"
            )
        return coerced

    @staticmethod
    def _same_or_conflict(rec: Escalation, state: EscalationState, action: np.ndarray | None) -> Escalation:
        if rec.state == EscalationState.EXPIRED:
            raise FailedPrecondition(
                f"escalation {rec.escalation_id} expired at its deadline {iso(rec.deadline_time)} before "
                f"anyone answered; the fail-safe fallback '{rec.fallback}' applied"
            )
        same = rec.state == state
        if same and state == EscalationState.SUBSTITUTED:
            given = rec.resolved_action
            same = (
                given is not None
                and action is not None
                and given.shape == action.shape
                and bool(np.array_equal(given, action))
            )
        if same:
            return rec
        raise FailedPrecondition(
            f"escalation {rec.escalation_id} was already {rec.state.label} by "
            f"{rec.operator or rec.authenticated_as} at {iso(rec.resolved_time)}; a resolution is final"
        )
