"""The model-predictive shield: candidates rolled out under a model, the agent's preferred safe action,
the online residual correction, and a real CartPole-v1 with a pole twice as long through a real server."""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest

from interlock.client.guard import GuardClient
from interlock.engine import Guard
from interlock.errors import ConfigError
from interlock.reachability.correction import EpisodeResidualMean
from interlock.server.background import background_server
from interlock.types import CheckInput, Verdict
from tests.support import plugins
from tests.support.fixtures import linear_model, loaded

ROOT = Path(__file__).resolve().parents[1]
CARTPOLE = ROOT / "examples" / "cartpole_recovery"

# ---------------------------------------------------------------------------- a line world the test controls
# obs [x]; actions 0, 1, 2 move x by -step, 0, +step (members: steps 0.6 and 0.4); constraint |x| < 1;
# continuation "repeat": the rollout keeps the first action for H steps.


def scores_model(path: Path, prefs: list[float]) -> Path:
    """The agent's logits: the same preference in every state (a bias-only linear model)."""
    return linear_model(path, np.zeros((1, 3)), np.asarray(prefs), input_name="obs", output_name="logits")


def line_agent(
    tmp_path: Path, prefs: list[float] | None = (0.0, 1.0, 2.0), horizon: int = 2, **monitor
) -> dict:
    fallback: dict = {"kind": "shield_choice", "monitor": "shield"}
    if prefs is not None:
        fallback["scores"] = str(scores_model(tmp_path / "logits.onnx", list(prefs)))
    return {
        "id": "line",
        "observation": {"shape": [1]},
        "action": {"type": "discrete", "n": 3},
        "monitors": [
            {
                "kind": "reachability",
                "name": "shield",
                "model": {
                    "kind": "python",
                    "callable": "tests.support.plugins:LineModel",
                    "kwargs": {"steps": [0.6, 0.4]},
                },
                "continuation": {"kind": "repeat"},
                "constraints": {"inside": "math.abs(obs[0]) < 1.0"},
                "horizon": horizon,
                "candidates": {},
                **monitor,
            }
        ],
        "policy": {
            "rules": [
                {
                    "name": "unsafe",
                    "when": "tripped.shield.unsafe",
                    "verdict": "substitute",
                    "fallback": "choice",
                }
            ]
        },
        "fallbacks": {"choice": fallback},
    }


def sig(d) -> dict[str, float]:
    return {name: value for name, value, _, _ in d.signals}


def check_line(guard: Guard, xs: list[float], actions: list[int], episode: str = "e"):
    return guard.check(
        [
            CheckInput("line", np.array([x], np.float32), np.int64(a), episode_id=episode, step=i)
            for i, (x, a) in enumerate(zip(xs, actions, strict=True))
        ]
    )


def test_the_agents_highest_logit_safe_action_is_chosen(tmp_path) -> None:
    guard = Guard(loaded([line_agent(tmp_path)], base_dir=tmp_path)).load()
    # x = 0.5, proposed +1: 1.1 breaks the constraint. Stay (0.5, 0.5) and left (-0.1, -0.7) are both
    # safe for 2 steps with the same margin: the agent's logits [0, 1, 2] prefer "stay" over "left".
    (d,) = check_line(guard, [0.5], [2])
    s = sig(d)
    assert s["shield.unsafe"] == 1.0 and s["shield.safe_count"] == 2.0 and s["shield.margin"] == 0.0
    assert d.verdict is Verdict.SUBSTITUTE and int(d.action) == 1
    # The other preference order picks the other safe action: the choice follows the logits.
    guard = Guard(loaded([line_agent(tmp_path, prefs=[2.0, 1.0, 0.0])], base_dir=tmp_path)).load()
    (d,) = check_line(guard, [0.5], [2])
    assert int(d.action) == 0
    # A safe proposal is allowed even when the agent's logits prefer another action: from -0.3, right
    # (0.3, 0.9) and stay are safe, left (-0.9, -1.5) is not.
    (d,) = check_line(guard, [-0.3], [2])
    assert d.verdict is Verdict.ALLOW and sig(d)["shield.safe_count"] == 2.0


def test_an_action_outside_the_space_gets_the_preferred_safe_action(tmp_path) -> None:
    agent = line_agent(tmp_path)
    agent["monitors"].insert(0, {"kind": "action_space"})
    agent["policy"]["rules"].insert(
        0,
        {
            "name": "invalid",
            "when": "tripped.action_space.invalid",
            "verdict": "substitute",
            "fallback": "choice",
        },
    )
    guard = Guard(loaded([agent], base_dir=tmp_path)).load()
    (d,) = check_line(guard, [0.5], [7])
    assert d.verdict is Verdict.SUBSTITUTE and int(d.action) == 1 and d.rule == "invalid"


