"""The CartPole-v1 example's committed ONNX policies, run in a real CartPole-v1 env.

``examples/cartpole/policy.onnx`` is the PPO-trained agent (train_policy.py) and
``examples/cartpole/backup_policy.onnx`` the fixed linear controller
(make_backup_policy.py). Both map ``obs [batch, 4] float32 -> logits [batch, 2] float32``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnx
import onnxruntime as ort
import pytest

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "cartpole"
POLICY = EXAMPLE_DIR / "policy.onnx"
BACKUP = EXAMPLE_DIR / "backup_policy.onnx"
#: Reset seeds of the test episodes (not those used for training or model selection).
SEEDS = range(7_000, 7_005)


def _session(path: Path) -> ort.InferenceSession:
    script = "train_policy.py" if path == POLICY else "make_backup_policy.py"
    assert path.is_file(), f"{path} is missing: run examples/cartpole/{script}"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _onnx_returns(sess: ort.InferenceSession, seeds: range) -> np.ndarray:
    """Greedy returns ``[len(seeds)]``: one env, one ONNX call per step with a batch of 1."""
    env = gym.make("CartPole-v1")
    returns = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            (logits,) = sess.run(["logits"], {"obs": obs.reshape(1, 4).astype(np.float32)})
            obs, reward, terminated, truncated, _ = env.step(int(logits[0].argmax()))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return np.array(returns)


def _random_returns(seeds: range) -> np.ndarray:
    """Returns ``[len(seeds)]`` of uniformly random actions (the action space seeded per episode)."""
    env = gym.make("CartPole-v1")
    returns = []
    for seed in seeds:
        env.reset(seed=seed)
        env.action_space.seed(seed)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return np.array(returns)


@pytest.mark.parametrize("path", [POLICY, BACKUP], ids=["policy", "backup"])
def test_signature_and_dynamic_batch(path: Path) -> None:
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = _session(path)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape[1]) == ("obs", "tensor(float)", 4)
    assert (out.name, out.type, out.shape[1]) == ("logits", "tensor(float)", 2)
    assert isinstance(inp.shape[0], str), f"batch axis of {path.name} should be dynamic, got {inp.shape}"
    obs = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    (batched,) = sess.run(["logits"], {"obs": obs})
    assert batched.shape == (7, 2) and batched.dtype == np.float32
    singles = np.concatenate([sess.run(["logits"], {"obs": row[None]})[0] for row in obs])
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-6)


def test_trained_policy_balances() -> None:
    returns = _onnx_returns(_session(POLICY), SEEDS)
    assert returns.mean() >= 400, f"trained policy mean return {returns.mean():.1f} ({returns.tolist()})"


def test_backup_beats_random() -> None:
    backup = _onnx_returns(_session(BACKUP), SEEDS)
    baseline = _random_returns(range(7_000, 7_020))
    assert baseline.mean() < 100, f"random baseline unexpectedly high: {baseline.mean():.1f}"
    assert backup.mean() > 2 * baseline.mean(), (
        f"backup mean {backup.mean():.1f} vs random {baseline.mean():.1f} ({backup.tolist()})"
    )
    # It is meant to balance: most episodes should reach well past what random play does.
    assert np.mean(backup > baseline.max()) >= 0.8


def test_backup_follows_the_linear_rule() -> None:
    """The committed file is what make_backup_policy.py builds, and its argmax is the documented rule."""
    spec = importlib.util.spec_from_file_location("make_backup_policy", EXAMPLE_DIR / "make_backup_policy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rebuilt = module.build_model()
    committed = onnx.load(str(BACKUP))
    assert rebuilt.graph.SerializeToString() == committed.graph.SerializeToString(), (
        "backup_policy.onnx is stale: rerun examples/cartpole/make_backup_policy.py"
    )

    obs = np.random.default_rng(1).normal(size=(2048, 4)).astype(np.float32)
    x, x_dot, theta, theta_dot = obs.T.astype(np.float64)
    score = theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot
    (logits,) = _session(BACKUP).run(["logits"], {"obs": obs})
    clear = np.abs(score) > 1e-5
    np.testing.assert_array_equal(logits.argmax(axis=1)[clear], (score[clear] > 0).astype(np.int64))
