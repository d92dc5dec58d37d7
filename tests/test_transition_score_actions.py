"""``score_actions`` in the transition monitor, on the real CartPole dynamics ensemble.

Real parts: examples/cartpole/dynamics_ensemble.onnx (obs [B, 4] float32, action [B] int64 ->
delta [5, B, 4]), CartPole-v1 driven by alternating actions, ``interlock calibrate`` on recorded
episodes, and :class:`~interlock.engine.Guard` loading the monitors.

A monitor with ``score_actions: [1]`` scores only transitions that executed action 1: after an action
0 its surprise is 0 and its statistics (energy or signed) keep their value, exactly like a transition
``score_when`` rejects; calibration uses the same selection and records it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from interlock.batch import Batch
from interlock.config import load_config
from interlock.engine import Guard
from interlock.errors import ConfigError
from interlock.monitors.calibrate import calibrate
from tests.support.ensembles import CARTPOLE_EXAMPLE, CARTPOLE_HEAD, NO_RULES, step

EXAMPLE = CARTPOLE_EXAMPLE
HEAD = CARTPOLE_HEAD
TAIL = NO_RULES
FIXED = """        model: dynamics_ensemble.onnx
        residual_scale: [2.0e-5, 8.0e-4, 2.0e-5, 1.2e-3]
        drift: 0.5
        thresholds: {surprise: 3.0, shift: 1.0e9}
"""


def monitors(directory: Path, body: str, extra: str = "") -> list:
    """The agent's monitors, loaded from a config of ``body`` monitor sections."""
    shutil.copy(EXAMPLE / "dynamics_ensemble.onnx", directory / "dynamics_ensemble.onnx")
    (directory / "interlock.yaml").write_text(HEAD + body + TAIL + extra)
    return list(Guard(load_config(directory / "interlock.yaml")).load().agents[0].monitors)


