"""The core records every layer shares: :class:`Verdict`, :class:`CheckInput` and :class:`Decision`.

They depend on numpy only, so the agent side (``interlock.client``, the Gymnasium
wrappers) can use them without loading the engine, the config or the CEL binding.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from interlock.stagetimes import StageTimes

__all__ = ["CheckInput", "Decision", "Verdict"]


class Verdict(enum.IntEnum):
    """Mirrors ``interlock.v1.Verdict``."""

    ALLOW = 1
    SUBSTITUTE = 2
    ESCALATE = 3
    HALT = 4

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass
class CheckInput:
    """One decoded request. Arrays are one observation / one action (no batch axis)."""

    agent_id: str
    observation: np.ndarray
    action: np.ndarray
    episode_id: str = ""
    step: int = 0
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Decision:
    """The engine's answer for one request.

    ``action`` is what the agent executes: the proposed action on ALLOW, the
    fallback's otherwise; ``None`` on HALT when no fail-safe action exists.
    ``signals`` holds ``(name, value, threshold, tripped)`` tuples.
    """

    decision_id: str
    agent_id: str
    verdict: Verdict
    action: np.ndarray | None
    proposed_action: np.ndarray
    observation: np.ndarray
    signals: list[tuple[str, float, float, bool]]
    reasons: list[str]
    config_version: str
    fallback: str = ""
    rule: str = ""
    escalation_id: str = ""
    episode_id: str = ""
    step: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    #: Stages that raised ("monitor:<name>", "policy", "fallback:<name>"), for metrics.
    errors: list[str] = field(default_factory=list)
    #: Shadow mode: the verdict that would have been enforced (``verdict`` is then ALLOW).
    shadow_verdict: Verdict | None = None
    #: When tracing is on: when the engine's stages ran for this decision's batch (server.tracing).
    stage_times: StageTimes | None = field(default=None, repr=False, compare=False)


def new_decision_id() -> str:
    """A fresh, unguessable decision id (24 hex characters)."""
    return os.urandom(12).hex()