def test_without_scores_the_best_worst_case_margin_wins(tmp_path) -> None:
    guard = Guard(loaded([line_agent(tmp_path, prefs=None, horizon=3)], base_dir=tmp_path)).load()
    # x = 0.5, H = 3: right breaks at once (margin 0), left reaches -1.3 at step 3 (margin 2),
    # stay never breaks (margin 3): stay has the best worst-case margin.
    (d,) = check_line(guard, [0.5], [2])
    assert int(d.action) == 1 and sig(d)["shield.best_margin"] == 3.0


def test_when_nothing_is_safe_the_largest_margin_is_taken(tmp_path) -> None:
    agent = line_agent(tmp_path, horizon=3)
    agent["monitors"][0]["model"]["kwargs"]["drift"] = 0.45  # the world pushes right every step
    guard = Guard(loaded([agent], base_dir=tmp_path)).load()
    # x = 0.0: right breaks at step 1; stay at 0.45, 0.9, 1.35 (breaks at step 3, margin 2); left under
    # the 0.4 member: 0.05, 0.1, 0.15 (safe) but under the 0.6 member -0.15, -0.3, -0.45 (safe): left.
    (d,) = check_line(guard, [0.0], [2])
    assert int(d.action) == 0
    # x = 0.92: every candidate breaks under some member; left lasts longest (0.97, then 1.02 under the
    # 0.4 member: margin 1; stay and right break at once).
    (d,) = check_line(guard, [0.92], [2])
    s = sig(d)
    assert s["shield.safe_count"] == 0.0 and d.verdict is Verdict.SUBSTITUTE
    assert int(d.action) == 0 and s["shield.best_margin"] == 1.0


def test_one_model_call_per_rollout_step_for_every_candidate_and_member(tmp_path) -> None:
    guard = Guard(loaded([line_agent(tmp_path, horizon=4)], base_dir=tmp_path)).load()
    model = guard.agents[0].monitors[0].engine.dynamics.fn
    model.calls.clear()
    xs = [-0.9, -0.3, 0.0, 0.2, 0.5, 0.8]
    decisions = check_line(guard, xs, [1] * len(xs))
    # The monitor: the first call covers 6 rows x 3 candidates (the model returns both members), then at
    # most one call per remaining step on the rollouts still running. The fallback: its substituted rows.
    monitor_calls = model.calls[: 1 + 3]
    assert monitor_calls[0] == len(xs) * 3
    assert len(model.calls) <= 2 * 4
    assert all(n <= len(xs) * 3 * 2 for n in model.calls)
    assert [d.verdict for d in decisions].count(Verdict.ALLOW) >= 4


def test_the_residual_bias_corrects_the_rollouts(tmp_path) -> None:
    agent = line_agent(tmp_path, horizon=2)
    agent["monitors"].insert(
        0,
        {
            "kind": "python",
            "name": "residuals",
            "callable": "tests.support.plugins:ResidualFeed",
            "kwargs": {"obs_dim": 1, "feed": "line"},
            "signals": {"bias_norm": {"threshold": 10.0}},
        },
    )
    agent["monitors"][1]["correction"] = {"monitor": "residuals"}
    guard = Guard(loaded([agent], base_dir=tmp_path)).load()
    store = plugins.FEEDS["line"]
    # No residual yet: at 0.5, "stay" is the agent's preferred safe action.
    (d,) = check_line(guard, [0.5], [2], episode="windy")
    assert int(d.action) == 1
    # This episode's world has pushed x right by 0.3 per step: stay now reaches 0.8, 1.1 and breaks,
    # left reaches 0.2 (0.6 member) / 0.4 and -0.1 / 0.3; only left is safe.
    store.add("line", ["windy", "windy"], np.array([[0.25], [0.35]]))
    d_windy, d_calm = guard.check(
        [
            CheckInput("line", np.array([0.5], np.float32), np.int64(2), episode_id="windy", step=2),
            CheckInput("line", np.array([0.5], np.float32), np.int64(2), episode_id="calm", step=2),
        ]
    )
    assert sig(d_windy)["residuals.bias_norm"] == pytest.approx(0.3)
    assert sig(d_windy)["shield.safe_count"] == 1.0 and int(d_windy.action) == 0
    assert sig(d_calm)["shield.safe_count"] == 2.0 and int(d_calm.action) == 1  # other episodes unaffected
    # A proposal that is safe in the model's world but not in the corrected one is flagged.
    (d,) = check_line(guard, [0.5], [1], episode="windy")
    assert d.verdict is Verdict.SUBSTITUTE and int(d.action) == 0