def rollout(seed: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``obs [T, 4]`` and ``actions [T]`` of CartPole-v1 pushed left, left, right, ... (both actions)."""
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    out_obs, out_act = [obs], []
    for t in range(steps):
        action = int(t % 3 == 2)
        obs, _, terminated, truncated, _ = env.step(action)
        out_obs.append(obs)
        out_act.append(action)
        if terminated or truncated:
            break
    env.close()
    return np.asarray(out_obs, np.float32), np.asarray(out_act, np.int64)


def run(monitor, obs: np.ndarray, actions: np.ndarray, episode: str) -> dict[str, np.ndarray]:
    """Each step's signal values as the monitor gives them, one row per check, actions executed."""
    rows = [step(monitor, obs[t : t + 1], actions[t : t + 1], [t], [episode]) for t in range(len(actions))]
    return {name: np.asarray([r[name][0] for r in rows]) for name in rows[0]}


@pytest.mark.parametrize("statistic", ["energy", "signed"])
def test_only_the_listed_actions_transitions_are_scored(tmp_path, statistic):
    section = f"        statistic: {statistic}\n" + FIXED
    everything, only_one = monitors(
        tmp_path,
        "      - kind: transition\n        name: every\n"
        + section
        + "      - kind: transition\n        name: one\n        score_actions: [1]\n"
        + section,
    )
    obs, actions = rollout(0, 40)
    full, part = run(everything, obs, actions, "e"), run(only_one, obs, actions, "e")
    after = np.concatenate([[-1], actions[:-1]])  # the action executed before each step's observation
    picked = after == 1
    assert picked.sum() >= 5 and (after == 0).sum() >= 5
    # after action 1: the same surprise as the unrestricted monitor; after action 0: none
    np.testing.assert_allclose(part["surprise"][picked], full["surprise"][picked], rtol=1e-12)
    assert np.all(part["surprise"][after == 0] == 0.0) and np.all(full["surprise"][1:] > 0)
    # the statistic moves only on those steps, and differs from the unrestricted one
    moved = np.flatnonzero(np.diff(part["shift"]) != 0) + 1
    assert set(moved) <= set(np.flatnonzero(picked))
    assert not np.allclose(part["shift"], full["shift"])


def test_scored_counts_the_episode_s_scored_transitions_and_restarts_with_it(tmp_path):
    """``<name>.scored``: after each step, how many of the episode's transitions the monitor scored
    (here those after action 1), 0 at a new episode; it never trips (the probe rules of
    examples/lunarlander/simplex_dev/RULE.md "Round 17" read it)."""
    (only_one,) = monitors(
        tmp_path, "      - kind: transition\n        name: one\n        score_actions: [1]\n" + FIXED
    )
    obs, actions = rollout(0, 40)
    part = run(only_one, obs, actions, "e")
    after = np.concatenate([[-1], actions[:-1]])
    np.testing.assert_array_equal(part["scored"], np.cumsum(after == 1))
    assert part["scored"][-1] >= 5
    again = run(only_one, obs[:3], actions[:3], "e")  # step 0 again: the episode restarts
    np.testing.assert_array_equal(again["scored"], np.cumsum(after[:3] == 1))
    signals = only_one.check(Batch("cartpole", obs[3:4], actions[3:4], np.asarray([3]), ["e"]))
    assert signals["scored"].values[0] == np.sum(after[:4] == 1) and not signals["scored"].tripped.any()

def test_calibration_selects_the_same_transitions_and_records_them(tmp_path):
    shutil.copy(EXAMPLE / "dynamics_ensemble.onnx", tmp_path / "dynamics_ensemble.onnx")
    text = (
        HEAD
        + "      - kind: transition\n        name: one\n        statistic: signed\n"
        + "        score_actions: [1]\n        model: dynamics_ensemble.onnx\n"
        + "        thresholds_file: thresholds.json\n"
        + TAIL
    )
    (tmp_path / "interlock.yaml").write_text(text)
    episodes = [rollout(seed, 60) for seed in range(30)]
    np.savez(
        tmp_path / "nominal.npz",
        obs=np.concatenate([o[:-1] for o, _ in episodes]),
        action=np.concatenate([a for _, a in episodes]),
        next_obs=np.concatenate([o[1:] for o, _ in episodes]),
        episode=np.concatenate([np.full(len(a), i) for i, (_, a) in enumerate(episodes)]),
    )
    calibrate(tmp_path / "interlock.yaml", "cartpole", tmp_path / "nominal.npz", progress=False)
    entry = json.loads((tmp_path / "thresholds.json").read_text())["monitors"]["one"]
    assert entry["score_actions"] == [1]
    Guard(load_config(tmp_path / "interlock.yaml")).load()  # the file fits the config
    (tmp_path / "interlock.yaml").write_text(text.replace("score_actions: [1]", "score_actions: [0, 1]"))
    with pytest.raises(ConfigError, match=r"calibrated with score_actions=\[1\], the config says \[0, 1\]"):
        Guard(load_config(tmp_path / "interlock.yaml")).load()
    (tmp_path / "interlock.yaml").write_text(text.replace("        score_actions: [1]\n", ""))
    with pytest.raises(ConfigError, match=r"calibrated with score_actions=\[1\], the config says all"):
        Guard(load_config(tmp_path / "interlock.yaml")).load()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("score_actions: [2]", r"monitors\[0\]\.score_actions must list actions in \[0, 2\); got \[2\]"),
        ("score_actions: []", r"score_actions"),
        ("score_actions: [-1]", r"score_actions"),
    ],
)
def test_bad_score_actions_are_config_errors_naming_the_path(tmp_path, line, message):
    with pytest.raises(ConfigError, match=message):
        monitors(tmp_path, "      - kind: transition\n        name: one\n        " + line + "\n" + FIXED)


def test_a_box_action_space_is_refused(tmp_path):
    shutil.copy(EXAMPLE / "dynamics_ensemble.onnx", tmp_path / "dynamics_ensemble.onnx")
    text = HEAD + "      - kind: transition\n        name: one\n        score_actions: [0]\n" + FIXED + TAIL
    text = text.replace(
        "action: {type: discrete, n: 2}", "action: {type: box, shape: [1], low: [-1], high: [1]}"
    )
    (tmp_path / "interlock.yaml").write_text(text)
    with pytest.raises(ConfigError, match="score_actions lists discrete actions"):
        Guard(load_config(tmp_path / "interlock.yaml")).load()
