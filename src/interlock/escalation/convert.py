"""The escalation edge: domain records to and from ``interlock.v1`` messages, bytes and JSON views.

The Operator service, the operator client's users (CLI) and the stores (whose body
column is the serialized ``interlock.v1.Escalation``, a versioned and stable schema)
convert here and nowhere else. :func:`escalation_dict` is the one plain-dict view
the console and the CLI both build their JSON from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from interlock.escalation.model import Escalation, EscalationState, Signal
from interlock.tensors import from_numpy, to_numpy
from interlock.v1 import interlock_pb2 as pb

#: Label an agent sets to show a camera frame with its escalation (base64 PNG, no data: prefix).
FRAME_LABEL = "frame_png_base64"

_TENSOR_FIELDS = ("observation", "proposed_action", "fallback_action", "resolved_action")


def _array(t: pb.Tensor, field: str) -> np.ndarray | None:
    return to_numpy(t, field) if t.ByteSize() else None


def from_pb(msg: pb.Escalation) -> Escalation:
    """The domain record of a wire (or stored) message."""
    return Escalation(
        escalation_id=msg.escalation_id,
        agent_id=msg.agent_id,
        episode_id=msg.episode_id,
        step=msg.step,
        observation=_array(msg.observation, "observation"),
        proposed_action=_array(msg.proposed_action, "proposed_action"),
        signals=[Signal(s.name, s.value, s.threshold, s.tripped) for s in msg.signals],
        state=EscalationState(msg.state),
        fallback=msg.fallback,
        fallback_action=_array(msg.fallback_action, "fallback_action"),
        created_time=msg.created_time,
        deadline_time=msg.deadline_time,
        resolved_time=msg.resolved_time,
        resolved_action=_array(msg.resolved_action, "resolved_action"),
        operator=msg.operator,
        comment=msg.comment,
        reasons=list(msg.reasons),
        labels=dict(msg.labels),
        rule=msg.rule,
        decision_id=msg.decision_id,
        mode=msg.mode,
        config_version=msg.config_version,
        authenticated_as=msg.authenticated_as,
    )


def to_pb(e: Escalation) -> pb.Escalation:
    """The wire message of a domain record (absent arrays stay unset)."""
    msg = pb.Escalation(
        escalation_id=e.escalation_id,
        agent_id=e.agent_id,
        episode_id=e.episode_id,
        step=e.step,
        signals=[
            pb.Signal(name=s.name, value=s.value, threshold=s.threshold, tripped=s.tripped) for s in e.signals
        ],
        state=cast("pb.EscalationState", int(e.state)),  # the same numbers (model.EscalationState mirrors it)
        fallback=e.fallback,
        created_time=e.created_time,
        deadline_time=e.deadline_time,
        resolved_time=e.resolved_time,
        operator=e.operator,
        comment=e.comment,
        reasons=list(e.reasons),
        labels=e.labels,
        rule=e.rule,
        decision_id=e.decision_id,
        mode=e.mode,
        config_version=e.config_version,
        authenticated_as=e.authenticated_as,
    )
    for name in _TENSOR_FIELDS:
        arr = getattr(e, name)
        if arr is not None:
            getattr(msg, name).CopyFrom(from_numpy(arr))
    return msg


def to_bytes(e: Escalation) -> bytes:
    """The stores' body column."""
    return to_pb(e).SerializeToString()


def from_bytes(body: bytes) -> Escalation:
    return from_pb(pb.Escalation.FromString(body))


def state_label(state: int) -> str:
    """"pending", "approved", ...; an unknown number is shown as itself."""
    try:
        return EscalationState(state).label
    except ValueError:
        return str(state)


def json_number(x: float) -> float | str:
    """JSON has no NaN/Inf: send those as strings."""
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def escalation_dict(
    e: Escalation,
    tensor: Callable[[np.ndarray], Any] = lambda a: a.tolist(),
    number: Callable[[float], Any] = float,
) -> dict[str, Any]:
    """Every field of ``e`` as plain Python, for JSON.

    Args:
        e: The escalation.
        tensor: How an array is shown (default: nested lists); absent arrays are ``None``.
        number: How a signal's value and threshold are shown (the console sends NaN as a string).
    """

    def arr(a: np.ndarray | None) -> Any:
        return None if a is None else tensor(a)

    return {
        "escalation_id": e.escalation_id,
        "state": state_label(e.state),
        "mode": e.mode,
        "agent_id": e.agent_id,
        "episode_id": e.episode_id,
        "step": e.step,
        "rule": e.rule,
        "observation": arr(e.observation),
        "proposed_action": arr(e.proposed_action),
        "fallback": e.fallback,
        "fallback_action": arr(e.fallback_action),
        "signals": [
            {"name": s.name, "value": number(s.value), "threshold": number(s.threshold), "tripped": s.tripped}
            for s in e.signals
        ],
        "reasons": list(e.reasons),
        "labels": dict(e.labels),
        "created_time": e.created_time,
        "deadline_time": e.deadline_time,
        "resolved_time": e.resolved_time or None,
        "resolved_action": arr(e.resolved_action),
        "operator": e.operator,
        "comment": e.comment,
        "authenticated_as": e.authenticated_as,
        "decision_id": e.decision_id,
        "config_version": e.config_version,
    }
