"""`interlock calibrate` on real CartPole rollouts and a real fused ensemble."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

from interlock.cli import main as ensemble_main
from interlock.engine import Guard
from interlock.ensembles.compile import compile_ensemble
from interlock.errors import ConfigError
from interlock.monitors.calibrate import calibrate, conformal_threshold
from interlock.types import CheckInput
from tests.support.ensembles import cartpole_transitions, dynamics_members, q_ensemble_members


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "in_dist.npz"
    np.savez(path, **cartpole_transitions(episodes=12, epsilon=0.3, seed=0))
    return path


def write_config(tmp_path, with_file=True):
    compile_ensemble(q_ensemble_members(tmp_path, k=4), tmp_path / "q_ens.onnx")
    compile_ensemble(dynamics_members(tmp_path, k=3), tmp_path / "dyn_ens.onnx")
    extra = {"thresholds_file": "thresholds.json"} if with_file else {}
    cfg = {
        "agents": [
            {
                "id": "cartpole",
                "observation": {"shape": [4]},
                "action": {"type": "discrete", "n": 2},
                "monitors": [
                    {"kind": "action_space"},
                    {
                        "kind": "uncertainty",
                        "name": "q_doubt",
                        "model": "q_ens.onnx",
                        "ensemble": "q",
                        **extra,
                    },
                    {
                        "kind": "uncertainty",
                        "name": "novelty",
                        "model": "dyn_ens.onnx",
                        "ensemble": "dynamics",
                        **extra,
                    },
                ],
                "policy": {
                    "rules": [{"name": "novel", "when": "tripped.novelty.disagreement", "verdict": "halt"}]
                },
            }
        ]
    }
    (tmp_path / "interlock.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "interlock.yaml"


def test_conformal_threshold():
    scores = np.arange(1, 101, dtype=float)  # 1..100
    assert conformal_threshold(scores, 0.05) == 96.0  # ceil(101 * 0.95) = 96th smallest
    assert conformal_threshold(scores, 0.001) == 100.0


def test_calibrate_writes_thresholds_the_guard_then_uses(tmp_path, rollouts):
    cfg = write_config(tmp_path)
    report = calibrate(cfg, "cartpole", rollouts, rate=0.05, holdout=0.3, seed=1)
    data = json.loads((tmp_path / "thresholds.json").read_text())
    assert set(data["monitors"]) == {"q_doubt", "novelty"}
    assert report.held_out_rows > 300 and report.calibration_rows > report.held_out_rows
    for m in report.monitors:
        for s in m.signals:
            assert data["monitors"][m.monitor]["thresholds"][s.signal] == s.threshold
            assert s.calibration_rate <= 0.05
            assert s.held_out_rate <= 0.05 * 2.5  # correlated steps of few episodes: loose, but bounded
    guard = Guard.from_file(str(cfg)).load()
    arrays = np.load(rollouts)
    obs, act = arrays["obs"][:200], arrays["action"][:200]
    decisions = guard.check([CheckInput("cartpole", o, np.int64(a)) for o, a in zip(obs, act, strict=True)])
    thr = data["monitors"]["novelty"]["thresholds"]["disagreement"]
    for d in decisions:
        sig = {n: (v, t, tr) for n, v, t, tr in d.signals}
        assert sig["novelty.disagreement"][1] == pytest.approx(thr)
        assert (d.verdict.name == "HALT") == sig["novelty.disagreement"][2]
    # far outside the data (cart 10x further, 10x faster) the dynamics ensemble flags most rows
    far = [CheckInput("cartpole", o * 10.0, np.int64(a)) for o, a in zip(obs, act, strict=True)]
    flagged = np.mean([d.verdict.name == "HALT" for d in guard.check(far)])
    assert flagged > 0.5


def test_cli_calibrate_reports_and_needs_a_target_file(tmp_path, rollouts, capsys):
    cfg = write_config(tmp_path, with_file=False)
    args = ["calibrate", "--config", str(cfg), "--agent", "cartpole", "--data", str(rollouts)]
    assert ensemble_main(args) == 2  # the CLI's convention: a config problem is one line, exit 2
    assert re.search("has no thresholds_file.*--output", capsys.readouterr().err)
    assert (
        ensemble_main(
            [*args, "--false-alarm-rate", "0.02", "-o", str(tmp_path / "t.json"), "--monitor", "q_doubt"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "q_doubt.q_std" in out and "FAR (held out)" in out and "novelty" not in out
    with pytest.raises(ConfigError, match="no agent 'nobody'"):
        calibrate(cfg, "nobody", rollouts)
