"""The one place where escalation changes a decision's verdict, action and fallback.

The engine decides ESCALATE and picks the fail-safe action; everything that
happens to that decision afterwards because of people (an answer, an expiry, a
dropped escalation, an agent held while one waits, no operator channel at all)
is written here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from interlock.escalation.model import OPERATOR_FALLBACK, Escalation, EscalationState, iso
from interlock.types import Decision, Verdict

if TYPE_CHECKING:
    from interlock.engine import AgentRuntime

log = logging.getLogger(__name__)


def apply_answer(d: Decision, esc: Escalation, remembered: bool = False) -> None:
    """Turn an answered (or expired) escalation into this decision's verdict and action."""
    d.escalation_id = esc.escalation_id
    who = esc.operator or esc.authenticated_as or "an operator"
    note = f": {esc.comment}" if esc.comment else ""
    prefix = (
        f"remembered answer to escalation {esc.escalation_id} (agent '{esc.agent_id}', rule '{esc.rule}'): "
        if remembered
        else ""
    )
    if esc.state == EscalationState.APPROVED:
        d.verdict, d.action, d.fallback = Verdict.ALLOW, d.proposed_action, ""
        d.reasons.append(f"{prefix}{who} approved escalation {esc.escalation_id}{note}")
    elif esc.state == EscalationState.SUBSTITUTED:
        assert esc.resolved_action is not None  # a SUBSTITUTED record always has the operator's action
        action = esc.resolved_action.astype(d.proposed_action.dtype)
        d.verdict, d.action, d.fallback = Verdict.SUBSTITUTE, action, OPERATOR_FALLBACK
        d.reasons.append(
            f"{prefix}{who} substituted action {action.tolist()} in escalation {esc.escalation_id}{note}"
        )
    elif esc.state == EscalationState.REJECTED:
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


def drop(d: Decision, why: str) -> None:
    """No escalation was opened (flood limit, store failure): the fail-safe action applies now."""
    d.verdict = Verdict.SUBSTITUTE
    d.reasons.append(f"no escalation was opened: {why}; the fail-safe fallback '{d.fallback}' applies")


def attach(d: Decision, escalation_id: str) -> None:
    """A deferred escalation of the same agent and rule already waits: this decision joins it."""
    d.escalation_id = escalation_id
    d.reasons.append(
        f"escalation {escalation_id} is waiting for an operator: the fail-safe fallback '{d.fallback}' "
        "applies until they answer"
    )


def deferred(d: Decision, esc: Escalation) -> None:
    """A deferred escalation was opened: the agent gets ESCALATE, its id and the fail-safe action."""
    d.escalation_id = esc.escalation_id
    d.reasons.append(
        f"escalated to an operator as {esc.escalation_id} (answer by {iso(esc.deadline_time)}); "
        f"the fail-safe fallback '{d.fallback}' applies until they answer"
    )


def hold(rt: AgentRuntime, d: Decision, escalation_id: str) -> None:
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


def no_operator_channel(d: Decision) -> None:
    """Escalations are not enabled: the decision keeps ESCALATE and the fail-safe action, with a reason."""
    d.reasons.append("no operator channel is configured: the fail-safe fallback applied at once")
