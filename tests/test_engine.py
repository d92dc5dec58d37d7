"""The Guard engine driven directly, with no server."""

import numpy as np
import pytest

from interlock.engine import Guard
from interlock.errors import InvalidRequest, UnknownAgent
from interlock.monitors import BUILDERS, Monitor
from interlock.types import CheckInput, Verdict
from tests.support.fixtures import box_agent, cartpole_balancer, discrete_agent, loaded

UPRIGHT = np.array([0.0, 0.0, 0.01, 0.0], np.float32)
TILTED = np.array([0.0, 0.0, 0.15, 0.0], np.float32)


def guard_for(*agents, tmp_path=None):
    return Guard(loaded(list(agents), base_dir=tmp_path)).load()


def test_allow_and_substitute_from_rules():
    g = guard_for(discrete_agent())
    ok, tilted, invalid = g.check(
        [
            CheckInput("cartpole", UPRIGHT, np.int64(1)),
            CheckInput("cartpole", TILTED, np.int64(1)),
            CheckInput("cartpole", UPRIGHT, np.int64(5)),
        ]
    )
    assert ok.verdict is Verdict.ALLOW and int(ok.action) == 1 and ok.rule == ""
    assert tilted.verdict is Verdict.SUBSTITUTE and int(tilted.action) == 0 and tilted.rule == "tilted"
    assert tilted.fallback == "noop"
    assert invalid.verdict is Verdict.SUBSTITUTE and invalid.rule == "invalid"
    sig = {name: (v, t, tr) for name, v, t, tr in tilted.signals}
    assert sig["limits.pole_upright"] == (1.0, 0.5, True)
    assert sig["action_space.invalid"][2] is False
    assert ok.config_version == "test-1" and len({ok.decision_id, tilted.decision_id}) == 2


def test_box_actions_clipped_nan_included():
    g = guard_for(box_agent())
    obs = np.zeros(3, np.float32)
    inside, outside, nan = g.check(
        [
            CheckInput("arm-1", obs, np.array([0.5, -0.5], np.float32)),
            CheckInput("arm-2", obs, np.array([3.0, -0.5], np.float32)),
            CheckInput("arm-1", obs, np.array([np.nan, 2.0], np.float32)),
        ]
    )
    assert inside.verdict is Verdict.ALLOW
    assert outside.verdict is Verdict.SUBSTITUTE
    np.testing.assert_allclose(outside.action, [1.0, -0.5])
    assert dict((n, v) for n, v, _, _ in outside.signals)["action_space.distance"] == pytest.approx(2.0)
    np.testing.assert_allclose(nan.action, [0.0, 1.0])


def test_batch_keeps_request_order_across_agents():
    g = guard_for(discrete_agent(), box_agent())
    items = [
        CheckInput("arm-x", np.zeros(3, np.float32), np.array([5.0, 0], np.float32)),
        CheckInput("cartpole", TILTED, np.int64(1)),
        CheckInput("arm-y", np.zeros(3, np.float32), np.array([0.1, 0], np.float32)),
    ]
    ds = g.check(items)
    assert [d.agent_id for d in ds] == ["arm-x", "cartpole", "arm-y"]
    assert [d.verdict for d in ds] == [Verdict.SUBSTITUTE, Verdict.SUBSTITUTE, Verdict.ALLOW]


def test_malformed_requests_raise_clear_errors():
    g = guard_for(discrete_agent())
    with pytest.raises(UnknownAgent, match="agent_id 'nope' matches no agent.*configured: cartpole"):
        g.check([CheckInput("nope", UPRIGHT, np.int64(0))])
    with pytest.raises(InvalidRequest, match=r"observation has shape \[3\]; expected \[4\]"):
        g.check([CheckInput("cartpole", np.zeros(3, np.float32), np.int64(0))])
    with pytest.raises(InvalidRequest, match="observation has dtype int64; expected float32"):
        g.check([CheckInput("cartpole", np.zeros(4, np.int64), np.int64(0))])
    with pytest.raises(InvalidRequest, match="NaN or Inf at flat index"):
        g.check([CheckInput("cartpole", np.array([0, np.nan, 0, np.inf], np.float32), np.int64(0))])
    with pytest.raises(InvalidRequest, match="discrete actions are integers"):
        g.check([CheckInput("cartpole", UPRIGHT, np.float32(1.0))])
    with pytest.raises(UnknownAgent, match=r"requests\[1\]: agent_id 'x'"):
        g.check(
            [CheckInput("cartpole", UPRIGHT, np.int64(0)), CheckInput("x", UPRIGHT, np.int64(0))],
            indexed=True,
        )


class ExplodingMonitor(Monitor):
    kind = "exploding"

    @property
    def signal_names(self):
        return ["boom"]

    def check(self, batch):
        raise RuntimeError("onnx session died")


@pytest.fixture
def exploding(monkeypatch):
    """Swap the rules monitor's builder for one that raises on the request path."""
    monkeypatch.setitem(
        BUILDERS, "rules", lambda cfg, spaces, runtime, where: ExplodingMonitor(cfg.name, spaces, runtime)
    )


