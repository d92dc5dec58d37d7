"""The escalation domain model: plain dataclasses and Python enums (protobuf only at the edge).

:mod:`interlock.escalation.convert` is the one module that turns these into
``interlock.v1`` messages and back (for the Operator service, the client and the
stores' serialized body). The enum values equal the wire enum values.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

__all__ = [
    "OPERATOR_FALLBACK",
    "Escalation",
    "EscalationState",
    "Resolution",
    "Signal",
    "iso",
    "new_escalation_id",
]

#: Fallback name reported in decisions whose action an operator gave.
OPERATOR_FALLBACK = "operator"


class EscalationState(enum.IntEnum):
    """Mirrors ``interlock.v1.EscalationState``; ``UNSPECIFIED`` (0) means "any" in list filters."""

    UNSPECIFIED = 0
    PENDING = 1
    APPROVED = 2
    REJECTED = 3
    SUBSTITUTED = 4
    EXPIRED = 5

    @property
    def label(self) -> str:
        """The state's name as the CLI, the console and metrics show it ("pending", ...)."""
        return self.name.lower()

    @classmethod
    def named(cls) -> dict[str, EscalationState]:
        """Every real state by label (no UNSPECIFIED): the one state-name map."""
        return {s.label: s for s in cls if s is not cls.UNSPECIFIED}


class Resolution(enum.IntEnum):
    """Mirrors ``interlock.v1.Resolution``: an operator's answer."""

    UNSPECIFIED = 0
    APPROVE = 1
    REJECT = 2
    SUBSTITUTE = 3

    @property
    def state(self) -> EscalationState:
        """The state an escalation takes when answered so."""
        return _STATE_OF_RESOLUTION[self]

    @classmethod
    def named(cls) -> dict[str, Resolution]:
        """"approve" / "reject" / "substitute" -> the resolution."""
        return {r.name.lower(): r for r in cls if r is not cls.UNSPECIFIED}


_STATE_OF_RESOLUTION = {
    Resolution.APPROVE: EscalationState.APPROVED,
    Resolution.REJECT: EscalationState.REJECTED,
    Resolution.SUBSTITUTE: EscalationState.SUBSTITUTED,
}


@dataclass(frozen=True)
class Signal:
    """One monitor signal as the escalation recorded it."""

    name: str
    value: float
    threshold: float
    tripped: bool


@dataclass
class Escalation:
    """One escalation: the decision's context, its deadline and (once final) the answer.

    Arrays are one observation / one action (no batch axis); ``None`` when absent.
    Times are Unix seconds (deadlines are persisted, so they are wall-clock); 0 is unset.
    """

    escalation_id: str
    agent_id: str
    episode_id: str = ""
    step: int = 0
    observation: np.ndarray | None = None
    proposed_action: np.ndarray | None = None
    signals: list[Signal] = field(default_factory=list)
    state: EscalationState = EscalationState.PENDING
    #: The fallback that applies on reject or expiry, and its action.
    fallback: str = ""
    fallback_action: np.ndarray | None = None
    created_time: float = 0.0
    deadline_time: float = 0.0
    resolved_time: float = 0.0
    #: The action finally executed (set once resolved).
    resolved_action: np.ndarray | None = None
    #: The name the operator gave (defaults to ``authenticated_as``).
    operator: str = ""
    comment: str = ""
    reasons: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    rule: str = ""
    decision_id: str = ""
    #: "blocking" or "deferred" (the agent's escalation.mode when it was opened).
    mode: str = ""
    config_version: str = ""
    #: The credential that resolved it (a token's name or a client certificate's common name).
    authenticated_as: str = ""

    @property
    def pending(self) -> bool:
        return self.state is EscalationState.PENDING


def iso(t: float) -> str:
    """Unix seconds as an ISO 8601 UTC time (second precision), for messages."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_escalation_id() -> str:
    return "esc-" + os.urandom(8).hex()
