"""``spread: per_action`` in the transition monitor, on the real LunarLander dynamics ensemble.

Real parts: examples/lunarlander/dynamics_ensemble.onnx (obs [B, 8] float32, action [B] int64 ->
delta [5, B, 8]), LunarLander-v3 driven by Gymnasium's heuristic lander, ``interlock calibrate``
on recorded episodes, and :class:`~interlock.engine.Guard` deciding every step.

LunarLander's dynamics are nearly deterministic per action (a noop or a side engine moves the
lander the same way every time; the main engine fires with random dispersion), so one global
residual spread per dimension is dominated by the main engine, and a push that is plain on noop
steps is diluted. The per-action scale keeps it plain.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.box2d.lunar_lander import heuristic

from interlock.config import load_config
from interlock.engine import Guard
from interlock.errors import ConfigError
from interlock.monitors.calibrate import calibrate
from interlock.types import CheckInput

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lunarlander"
SCORE = """        model: dynamics_ensemble.onnx
        dims: [2, 3, 5]
        aggregate: mean_sq
        clip: 9
        drift_rule: step_mean
        scale_statistic: median_abs
        score_when: "obs[6] < 0.5 && obs[7] < 0.5"
        thresholds_file: thresholds.json
"""
CONFIG = (
    """
agents:
  - id: lander
    observation: {shape: [8], dtype: float32}
    action: {type: discrete, n: 4}
    monitors:
      - kind: transition
        name: glob
"""
    + SCORE
    + """      - kind: transition
        name: pera
        spread: per_action