def test_monitor_failure_fails_closed_to_halt(exploding):
    agent = discrete_agent()
    agent["policy"]["rules"] = [
        {"name": "r", "when": "tripped.action_space.invalid", "verdict": "substitute", "fallback": "noop"}
    ]
    [d] = guard_for(agent).check([CheckInput("cartpole", UPRIGHT, np.int64(1))])
    assert d.verdict is Verdict.HALT and d.action is None
    assert "monitor 'limits' failed: RuntimeError: onnx session died" in d.reasons
    assert d.errors == ["monitor:limits"]


def test_monitor_failure_uses_fail_safe_fallback(exploding):
    agent = discrete_agent(fail_safe="noop")
    agent["policy"]["rules"] = []
    [d] = guard_for(agent).check([CheckInput("cartpole", UPRIGHT, np.int64(1))])
    assert d.verdict is Verdict.SUBSTITUTE and int(d.action) == 0 and d.fallback == "noop"


def test_fail_open_only_when_configured(exploding):
    agent = discrete_agent(fail_mode="open")
    agent["policy"]["rules"] = []
    [d] = guard_for(agent).check([CheckInput("cartpole", UPRIGHT, np.int64(1))])
    assert d.verdict is Verdict.ALLOW and int(d.action) == 1
    assert any("fail_mode is open" in r for r in d.reasons)


def test_rule_runtime_error_fails_closed():
    agent = discrete_agent()
    agent["policy"]["rules"] = [{"name": "oob", "when": "obs[10] > 0.0", "verdict": "allow"}]
    [d] = guard_for(agent).check([CheckInput("cartpole", UPRIGHT, np.int64(1))])
    assert d.verdict is Verdict.HALT and d.errors == ["policy"]
    assert any("rule 'oob' could not be evaluated" in r for r in d.reasons)


def test_fallback_outside_action_space_halts(tmp_path):
    agent = box_agent()
    agent["fallbacks"]["wild"] = {"kind": "onnx_policy", "model": "wild.onnx"}
    agent["policy"]["rules"][0]["fallback"] = "wild"
    from tests.support.fixtures import linear_model

    linear_model(tmp_path / "wild.onnx", np.full((3, 2), 10.0, np.float32), np.full(2, 5.0, np.float32))
    [d] = guard_for(agent, tmp_path=tmp_path).check(
        [CheckInput("arm-1", np.ones(3, np.float32), np.array([9.0, 0], np.float32))]
    )
    assert d.verdict is Verdict.HALT and d.action is None
    assert any("outside the action space" in r for r in d.reasons)


def test_onnx_backup_policy_fallback(tmp_path):
    cartpole_balancer(tmp_path / "backup.onnx")
    agent = discrete_agent(
        fallbacks={"noop": {"kind": "onnx_policy", "model": "backup.onnx", "output": "logits"}}
    )
    g = guard_for(agent, tmp_path=tmp_path)
    tilted_left = np.array([0, 0, -0.15, 0], np.float32)
    right, left = g.check(
        [CheckInput("cartpole", TILTED, np.int64(0)), CheckInput("cartpole", tilted_left, np.int64(1))]
    )
    assert (int(right.action), int(left.action)) == (1, 0)


def test_halt_default_and_fail_safe_action_on_halt():
    agent = discrete_agent(policy={"rules": [], "default": "halt"}, fail_safe="noop")
    [d] = guard_for(agent).check([CheckInput("cartpole", UPRIGHT, np.int64(1))])
    assert d.verdict is Verdict.HALT and int(d.action) == 0


def test_fallback_raising_at_run_time_halts_and_is_recorded(tmp_path):
    from tests.support.fixtures import linear_model

    linear_model(tmp_path / "wrong_dims.onnx", np.ones((3, 2), np.float32))  # expects obs of size 3, gets 4
    agent = discrete_agent(
        fallbacks={"noop": {"kind": "onnx_policy", "model": "wrong_dims.onnx", "output": "logits"}}
    )
    [d] = guard_for(agent, tmp_path=tmp_path).check([CheckInput("cartpole", TILTED, np.int64(1))])
    assert d.verdict is Verdict.HALT and d.action is None
    assert d.errors == ["fallback:noop"]
    assert any(r.startswith("fallback 'noop' failed") for r in d.reasons)


def test_one_session_per_model_file_and_cpu_fallback_provider(tmp_path):
    cartpole_balancer(tmp_path / "backup.onnx")
    agent = discrete_agent(
        fallbacks={
            "a": {"kind": "onnx_policy", "model": "backup.onnx", "output": "logits"},
            "b": {"kind": "onnx_policy", "model": str(tmp_path / "backup.onnx"), "output": "logits"},
        }
    )
    agent["policy"]["rules"] = [{"name": "r", "when": "true", "verdict": "substitute", "fallback": "a"}]
    g = Guard(
        loaded(
            [agent], base_dir=tmp_path, onnx={"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
        )
    ).load()
    fa, fb = g.agents[0].fallbacks["a"], g.agents[0].fallbacks["b"]
    assert fa._session is fb._session
    import onnxruntime as ort

    expected = (
        "CUDAExecutionProvider"
        if "CUDAExecutionProvider" in ort.get_available_providers()
        else ("CPUExecutionProvider")
    )
    assert fa._session.get_providers()[0] == expected
