"""`interlock ensemble train` (torch extra) on real CartPole rollouts."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest

from interlock.ensembles import EnsembleError
from interlock.ensembles.common import META_KIND, META_STATE_SCALE
from interlock.ensembles.scores import dynamics_scores, q_scores
from interlock.ensembles.train import TrainConfig, train_ensemble
from tests.support.ensembles import cartpole_transitions, run


@pytest.fixture(scope="module")
def data():
    return cartpole_transitions(episodes=8, epsilon=0.3, seed=3)


def meta(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_q_ensemble_with_priors_is_unsure_off_the_data(tmp_path, data):
    pytest.importorskip("torch")
    cfg = TrainConfig(kind="q", members=4, hidden=(32, 32), epochs=30, prior_scale=1.0, seed=0)
    obs, act = data["obs"], data["action"]
    target = 50.0 - 200.0 * np.abs(obs[:, 2]) - 10.0 * np.abs(obs[:, 0]) + 5.0 * act  # a Markov Q target
    arrays = {**data, "q_target": target}
    report = train_ensemble(arrays, tmp_path / "q.onnx", cfg, progress=False, members_dir=tmp_path / "m")
    assert report.compile.strategy == "stacked" and report.compile.outputs["q"][0] == 4
    assert len(list((tmp_path / "m").glob("member_*.onnx"))) == 4
    assert meta(tmp_path / "q.onnx")[META_KIND] == "q"
    (q_in,) = run(tmp_path / "q.onnx", {"obs": obs})
    (q_out,) = run(tmp_path / "q.onnx", {"obs": obs * 8.0})
    assert q_scores(q_out, act)["q_std"].mean() > 3 * q_scores(q_in, act)["q_std"].mean()
    # the members learned the targets (R^2 > 0.8)
    pred = q_in.mean(0)[np.arange(len(act)), act]
    assert 1 - np.mean((pred - target) ** 2) / target.var() > 0.8


def test_dynamics_and_policy_ensembles(tmp_path, data):
    pytest.importorskip("torch")
    rep = train_ensemble(
        data, tmp_path / "dyn.onnx", TrainConfig(kind="dynamics", members=3, epochs=4), progress=False
    )
    assert rep.val_loss[0] < 0.2  # CartPole steps are nearly linear: the members fit them
    scale = np.array(json.loads(meta(tmp_path / "dyn.onnx")[META_STATE_SCALE]))
    assert scale.shape == (4,) and (scale > 0).all()
    obs, act = data["obs"], data["action"].astype(np.int64)
    (pred,) = run(tmp_path / "dyn.onnx", {"obs": obs, "action": act})
    np.testing.assert_allclose(pred.mean(0), data["next_obs"] - obs, atol=3 * scale.max())
    (far,) = run(tmp_path / "dyn.onnx", {"obs": obs * 8.0, "action": act})
    assert (
        dynamics_scores(far, scale)["disagreement"].mean()
        > 3 * dynamics_scores(pred, scale)["disagreement"].mean()
    )
    rep = train_ensemble(
        data, tmp_path / "pi.onnx", TrainConfig(kind="policy", members=3, epochs=3), progress=False
    )
    (logits,) = run(tmp_path / "pi.onnx", {"obs": obs})
    greedy = (obs[:, 2] + 0.5 * obs[:, 3] + 0.01 * obs[:, 0] + 0.1 * obs[:, 1] > 0).astype(int)
    assert (logits.mean(0).argmax(-1) == greedy).mean() > 0.9  # it imitates the controller behind the data


def test_training_errors_are_clear(tmp_path, data, monkeypatch):
    pytest.importorskip("torch")
    no_next = {k: v for k, v in data.items() if k != "next_obs"}
    with pytest.raises(EnsembleError, match="dynamics needs 'next_obs'"):
        train_ensemble(no_next, tmp_path / "x.onnx", TrainConfig(kind="dynamics", epochs=1), progress=False)
    box = {**data, "action": np.random.default_rng(0).standard_normal((len(data["obs"]), 2))}
    with pytest.raises(EnsembleError, match="q needs discrete actions"):
        train_ensemble(box, tmp_path / "x.onnx", TrainConfig(kind="q", epochs=1), progress=False)
    with pytest.raises(EnsembleError, match="at least 2"):
        train_ensemble(data, tmp_path / "x.onnx", TrainConfig(kind="q", members=1), progress=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(EnsembleError, match=r"pip install 'interlock\[train\]'"):
        train_ensemble(data, tmp_path / "x.onnx", TrainConfig(kind="q"), progress=False)
    assert not (tmp_path / "x.onnx").exists()


def test_box_action_dynamics_via_cli(tmp_path, capsys):
    pytest.importorskip("torch")
    from interlock.cli import main

    rng = np.random.default_rng(0)
    obs = rng.standard_normal((600, 3)).astype(np.float32)
    action = rng.uniform(-1, 1, (600, 2)).astype(np.float32)
    nxt = obs + 0.1 * np.concatenate([action, action[:, :1]], axis=1)
    np.savez(tmp_path / "t.npz", obs=obs, action=action, next_obs=nxt)
    code = main(
        [
            "ensemble",
            "train",
            "--kind",
            "dynamics",
            "--data",
            str(tmp_path / "t.npz"),
            "--members",
            "3",
            "--epochs",
            "2",
            "--hidden",
            "16",
            "-o",
            str(tmp_path / "d.onnx"),
            "-q",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "trained 3 dynamics members" in out and "verified" in out
    (pred,) = run(tmp_path / "d.onnx", {"obs": obs[:5], "action": action[:5]})
    assert pred.shape == (3, 5, 3)
