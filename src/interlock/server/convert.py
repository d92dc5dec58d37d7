"""Converters between wire messages and engine types (the only place that knows both)."""

from __future__ import annotations

import numpy as np

from interlock.engine import CheckInput, Decision
from interlock.errors import InvalidRequest
from interlock.tensors import from_numpy, to_numpy
from interlock.v1 import interlock_pb2 as pb

_EMPTY_INT64 = pb.Tensor(dtype=pb.DATA_TYPE_INT64, shape=[0])


def request_to_input(req: pb.CheckRequest, field: str = "") -> CheckInput:
    """Decode one CheckRequest; raises InvalidRequest naming the field."""
    prefix = f"{field}." if field else ""
    if not req.HasField("observation"):
        raise InvalidRequest(f"{prefix}observation is missing; every request carries the agent's observation")
    if not req.HasField("action"):
        raise InvalidRequest(f"{prefix}action is missing; send the action the agent proposes")
    return CheckInput(
        agent_id=req.agent_id,
        observation=to_numpy(req.observation, f"{prefix}observation"),
        action=to_numpy(req.action, f"{prefix}action"),
        episode_id=req.episode_id,
        step=req.step,
        labels=dict(req.labels) if req.labels else {},
    )


def decision_to_pb(d: Decision) -> pb.Decision:
    """Encode a Decision. On HALT without a fail-safe action, ``action`` is an empty tensor (shape [0])."""
    if d.action is not None:
        action = from_numpy(d.action)
    else:
        dt = d.proposed_action.dtype.name
        action = from_numpy(np.zeros((0,), dtype=dt)) if dt else _EMPTY_INT64
    return pb.Decision(
        decision_id=d.decision_id,
        verdict=int(d.verdict),
        action=action,
        signals=[pb.Signal(name=n, value=v, threshold=t, tripped=tr) for n, v, t, tr in d.signals],
        reasons=d.reasons,
        fallback=d.fallback,
        escalation_id=d.escalation_id,
        config_version=d.config_version,
        rule=d.rule,
    )
