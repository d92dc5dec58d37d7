"""``interlock calibrate --under-rule NAME``: calibrate on the episodes the guard produces, not the agent's.

Real parts: the CartPole example's dynamics ensemble and policy (ONNX), CartPole-v1, the engine
(:class:`~interlock.engine.Guard`) running the named rule, and the ``interlock`` CLI. The config's
``probe`` rule pushes left at steps 0-2 of every episode (as LunarLander's probe fires the main engine,
docs/shift.md); its ``always_right`` rule would push right at every step and must not run.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from interlock.cli import main as cli_main
from interlock.config import load_config
from interlock.ensembles.common import EnsembleError
from interlock.errors import ConfigError
from interlock.monitors.calibrate import calibrate, guarded_act, rules_only_guard
from interlock.monitors.calibrate_transition import rollout_episodes
from interlock.spaces import AgentSpaces
from tests.support.ensembles import CARTPOLE_EXAMPLE, CARTPOLE_HEAD

RULES = """    policy:
      rules:
        - name: always_right
          when: "step > 1000000"
          verdict: substitute
          fallback: right
        - name: probe
          when: "step < 3 && action != 0"
          verdict: substitute
          fallback: left
        - name: push_right
          when: "true"
          verdict: substitute
          fallback: right
    fallbacks:
      left: {kind: constant, action: 0}
      right: {kind: constant, action: 1}
"""
MONITOR = """      - kind: transition
        name: drift
        model: dynamics_ensemble.onnx
        residual_scale: [2.0e-5, 8.0e-4, 2.0e-5, 1.2e-3]
        drift: 0.5
        thresholds: {surprise: 3.0, shift: 1.0e9}
"""


@pytest.fixture()
def config(tmp_path):
    shutil.copy(CARTPOLE_EXAMPLE / "dynamics_ensemble.onnx", tmp_path / "dynamics_ensemble.onnx")
    path = tmp_path / "interlock.yaml"
    path.write_text(CARTPOLE_HEAD + MONITOR + RULES)
    return path


def test_the_rollout_executes_what_the_named_rule_decides_and_nothing_else(config):
    loaded = load_config(config)
    (agent,) = loaded.config.agents
    spaces = AgentSpaces.from_config(agent)
    policy = str(CARTPOLE_EXAMPLE / "policy.onnx")
    plain = rollout_episodes("CartPole-v1", policy, spaces, 6, seed=50, progress=False)
    guard = rules_only_guard(loaded, "cartpole", ["probe"])
    probed = rollout_episodes(
        "CartPole-v1", policy, spaces, 6, seed=50, progress=False, act=guarded_act(guard, "cartpole", (4,))
    )
    for e in range(6):
        under = probed.action[probed.episode == e]
        assert list(under[:3]) == [0, 0, 0]  # the probe
        assert 1 in under[3:] and 0 in under[3:]  # the policy's own afterwards: push_right did not run
    assert any(plain.action[plain.episode == e][:3].tolist() != [0, 0, 0] for e in range(6))


def test_calibrate_under_a_rule_writes_thresholds_from_the_guarded_episodes(config, tmp_path, capsys):
    out = tmp_path / "under.json"
    code = cli_main(
        [
            "calibrate", "--config", str(config), "--agent", "cartpole", "--env", "CartPole-v1",
            "--policy", str(CARTPOLE_EXAMPLE / "policy.onnx"), "--episodes", "12", "--env-seed", "60",
            "--under-rule", "probe", "-o", str(out), "-q",
        ]
    )  # fmt: skip
    assert code == 0 and "drift" in capsys.readouterr().out
    under = json.loads(out.read_text())["monitors"]["drift"]
    calibrate(
        config, "cartpole", None, env="CartPole-v1", policy=str(CARTPOLE_EXAMPLE / "policy.onnx"),
        episodes=12, env_seed=60, output=tmp_path / "alone.json",
    )  # fmt: skip
    alone = json.loads((tmp_path / "alone.json").read_text())["monitors"]["drift"]
    assert under["residual_scale"] != alone["residual_scale"]  # other transitions were seen


def test_unknown_rules_and_recorded_data_are_refused_with_what_to_do(config, tmp_path):
    policy = str(CARTPOLE_EXAMPLE / "policy.onnx")
    expected = r"--under-rule nope: agent 'cartpole' has no such rule \(its rules: always_right, probe, push_"
    with pytest.raises(ConfigError, match=expected):
        calibrate(config, "cartpole", None, env="CartPole-v1", policy=policy, under_rules=["nope"])
    np.savez(tmp_path / "d.npz", obs=np.zeros((4, 4)), action=np.zeros(4, np.int64))
    with pytest.raises(EnsembleError, match="--under-rule changes a rollout of --policy"):
        calibrate(config, "cartpole", tmp_path / "d.npz", under_rules=["probe"], output=tmp_path / "x.json")
