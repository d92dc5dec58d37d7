"""Issue 10, item 1: an action outside the action space never reaches a model or a neighbouring row.

Against a real server on loopback running ``examples/cartpole/interlock.yaml`` (real
ONNX ensembles), under both fail modes; and at engine level, a monitor that fails on
one row (a tabular shield asked about a state outside its model) fails that row only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from interlock.config import LoadedConfig, parse_config
from interlock.engine import Guard
from interlock.faultlog import FailureLog
from interlock.server.background import background_server
from interlock.tensors import to_numpy
from interlock.types import CheckInput, Verdict
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.fixtures import discrete_agent, loaded
from tests.support.ops import TILTED, UPRIGHT, metric_value, req

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str, base_dir: Path | None = None, **agent_overrides) -> LoadedConfig:
    """An example config as shipped, with ``agent_overrides`` applied to each agent."""
    path = EXAMPLES / name / "interlock.yaml"
    data = yaml.safe_load(path.read_text())
    for agent in data["agents"]:
        agent.update(agent_overrides)
    return LoadedConfig(parse_config(data, str(path)), base_dir or path.parent, "test", str(path))


@pytest.fixture(scope="module", params=["closed", "open"])
def cartpole(request):
    with (
        background_server(example("cartpole", fail_mode=request.param)) as srv,
        grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch,
    ):
        yield srv, pb_grpc.GuardStub(ch), request.param


def internal_errors(srv) -> float:
    return sum(
        metric_value(srv, "interlock_internal_errors_total", agent="cartpole", stage=f"monitor:{m}")
        for m in ("q_doubt", "novelty", "limits", "action_space")
    )


@pytest.mark.parametrize("action", [2, 7, 255, 2**62, -1, -(2**63)])
def test_out_of_range_action_is_decided_by_the_invalid_action_rule(cartpole, action):
    srv, stub, _ = cartpole
    before = internal_errors(srv)
    d = stub.Check(req(UPRIGHT, action=np.int64(action)))
    assert d.verdict == pb.VERDICT_SUBSTITUTE, d.reasons
    assert d.rule == "invalid_action" and d.fallback == "backup"
    assert int(to_numpy(d.action)) in (0, 1)
    assert list(d.reasons) == ["the action is not 0 or 1"]
    signals = {s.name: s for s in d.signals}
    assert signals["action_space.invalid"].tripped
    # The models never saw the row: their signals are absent, not made up.
    assert not any(n.startswith(("q_doubt.", "novelty.")) for n in signals)
    assert internal_errors(srv) == before


def test_batch_rows_beside_an_invalid_action_are_decided_normally(cartpole):
    srv, stub, _ = cartpole
    before = internal_errors(srv)
    rows = [req(UPRIGHT, action=1), req(UPRIGHT, action=7), req(TILTED, action=1), req(UPRIGHT, action=0)]
    out = stub.CheckBatch(pb.CheckBatchRequest(requests=rows)).decisions
    assert [d.verdict for d in out] == [
        pb.VERDICT_ALLOW,
        pb.VERDICT_SUBSTITUTE,
        pb.VERDICT_SUBSTITUTE,
        pb.VERDICT_ALLOW,
    ]
    assert [d.rule for d in out] == ["", "invalid_action", "near_failure", ""]
    assert all(int(to_numpy(d.action)) in (0, 1) for d in out)
    # Valid rows still get every model's signals.
    assert {"q_doubt.q_std", "novelty.disagreement"} <= {s.name for s in out[0].signals}
    assert internal_errors(srv) == before


def test_fail_open_never_allows_a_tilted_row_beside_an_invalid_one(cartpole):
    _, stub, mode = cartpole
    out = stub.CheckBatch(
        pb.CheckBatchRequest(requests=[req(TILTED, action=1), req(UPRIGHT, action=7)])
    ).decisions
    assert [(d.verdict, d.rule) for d in out] == [
        (pb.VERDICT_SUBSTITUTE, "near_failure"),
        (pb.VERDICT_SUBSTITUTE, "invalid_action"),
    ], mode


# --------------------------------------------------------------------------- engine level


def shield_guard(tmp_path: Path, fail_mode: str = "closed", rules: list | None = None) -> Guard:
    """A 4-state chain (state 3 unsafe; action 1 moves right, 0 stays) behind a tabular shield."""
    P = np.zeros((4, 2, 4))
    for s in range(4):
        P[s, 0, s] = 1.0
        P[s, 1, min(s + 1, 3)] = 1.0
    np.savez(tmp_path / "chain.npz", P=P, unsafe=np.array([3]), terminal=np.array([3]))
    agent = {
        "id": "chain",
        "observation": {"shape": [], "dtype": "int64"},
        "action": {"type": "discrete", "n": 2},
        "monitors": [
            {"kind": "action_space"},
            {
                "kind": "reachability",
                "name": "shield",
                "model": {"kind": "tabular", "transitions": "chain.npz"},
            },
        ],
        "policy": {
            "rules": rules
            if rules is not None
            else [
                {
                    "name": "invalid",
                    "when": "tripped.action_space.invalid",
                    "verdict": "substitute",
                    "fallback": "stay",
                },
                {
                    "name": "shield",
                    "when": "tripped.shield.unsafe",
                    "verdict": "substitute",
                    "fallback": "stay",
                },
            ]
        },
        "fallbacks": {"stay": {"kind": "constant", "action": 0}},
        "fail_safe": "stay",
        "fail_mode": fail_mode,
    }
    return Guard(loaded([agent], base_dir=tmp_path)).load()


def chain(state: int, action: int) -> CheckInput:
    return CheckInput("chain", np.int64(state), np.int64(action))


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
def test_a_monitor_failing_on_one_row_fails_only_that_row(tmp_path, fail_mode):
    guard = shield_guard(tmp_path, fail_mode)
    # Row 1 asks about state 99, outside the shield's model: the monitor raises for it alone.
    out = guard.check([chain(0, 1), chain(99, 1), chain(2, 1), chain(1, 5)])
    assert [d.verdict for d in out[:1]] == [Verdict.ALLOW]
    assert out[0].errors == [] and out[2].errors == [] and out[3].errors == []
    assert (out[2].verdict, out[2].rule) == (Verdict.SUBSTITUTE, "shield")  # 2 -> 3 is unsafe
    assert (out[3].verdict, out[3].rule) == (Verdict.SUBSTITUTE, "invalid")
    failed = out[1]
    assert failed.errors == ["monitor:shield"]
    assert any("state index 99 is outside the model's states [0, 4)" in r for r in failed.reasons)
    if fail_mode == "open":
        assert failed.verdict is Verdict.ALLOW and int(failed.action) == 1
    else:
        assert failed.verdict is Verdict.SUBSTITUTE and int(failed.action) == 0 and failed.rule == ""


def test_fail_open_never_executes_an_action_outside_the_space(tmp_path):
    # Without an action_space rule and with state 99 making the shield fail, fail_mode open must
    # still not execute action 5: the fail-safe applies.
    guard = shield_guard(tmp_path, "open", rules=[])
    [d] = guard.check([chain(99, 5)])
    assert d.verdict is Verdict.SUBSTITUTE and int(d.action) == 0 and d.fallback == "stay"
    [d] = guard.check([chain(0, 5)])  # no rule about it, default allow: still not executed
    assert d.verdict is Verdict.SUBSTITUTE and int(d.action) == 0
    assert any("outside the action space" in r for r in d.reasons)


def test_a_monitor_that_keeps_failing_logs_one_traceback_then_counts(tmp_path, caplog):
    guard = shield_guard(tmp_path)
    with caplog.at_level(logging.ERROR, logger="interlock.engine"):
        for _ in range(50):
            guard.check([chain(99, 1), chain(0, 1)])
    records = [r for r in caplog.records if r.name == "interlock.engine"]
    assert len(records) == 1 and records[0].exc_info is not None
    assert "monitor 'shield' failed" in records[0].getMessage()
    fl = guard.agents[0].failure_logs["monitor:shield"]
    assert fl.total == 50 and "state index 99" in (fl.first_traceback or "")


def test_failure_log_summarises_once_per_interval(caplog):
    now = [0.0]
    fl = FailureLog(logging.getLogger("test.faultlog"), "monitor 'm'", interval=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="test.faultlog"):
        for t in range(0, 130):  # one failure a second for 130 s
            now[0] = float(t)
            try:
                raise RuntimeError(f"boom {t}")
            except RuntimeError as e:
                fl.failed(e)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 3, msgs  # the first (with traceback), then one line at 60 s and at 120 s
    assert caplog.records[0].exc_info is not None and caplog.records[1].exc_info is None
    assert "failed 60 more times in the last 60 s (61 in all; latest: RuntimeError: boom 60)" in msgs[1]
    assert "boom 0" in (fl.first_traceback or "") and fl.total == 130


def test_shadow_mode_never_executes_an_action_outside_the_space():
    """Shadow mode answers ALLOW with the proposed action, except where no mode could execute it."""
    guard = Guard(loaded([discrete_agent(shadow=True)])).load()
    upright = np.zeros(4, np.float32)
    ok, bad = guard.check(
        [CheckInput("cartpole", upright, np.int64(1)), CheckInput("cartpole", upright, np.int64(7))]
    )
    assert ok.verdict is Verdict.ALLOW and int(ok.action) == 1
    assert bad.verdict is Verdict.SUBSTITUTE and bad.rule == "invalid"
    assert int(bad.action) == 0  # the fallback's action, inside the space