def test_correction_sources_are_checked_at_load(tmp_path) -> None:
    agent = line_agent(tmp_path)
    agent["monitors"][0]["correction"] = {"monitor": "nope"}
    with pytest.raises(ConfigError, match=r"\(line\)\.monitors\[0\]\.correction\.monitor names 'nope'"):
        Guard(loaded([agent], base_dir=tmp_path))
    agent["monitors"].insert(0, {"kind": "action_space"})
    agent["monitors"][1]["correction"] = {"monitor": "action_space"}
    with pytest.raises(ConfigError, match="has no residual_bias"):
        Guard(loaded([agent], base_dir=tmp_path))
    agent["monitors"][0] = {
        "kind": "python",
        "name": "plain",
        "callable": "tests.support.plugins:NoBias",
        "signals": {"zero": {"threshold": 1.0}},
    }
    agent["monitors"][1]["correction"] = {"monitor": "plain"}
    with pytest.raises(ConfigError, match="defines no residual_bias"):
        Guard(loaded([agent], base_dir=tmp_path)).load()


def test_episode_residual_mean_is_per_episode_windowed_and_bounded() -> None:
    store = EpisodeResidualMean(2, max_episodes=2, window=2)
    store.add("a", ["e1", "e1", "e2"], np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]]))
    store.add("a", ["e1"], np.array([[5.0, 4.0]]))  # window 2: mean of the last two
    np.testing.assert_allclose(store.residual_bias("a", ["e1", "e2", "x"]), [[4, 3], [5, 5], [0, 0]])
    np.testing.assert_allclose(store.residual_bias("b", ["e1"]), [[0, 0]])  # agents are separate
    store.add("a", ["e3"], np.array([[1.0, 1.0]]))  # max_episodes 2: e2, the least recently updated, goes
    np.testing.assert_allclose(store.residual_bias("a", ["e1", "e2", "e3"]), [[4, 3], [0, 0], [1, 1]])


def test_a_python_model_takes_the_agents_observation_shape(tmp_path) -> None:
    """A highway-style model: observation [V, F] in, [V, F] out, the rollout flattens it."""
    agent = {
        "id": "road",
        "observation": {"shape": [3, 2]},
        "action": {"type": "discrete", "n": 3},
        "monitors": [
            {
                "kind": "reachability",
                "name": "shield",
                "model": {
                    "kind": "python",
                    "callable": "tests.support.plugins:planar_model",
                    "kwargs": {"scale": 0.5},
                },
                "continuation": {"kind": "repeat"},
                "constraints": {"ego": "obs[0] < 1.0"},  # vehicle 0, feature 0
                "horizon": 3,
                "candidates": {},
            }
        ],
    }
    guard = Guard(loaded([agent], base_dir=tmp_path)).load()
    obs = np.zeros((3, 2), np.float32)
    d0, d2 = guard.check([CheckInput("road", obs, np.int64(0)), CheckInput("road", obs, np.int64(2))])
    assert sig(d0)["shield.unsafe"] == 0.0 and sig(d2)["shield.unsafe"] == 1.0
    assert sig(d2)["shield.margin"] == 1.0  # 0.5 is inside, 1.0 is not
    assert sig(d2)["shield.safe_count"] == 2.0


@pytest.mark.parametrize(
    ("callable_", "message"),
    [
        ("tests.support.plugins:wrong_shape_model", r"expected \[2, 1\] or \[K, 2, \.\.\.\]"),
        ("tests.support.plugins:raising_model", "model exploded"),
        ("tests.support.plugins:nothing_here", "has no attribute 'nothing_here'"),
    ],
)
def test_python_models_are_probed_at_load(tmp_path, callable_, message) -> None:
    agent = line_agent(tmp_path)
    agent["monitors"][0]["model"] = {"kind": "python", "callable": callable_}
    with pytest.raises(ConfigError, match=r"\(line\)\.monitors\[0\]\.model") as err:
        Guard(loaded([agent], base_dir=tmp_path)).load()
    assert err.match(message)


def test_existing_recover_fallback_works_with_a_python_model(tmp_path) -> None:
    agent = line_agent(tmp_path, horizon=3)
    agent["fallbacks"]["choice"] = {"kind": "recover", "monitor": "shield"}
    guard = Guard(loaded([agent], base_dir=tmp_path)).load()
    (d,) = check_line(guard, [0.5], [2])
    assert int(d.action) == 1  # the best worst-case margin, as the recover ranking says


