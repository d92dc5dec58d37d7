"""Converters between wire messages and engine types (the only place that knows both)."""

from __future__ import annotations

import grpc
import numpy as np

from interlock.engine import ColumnDecisions
from interlock.errors import InvalidRequest
from interlock.server.errors import status_for
from interlock.tensors import from_numpy, to_numpy
from interlock.types import CheckInput, Decision, new_decision_id
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


def stacked_requests(reqs) -> tuple[list[CheckInput], np.ndarray, np.ndarray] | None:
    """A CheckBatch's rows decoded as columns when they are uniform, else None (decode row by row).

    Uniform: one agent_id, and every row's observation (and action) tensor has the first row's dtype,
    shape and byte length. Then each tensor's bytes are joined and decoded with one ``np.frombuffer``
    (the first row's tensors are decoded alone first, so every check :func:`to_numpy` makes holds for
    all rows). The items carry row views of the raw arrays, exactly what :func:`request_to_input`
    gives, so that a batch the engine rejects is re-validated row by row with the same messages.

    Returns:
        ``(items, observations [n, *obs_shape], actions [n, *action_shape])`` in the wire dtypes.
    """
    first = reqs[0]
    if not (first.HasField("observation") and first.HasField("action")):
        return None
    fo, fa = first.observation, first.action
    try:
        o0 = to_numpy(fo, "observation")
        a0 = to_numpy(fa, "action")
    except InvalidRequest:
        return None
    agent, o_dtype, a_dtype = first.agent_id, fo.dtype, fa.dtype
    o_shape, a_shape = list(fo.shape), list(fa.shape)
    o_len, a_len = len(fo.data), len(fa.data)
    obs_bytes, act_bytes = [], []
    for r in reqs:
        o, a = r.observation, r.action
        if (
            r.agent_id != agent
            or not (r.HasField("observation") and r.HasField("action"))
            or o.dtype != o_dtype
            or a.dtype != a_dtype
            or len(o.data) != o_len
            or len(a.data) != a_len
            or o.shape != o_shape
            or a.shape != a_shape
        ):
            return None
        obs_bytes.append(o.data)
        act_bytes.append(a.data)
    n = len(reqs)
    observations = np.frombuffer(b"".join(obs_bytes), dtype=o0.dtype).reshape(n, *o0.shape)
    actions = np.frombuffer(b"".join(act_bytes), dtype=a0.dtype).reshape(n, *a0.shape)
    items = [
        CheckInput(
            agent_id=agent,
            observation=observations[i],
            action=actions[i],
            episode_id=r.episode_id,
            step=r.step,
            labels=dict(r.labels) if r.labels else {},
        )
        for i, r in enumerate(reqs)
    ]
    return items, observations, actions


#: Encoded scalar actions (discrete agents send a handful of distinct values): (dtype, value) -> Tensor.
_SCALAR_TENSORS: dict[tuple[str, object], pb.Tensor] = {}


def _action_tensor(action: np.ndarray) -> pb.Tensor:
    if action.ndim == 0 and action.dtype.kind in "iub":
        key = (action.dtype.str, action.item())
        t = _SCALAR_TENSORS.get(key)
        if t is None:
            t = from_numpy(action)
            if len(_SCALAR_TENSORS) < 4096:
                _SCALAR_TENSORS[key] = t
        return t
    return from_numpy(action)


def fill_decision(msg: pb.Decision, d: Decision) -> pb.Decision:
    """Write ``d`` into an empty Decision message (e.g. one from ``response.decisions.add()``)."""
    if d.action is not None:
        action = _action_tensor(d.action)
    else:
        dt = d.proposed_action.dtype.name
        action = from_numpy(np.zeros((0,), dtype=dt)) if dt else _EMPTY_INT64
    msg.decision_id = d.decision_id
    msg.verdict = int(d.verdict)
    msg.action.CopyFrom(action)
    add = msg.signals.add
    for n, v, t, tr in d.signals:
        add(name=n, value=v, threshold=t, tripped=tr)
    msg.reasons.extend(d.reasons)
    msg.fallback = d.fallback
    msg.escalation_id = d.escalation_id
    msg.config_version = d.config_version
    msg.rule = d.rule
    return msg


def decision_to_pb(d: Decision) -> pb.Decision:
    """Encode a Decision. On HALT without a fail-safe action, ``action`` is an empty tensor (shape [0])."""
    return fill_decision(pb.Decision(), d)


def unchecked_decision(code: grpc.StatusCode, message: str, config_version: str) -> pb.Decision:
    """HALT for a request that could not be checked (CheckStream): no action, ``error`` says why."""
    return pb.Decision(
        decision_id=new_decision_id(),
        verdict=pb.VERDICT_HALT,
        action=_EMPTY_INT64,
        reasons=[message],
        config_version=config_version,
        error=pb.CheckError(code=code.value[0], message=message),
    )


def decisions_to_batch_response(decisions: list[Decision]) -> pb.CheckBatchResponse:
    """Encode decisions in order as a CheckBatchResponse (built in place: no per-decision copy)."""
    resp = pb.CheckBatchResponse()
    add = resp.decisions.add
    for d in decisions:
        fill_decision(add(), d)
    return resp


def columns_request(req: pb.CheckColumnsRequest) -> tuple[np.ndarray, np.ndarray]:
    """The observation and action tensors of a CheckColumnsRequest; raises InvalidRequest naming the field."""
    if not req.HasField("observations"):
        raise InvalidRequest("observations is missing; send the [N, *observation_shape] observations")
    if not req.HasField("actions"):
        raise InvalidRequest("actions is missing; send the [N, *action_shape] actions the agent proposes")
    return to_numpy(req.observations, "observations"), to_numpy(req.actions, "actions")


def columns_to_pb(cd: ColumnDecisions) -> pb.CheckColumnsResponse:
    """Encode column answers: arrays as tensors, names once, per-row detail only where there is some."""
    actions = cd.actions
    if not cd.has_action.all():
        actions = np.array(actions, copy=True)
        actions[~cd.has_action] = 0
    resp = pb.CheckColumnsResponse(
        config_version=cd.config_version,
        batch_id=cd.batch_id,
        actions=from_numpy(actions),
        signal_names=cd.signal_names,
        signals=from_numpy(cd.values),
        thresholds=cd.thresholds.tolist(),
        tripped=from_numpy(cd.tripped),
        rule_names=cd.rule_names,
        rule_reasons=cd.rule_reasons,
        fallback_names=cd.fallback_names,
    )
    resp.verdicts.extend(cd.verdicts.tolist())
    resp.rules.extend(cd.rules.tolist())
    resp.fallbacks.extend(cd.fallbacks.tolist())
    if cd.shadow is not None:
        resp.shadow_verdicts.extend(cd.shadow.tolist())
    add = resp.details.add
    for i in np.flatnonzero(cd.needs_detail() | ~cd.has_action).tolist():
        row = add(
            row=i,
            reasons=cd.reasons_of(i),
            escalation_id=cd.escalation_ids.get(i, ""),
            no_action=not cd.has_action[i],
            failed_stages=cd.errors.get(i, ()),
        )
        e = cd.unchecked.get(i)
        if e is not None:
            code, message = status_for(e)
            row.error.code = code.value[0]
            row.error.message = message
            row.reasons[:] = [row.error.message]
    return resp