"""
    + SCORE
    + "    policy:\n      rules: []\n"
)


def heuristic_episodes(seeds: range, push: float = 0.0) -> list[dict[str, np.ndarray]]:
    """Episodes of Gymnasium's heuristic lander; ``push``: a constant sideways force on the hull every
    step while airborne (a steady wind; Box2D units, the wind of ``wind_power`` 15 peaks near 15)."""
    env = gym.make("LunarLander-v3")
    out = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        rows: dict[str, list] = {"obs": [], "action": [], "next_obs": []}
        done = False
        while not done:
            action = int(heuristic(env.unwrapped, obs))
            lander = env.unwrapped.lander
            if push and not (env.unwrapped.legs[0].ground_contact or env.unwrapped.legs[1].ground_contact):
                lander.ApplyForceToCenter((push, 0.0), True)
            nxt, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
            if not terminated:  # Interlock never sees a terminal transition (no action follows it)
                rows["obs"].append(obs)
                rows["action"].append(action)
                rows["next_obs"].append(nxt)
            obs = nxt
        out.append({k: np.asarray(v) for k, v in rows.items()})
    env.close()
    return out


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    """Both monitors calibrated on the same 48 nominal heuristic episodes (seeds 0-47)."""
    d = tmp_path_factory.mktemp("per_action")
    shutil.copy(EXAMPLE / "dynamics_ensemble.onnx", d / "dynamics_ensemble.onnx")
    (d / "interlock.yaml").write_text(CONFIG)
    eps = heuristic_episodes(range(48))
    np.savez(
        d / "nominal.npz",
        obs=np.concatenate([e["obs"] for e in eps]).astype(np.float32),
        action=np.concatenate([e["action"] for e in eps]).astype(np.int64),
        next_obs=np.concatenate([e["next_obs"] for e in eps]).astype(np.float32),
        episode=np.concatenate([np.full(len(e["action"]), i) for i, e in enumerate(eps)]),
        policy=np.concatenate([np.full(len(e["action"]), i % 2) for i, e in enumerate(eps)]),
    )
    report = calibrate(
        d / "interlock.yaml", "lander", d / "nominal.npz", rate=0.01, episode_rate=0.1, progress=False
    )
    assert [c.monitor for c in report.transitions] == ["glob", "pera"]
    return d


def test_calibration_writes_one_scale_per_action_with_a_floor(calibrated):
    entry = json.loads((calibrated / "thresholds.json").read_text())["monitors"]
    glob, pera = entry["glob"], entry["pera"]
    assert glob["spread"] == "global" and "residual_scale_per_action" not in glob
    assert pera["spread"] == "per_action" and pera["spread_floor"] == 0.1
    per_action = np.asarray(pera["residual_scale_per_action"])
    floor = np.asarray(pera["spread_floor_values"])
    assert per_action.shape == (4, 8) and floor.shape == (8,) and np.all(floor > 0)
    assert np.all(per_action >= floor[None, :])
    assert sum(pera["rows_per_action"]) > 0 and all(n >= 50 for n in pera["rows_per_action"])
    # the same global scale in both entries (same data, same split)
    np.testing.assert_allclose(pera["residual_scale"], glob["residual_scale"])
    # vx (dim 2): a noop is predicted far better than the main engine, whose random dispersion
    # dominates the global scale
    noop, main = per_action[0, 2], per_action[2, 2]
    assert noop < 0.5 * main and noop < glob["residual_scale"][2]
    guard = Guard.from_file(str(calibrated / "interlock.yaml")).load()
    pera_monitor = guard.agents[0].monitors[1]
    np.testing.assert_allclose(pera_monitor.action_scale, per_action)
    # an action outside the space (a provisional action in a batch) falls back to the global scale
    scales = pera_monitor.scale_for(np.array([0, 2, 7]))
    np.testing.assert_allclose(scales[0], per_action[0])
    np.testing.assert_allclose(scales[2], pera["residual_scale"])


def first_trips(guard: Guard, episodes: list[dict[str, np.ndarray]], tag: str) -> dict[str, list[int]]:
    """Step of the first ``shift`` trip of each monitor in each episode (-1: never), lockstep batches."""
    trips = {"glob": [-1] * len(episodes), "pera": [-1] * len(episodes)}
    for t in range(max(len(e["action"]) for e in episodes)):
        live = [i for i, e in enumerate(episodes) if t < len(e["action"])]
        decisions = guard.check(
            [
                CheckInput("lander", episodes[i]["obs"][t], int(episodes[i]["action"][t]), f"{tag}{i}", t)
                for i in live
            ]
        )
        for i, d in zip(live, decisions, strict=True):
            for name, _value, _threshold, tripped in d.signals:
                monitor, _, signal = name.partition(".")
                if signal == "shift" and tripped and trips[monitor][i] < 0:
                    trips[monitor][i] = t
    return trips


def test_per_action_spread_trips_sooner_on_a_push_and_stays_quiet_in_distribution(calibrated):
    guard = Guard.from_file(str(calibrated / "interlock.yaml")).load()
    pushed = first_trips(guard, heuristic_episodes(range(500, 506), push=10.0), "push")
    never = 10_000
    pera = [t if t >= 0 else never for t in pushed["pera"]]
    glob = [t if t >= 0 else never for t in pushed["glob"]]
    # the push shows on noop and side-engine steps, which the global scale (main-engine noise) dilutes:
    # the per-action monitor detects every pushed episode, the global one not all, and sooner overall
    assert max(pera) < never and sum(t < never for t in glob) < len(glob), pushed
    assert np.median(pera) < np.median(glob), pushed
    nominal = first_trips(guard, heuristic_episodes(range(600, 620)), "nom")
    assert sum(t >= 0 for t in nominal["pera"]) <= 3, nominal  # calibrated for 10% of episodes


def test_per_action_spread_is_a_config_error_for_a_box_action_naming_the_path(calibrated, tmp_path):
    shutil.copy(calibrated / "dynamics_ensemble.onnx", tmp_path / "dynamics_ensemble.onnx")
    box = CONFIG.replace("{type: discrete, n: 4}", "{type: box, shape: [2], low: -1, high: 1}")
    (tmp_path / "box.yaml").write_text(box)
    path = r"box\.yaml: agents\[0\] \(lander\)\.monitors\[1\]\.spread"
    with pytest.raises(ConfigError, match=path + r" is 'per_action'.*discrete.*spread: global"):
        Guard.from_file(str(tmp_path / "box.yaml"))


def test_a_global_calibration_is_refused_by_a_per_action_monitor(calibrated, tmp_path):
    for f in ("dynamics_ensemble.onnx", "thresholds.json"):
        shutil.copy(calibrated / f, tmp_path / f)
    entry = json.loads((tmp_path / "thresholds.json").read_text())
    entry["monitors"]["pera"] = {**entry["monitors"]["glob"]}  # a global calibration under pera's name
    (tmp_path / "thresholds.json").write_text(json.dumps(entry))
    (tmp_path / "interlock.yaml").write_text(CONFIG)
    with pytest.raises(ConfigError, match="calibrated with spread=global, the config says per_action"):
        Guard(load_config(tmp_path / "interlock.yaml")).load()
    del entry["monitors"]["pera"]["spread"]  # a file from before per-action spreads
    (tmp_path / "thresholds.json").write_text(json.dumps(entry))
    with pytest.raises(ConfigError, match="no residual_scale_per_action; run `interlock calibrate"):
        Guard(load_config(tmp_path / "interlock.yaml")).load()


def test_group_by_sets_the_shift_threshold_for_every_group(calibrated, tmp_path, capsys):
    from interlock.cli.main import main

    for f in ("dynamics_ensemble.onnx", "interlock.yaml", "nominal.npz"):
        shutil.copy(calibrated / f, tmp_path / f)
    pooled = json.loads((calibrated / "thresholds.json").read_text())["monitors"]["pera"]
    args = ["calibrate", "--config", str(tmp_path / "interlock.yaml"), "--agent", "lander", "-q"]
    args += ["--data", str(tmp_path / "nominal.npz"), "--episode-false-alarm-rate", "0.1"]
    args += ["--monitor", "pera"]
    assert main([*args, "--group-by", "policy"]) == 0
    entry = json.loads((tmp_path / "thresholds.json").read_text())["monitors"]["pera"]
    per_group = entry["shift_threshold_per_group"]
    assert entry["group_by"] == "policy" and sorted(per_group) == ["0", "1"]
    assert entry["thresholds"]["shift"] == max(per_group.values()) >= pooled["thresholds"]["shift"]
    assert main([*args, "--group-by", "behaviour"]) == 2
    assert "has no 'behaviour' array for --group-by" in capsys.readouterr().err
