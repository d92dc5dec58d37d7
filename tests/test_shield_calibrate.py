"""``interlock shield calibrate``: margins of the CartPole dynamics ensemble from real episodes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest

from interlock.cli.main import main
from interlock.reachability.margins import tighten

CARTPOLE = Path(__file__).resolve().parents[1] / "examples" / "cartpole_recovery"


def episodes(path: Path, length: float, n: int = 6, seed: int = 0) -> Path:
    """Real CartPole-v1 transitions of the example's agent (epsilon 0.2) with the pole half-length given."""
    sys.path.insert(0, str(CARTPOLE))
    try:
        import cartpole_physics as cp
    finally:
        sys.path.remove(str(CARTPOLE))
    agent = ort.InferenceSession(str(CARTPOLE / "agent.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"obs": [], "action": [], "next_obs": [], "episode": []}
    for e in range(n):
        env = gym.make("CartPole-v1", max_episode_steps=120)
        cp.Physics(length=length).apply(env)
        obs, _ = env.reset(seed=seed * 100 + e)
        while True:
            (logits,) = agent.run(None, {"obs": obs[None].astype(np.float32)})
            a = int(rng.integers(2)) if rng.random() < 0.2 else int(logits.argmax())
            nxt, _, term, trunc, _ = env.step(a)
            for k, v in (("obs", obs), ("action", a), ("next_obs", nxt), ("episode", e)):
                rows[k].append(v)
            obs = nxt
            if term or trunc:
                break
    np.savez(path, **{k: np.asarray(v) for k, v in rows.items()})
    return path


def test_calibrate_writes_margins_from_in_distribution_episodes(tmp_path, capsys) -> None:
    data = episodes(tmp_path / "nominal.npz", length=0.5)
    out = tmp_path / "margins.json"
    argv = [
        "shield",
        "calibrate",
        "--config",
        str(CARTPOLE / "interlock.yaml"),
        "--agent",
        "cartpole-recovery",
    ]
    assert main([*argv, "--data", str(data), "--steps", "5", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["monitor"] == "recover" and report["steps"] == 5 and report["quantile"] == 0.99
    margins = np.array(report["margins"])
    table = np.array(report["rollout_quantile"])
    assert table.shape == (5, 4) and margins.shape == (4,)
    assert np.all(margins > 0) and np.allclose(margins, table.max(axis=0))
    # The one-step quantile is that of the worst member's error, measured independently here.
    arrays = np.load(data)
    (pred,) = ort.InferenceSession(str(CARTPOLE / "dynamics.onnx")).run(
        None, {"obs": arrays["obs"].astype(np.float32), "action": arrays["action"].astype(np.int64)}
    )
    worst = np.abs(pred - arrays["next_obs"][None]).max(axis=0)
    np.testing.assert_allclose(report["one_step_quantile"], np.quantile(worst, 0.99, axis=0), rtol=1e-4)
    # Errors grow along an open-loop rollout, and the pole constraint is tightened by the pole margin.
    assert table[-1, 2] > table[0, 2]
    pole = report["constraints"]["pole"]
    assert pole["source"] == "math.abs(obs[2]) < 0.16"
    assert pole["suggested"] == f"math.abs(obs[2]) < {0.16 - margins[2]:.6g}"
    assert "suggested margins" in capsys.readouterr().out
    # The same model on a pole twice as long is measurably worse: the margins are the model's error.
    shifted = episodes(tmp_path / "shifted.npz", length=1.0, seed=1)
    out2 = tmp_path / "shifted.json"
    assert main([*argv, "--data", str(shifted), "--steps", "5", "-o", str(out2)]) == 0
    assert json.loads(out2.read_text())["one_step_quantile"][3] > report["one_step_quantile"][3]


def test_calibrate_needs_next_observations(tmp_path, capsys) -> None:
    data = tmp_path / "bad.npz"
    np.savez(data, obs=np.zeros((5, 4), np.float32), action=np.zeros(5, np.int64))
    code = main(
        [
            "shield",
            "calibrate",
            "--config",
            str(CARTPOLE / "interlock.yaml"),
            "--agent",
            "cartpole-recovery",
            "--data",
            str(data),
            "-o",
            str(tmp_path / "m.json"),
        ]
    )
    assert code == 2 and "no 'next_obs' array" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("math.abs(obs[2]) < 0.16", "math.abs(obs[2]) < 0.15"),
        ("obs[0] <= 2 && obs[0] >= -2", "obs[0] <= 1.9 && obs[0] >= -1.9"),
        ("(obs[1] > 0.5) || obs[2] < 1", "(obs[1] > 0.52) || obs[2] < 0.99"),
        ("obs[0] + obs[1] < 1", None),
    ],
)
def test_tighten_moves_simple_bounds_inwards(source, expected) -> None:
    assert tighten(source, [0.1, 0.02, 0.01]) == expected