# ---------------------------------------------------------------------------- CartPole-v1, pole twice as long


def _cartpole_physics():
    sys.path.insert(0, str(CARTPOLE))
    try:
        import cartpole_physics
    finally:
        sys.path.remove(str(CARTPOLE))
    return cartpole_physics


def cartpole_config() -> dict:
    return {
        "id": "cartpole-shield",
        "observation": {"shape": [4], "dtype": "float32"},
        "action": {"type": "discrete", "n": 2},
        "monitors": [
            {
                "kind": "python",
                "name": "residuals",
                "callable": "tests.support.plugins:ResidualFeed",
                "kwargs": {"obs_dim": 4, "feed": "cartpole"},
                "signals": {"bias_norm": {"threshold": 1.0}},
            },
            {
                "kind": "reachability",
                "name": "shield",
                "model": {"kind": "dynamics_ensemble", "model": "dynamics.onnx"},
                "backup_policy": {"model": "backup.onnx", "output": "logits"},
                "constraints": {"pole": "math.abs(obs[2]) < 0.16", "track": "math.abs(obs[0]) < 2.2"},
                "safe_set": "math.abs(obs[2]) < 0.05 && math.abs(obs[3]) < 0.5 && math.abs(obs[0]) < 1.5 "
                "&& math.abs(obs[1]) < 1.0",
                "horizon": 30,
                "candidates": {},
                "correction": {"monitor": "residuals"},
            },
        ],
        "policy": {
            "rules": [
                {
                    "name": "unsafe",
                    "when": "tripped.shield.unsafe",
                    "verdict": "substitute",
                    "fallback": "choice",
                }
            ]
        },
        "fallbacks": {"choice": {"kind": "shield_choice", "monitor": "shield", "scores": "agent.onnx"}},
        "fail_safe": "choice",
    }


def run_cartpole(
    client: GuardClient | None, episodes: int, steps: int, epsilon: float
) -> tuple[int, int, int]:
    """(episodes that fell, substitutions, steps) for the agent with random perturbations, pole x2."""
    cp = _cartpole_physics()
    agent = ort.InferenceSession(str(CARTPOLE / "agent.onnx"), providers=["CPUExecutionProvider"])
    dynamics = ort.InferenceSession(str(CARTPOLE / "dynamics.onnx"), providers=["CPUExecutionProvider"])
    fell = substituted = total = 0
    for e in range(episodes):
        env = gym.make("CartPole-v1", max_episode_steps=steps)
        cp.Physics(length=1.0).apply(env)
        rng = np.random.default_rng(500 + e)
        obs, _ = env.reset(seed=600 + e)
        episode = f"shifted-{e}"
        for t in range(steps):
            (logits,) = agent.run(None, {"obs": obs[None].astype(np.float32)})
            action = int(rng.integers(2)) if rng.random() < epsilon else int(logits.argmax())
            if client is not None:
                result = client.check(obs.astype(np.float32), action, episode_id=episode, step=t)
                substituted += result.verdict is Verdict.SUBSTITUTE
                action = int(result.action)
            nxt, _, terminated, truncated, _ = env.step(action)
            total += 1
            if client is not None:  # the stand-in residual source: actual - the ensemble's mean prediction
                (pred,) = dynamics.run(
                    None, {"obs": obs[None].astype(np.float32), "action": np.array([action])}
                )
                plugins.FEEDS["cartpole"].add(
                    "cartpole-shield", [episode], (nxt - pred.mean(axis=0)[0])[None]
                )
            obs = nxt
            if terminated:
                fell += 1
                break
            if truncated:
                break
        env.close()
    return fell, substituted, total


def test_shield_keeps_a_shifted_cartpole_up_through_a_real_server() -> None:
    unguarded_fell, _, _ = run_cartpole(None, episodes=3, steps=200, epsilon=0.1)
    assert unguarded_fell == 3  # the agent, tuned on a nominal pole, drops a pole twice as long
    cfg = loaded([cartpole_config()], base_dir=CARTPOLE)
    with background_server(cfg) as srv:
        client = GuardClient(f"127.0.0.1:{srv.port}", agent_id="cartpole-shield")
        fell, substituted, steps = run_cartpole(client, episodes=3, steps=200, epsilon=0.1)
        client.close()
    assert fell == 0 and steps == 600
    assert 0 < substituted < steps  # the shield acted, and the agent still acted on most steps
