"""CheckBatch rows decoded as columns (one frombuffer per column) decide exactly as row by row."""

from __future__ import annotations

import numpy as np
import pytest

from interlock.client import make_request
from interlock.engine import Guard
from interlock.errors import InterlockError
from interlock.server.convert import request_to_input, stacked_requests
from interlock.types import Decision
from tests.support.fixtures import box_agent, discrete_agent, loaded

UPRIGHT = np.array([0.0, 0.0, 0.01, 0.0], np.float32)
TILTED = np.array([0.0, 0.0, 0.15, 0.0], np.float32)


def _same(a: Decision, b: Decision) -> None:
    assert (a.verdict, a.rule, a.fallback, a.reasons, a.errors) == (
        b.verdict,
        b.rule,
        b.fallback,
        b.reasons,
        b.errors,
    )
    assert (a.agent_id, a.episode_id, a.step, a.labels) == (b.agent_id, b.episode_id, b.step, b.labels)
    assert np.array_equal(a.observation, b.observation) and a.observation.dtype == b.observation.dtype
    assert np.array_equal(a.proposed_action, b.proposed_action)
    assert (a.action is None) == (b.action is None)
    if a.action is not None:
        assert np.array_equal(a.action, b.action) and a.action.dtype == b.action.dtype
    assert a.signals == b.signals


def _both(guard: Guard, reqs):
    """Decisions of the stacked path and of the row-by-row path (or the error each raises)."""
    stacked = stacked_requests(reqs)
    assert stacked is not None
    items, obs, acts = stacked
    rows = [request_to_input(r, f"requests[{i}]") for i, r in enumerate(reqs)]
    out = []
    for kwargs in ({"columns": (obs, acts)}, {}):
        try:
            out.append(guard.check(items if kwargs else rows, indexed=True, **kwargs))
        except InterlockError as e:
            out.append(e.message)
    return out


def test_uniform_discrete_rows_decide_as_row_by_row():
    guard = Guard(loaded([discrete_agent()])).load()
    obs = [UPRIGHT, TILTED, UPRIGHT]
    acts = [1, 1, 5]  # 5 is outside the space
    reqs = [
        make_request("cartpole", obs[i % 3], np.int64(acts[i]), f"ep-{i}", i, {"k": str(i)}) for i in range(3)
    ]
    fast, slow = _both(guard, reqs)
    assert [d.verdict.name for d in fast] == ["ALLOW", "SUBSTITUTE", "SUBSTITUTE"]
    for a, b in zip(fast, slow, strict=True):
        _same(a, b)
    assert fast[0].observation.flags.writeable  # as np.stack gives on the row-by-row path


def test_rows_the_engine_refuses_give_the_row_by_row_error():
    guard = Guard(loaded([discrete_agent()])).load()
    nan = UPRIGHT.copy()
    nan[1] = np.nan
    for bad in (
        [make_request("cartpole", UPRIGHT, np.int64(1)), make_request("cartpole", nan, np.int64(0))],
        [make_request("cartpole", np.zeros(3, np.float32), np.int64(1))] * 2,  # wrong shape
        [make_request("cartpole", UPRIGHT, np.float32(1.0))] * 2,  # a float discrete action
        [make_request("nobody", UPRIGHT, np.int64(1))] * 2,
    ):
        fast, slow = _both(guard, bad)
        assert isinstance(fast, str) and fast == slow and fast.startswith("requests[")


def test_box_rows():
    guard = Guard(loaded([box_agent()])).load()
    agent = guard.agents[0]
    shape = agent.spaces.observation.shape
    act_shape = agent.spaces.action.shape
    rng = np.random.default_rng(0)
    reqs = [
        make_request("arm-1", rng.standard_normal(shape),  # float64 rows: converted, as row by row
                     (rng.standard_normal(act_shape) * 3).astype(np.float32), step=i)
        for i in range(5)
    ]  # fmt: skip
    fast, slow = _both(guard, reqs)
    for a, b in zip(fast, slow, strict=True):
        _same(a, b)


@pytest.mark.parametrize(
    "second",
    [
        make_request("other", UPRIGHT, np.int64(1)),  # another agent
        make_request("cartpole", UPRIGHT.astype(np.float64), np.int64(1)),  # another dtype
        make_request("cartpole", np.zeros((2, 2), np.float32), np.int64(1)),  # another shape, same bytes
    ],
)
def test_rows_that_are_not_uniform_are_decoded_row_by_row(second):
    assert stacked_requests([make_request("cartpole", UPRIGHT, np.int64(0)), second]) is None
