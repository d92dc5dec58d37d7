"""``disagreement: add`` in the transition monitor, on the real CartPole dynamics ensemble.

Real parts: examples/cartpole/dynamics_ensemble.onnx (obs [B, 4] float32, action [B] int64 ->
delta [5, B, 4]), the example's policy driving CartPole-v1, ``interlock calibrate`` on the
recorded episodes, and :class:`~interlock.engine.Guard` loading the monitors.

With the option, each dimension of a residual is divided by ``sqrt(scale^2 + (c * std_k)^2)``,
``std_k`` the standard deviation over the members' predictions: a transition the members disagree
on (a state far from the training data) weighs less than the same residual where they agree.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest

from interlock.batch import Batch
from interlock.config import load_config
from interlock.engine import Guard
from interlock.ensembles.thresholds import conformal_threshold
from interlock.errors import ConfigError
from interlock.monitors.calibrate import calibrate
from interlock.monitors.transition import TransitionMonitor, cusum, surprise_of
from tests.support.ensembles import CARTPOLE_EXAMPLE, CARTPOLE_HEAD, NO_RULES, policy_rollout, step

EXAMPLE = CARTPOLE_EXAMPLE
SCALE = [2e-5, 8e-4, 2e-5, 1.2e-3]  # about CartPole's calibrated residual scale
FIXED = f"""        model: dynamics_ensemble.onnx
        residual_scale: {SCALE}
        drift: 1.0
        thresholds: {{surprise: 3.0, shift: 50.0}}
"""
HEAD = CARTPOLE_HEAD
TAIL = NO_RULES


def fixed_config(directory: Path) -> Path:
    """Three monitors with the same fixed scale: the default, and disagreement: add with c = 1 and 2."""
    shutil.copy(EXAMPLE / "dynamics_ensemble.onnx", directory / "dynamics_ensemble.onnx")
    monitors = (
        "      - kind: transition\n        name: plain\n" + FIXED,
        "      - kind: transition\n        name: wary\n        disagreement: add\n" + FIXED,
        "      - kind: transition\n        name: wary2\n        disagreement: add\n"
        "        disagreement_scale: 2.0\n" + FIXED,
    )
    path = directory / "interlock.yaml"
    path.write_text(HEAD + "".join(monitors) + TAIL)
    return path


def members(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """``[5, n, 4]`` the members' predicted next observations (float64), from the model directly."""
    session = ort.InferenceSession(
        str(EXAMPLE / "dynamics_ensemble.onnx"), providers=["CPUExecutionProvider"]
    )
    delta = session.run(None, {"obs": obs.astype(np.float32), "action": actions.astype(np.int64)})[0]
    return obs.astype(np.float64)[None] + delta.astype(np.float64)


def test_members_disagreeing_shrink_the_surprise_of_the_same_residual(tmp_path):
    guard = Guard.from_file(str(fixed_config(tmp_path))).load()
    plain, wary, wary2 = guard.agents[0].monitors
    assert plain.cfg.disagreement == "none" and plain.cfg.disagreement_scale == 1.0  # the defaults
    env = gym.make("CartPole-v1")
    known, _ = env.reset(seed=7)  # a state like the training data: the members agree
    far = np.array([2.0, 2.5, 0.18, -2.5], np.float32)  # fast, tilted, near the edge: they disagree
    prev = np.stack([known, far]).astype(np.float32)
    acts = np.array([0, 0])
    k = members(prev.astype(np.float64), acts)
    mean, std = k.mean(axis=0), k.std(axis=0)
    assert np.all(std[1] > 20 * std[0])  # the premise: the far state is the uncertain one
    r = 3.0 * np.asarray(SCALE) * np.array([1.0, -1.0, 1.0, -1.0])  # one residual for both rows
    arrived = (mean + r).astype(np.float32)
    residual = arrived.astype(np.float64) - mean  # what float32 observations leave of r
    out = {}
    for m in (plain, wary, wary2):
        step(m, prev, acts, [0, 0], ["known", "far"])
        out[m.name] = step(m, arrived, acts, [1, 1], ["known", "far"])
    scale = np.asarray(SCALE)
    # default: the calibrated scale alone, the formula of before the option
    np.testing.assert_allclose(out["plain"]["surprise"], surprise_of(residual, scale), rtol=1e-9)
    assert out["plain"]["surprise"][0] == pytest.approx(out["plain"]["surprise"][1], rel=1e-3)
    assert out["plain"]["surprise"][0] == pytest.approx(3.0, rel=1e-3)
    for name, c in (("wary", 1.0), ("wary2", 2.0)):
        want = np.sqrt(np.mean((residual / np.sqrt(scale**2 + (c * std) ** 2)) ** 2, axis=1))
        np.testing.assert_allclose(out[name]["surprise"], want, rtol=1e-9)
        # the far row, same residual, weighs much less; the known row stays comparable to the default
        assert out[name]["surprise"][1] < 0.1 * out[name]["surprise"][0]
        assert out[name]["surprise"][0] > 0.2 * out["plain"]["surprise"][0]
        assert np.all(out[name]["surprise"] < out["plain"]["surprise"])
    assert np.all(out["wary2"]["surprise"] < out["wary"]["surprise"])
    # the residual bias (signal and the shield's correction, observation units) is not affected
    probe = Batch("cartpole", prev, acts, np.array([1, 1]), ["known", "far"])
    for m in (wary, wary2):
        np.testing.assert_array_equal(m.residual_bias(probe), plain.residual_bias(probe))
        np.testing.assert_array_equal(out[m.name]["residual_bias"], out["plain"]["residual_bias"])
    np.testing.assert_allclose(plain.residual_bias(probe), np.stack([residual[0], residual[1]]), rtol=1e-9)


def test_with_add_one_batch_of_several_episodes_equals_one_row_at_a_time(tmp_path):
    """A row alone gets the surprise it gets inside a batch (the monitor has no one-row shortcut:
    the engine sends agents with episode state down the batch path, tests/test_one_row.py)."""
    guard = Guard.from_file(str(fixed_config(tmp_path))).load()
    assert guard.agents[0]._one_row is False
    wary2 = guard.agents[0].monitors[2]
    far = np.array([1.5, 2.0, 0.15, -2.0], np.float32)
    a_obs, a_act = policy_rollout(11, 4)
    b_obs, b_act = policy_rollout(12, 4)
    b_obs = b_obs + far  # an episode of states the members disagree on
    seq = {}
    for t in range(4):
        for eid, o, a in (("a", a_obs, a_act), ("b", b_obs, b_act)):
            seq[(eid, t)] = step(wary2, o[t : t + 1], a[t : t + 1], [t], [eid])
    wary2.store.clear()
    for lo in (0, 2):  # each episode twice per batch, in reverse step order
        rows = [("a", lo + 1), ("b", lo + 1), ("a", lo), ("b", lo)]
        obs = [(a_obs if e == "a" else b_obs)[t] for e, t in rows]
        act = [(a_act if e == "a" else b_act)[t] for e, t in rows]
        out = step(wary2, obs, act, [t for _, t in rows], [e for e, _ in rows])
        for i, key in enumerate(rows):
            for sig in ("surprise", "shift", "residual_bias"):
                # (float32 model: a batch of 4 and a batch of 1 round differently in the 6th digit)
                assert out[sig][i] == pytest.approx(seq[key][sig][0], rel=1e-4), (key, sig)
    assert all(seq[("a", t)]["surprise"][0] > 0 and seq[("b", t)]["surprise"][0] > 0 for t in (1, 2, 3))


# ---------------------------------------------------------------------------- calibration

CALIBRATED = """        model: dynamics_ensemble.onnx
        thresholds_file: thresholds.json
"""


def calibrated_config(disagreement: str = "add", c: float = 2.0) -> str:
    wary = f"        disagreement: {disagreement}\n        disagreement_scale: {c}\n"
    return (
        HEAD
        + "      - kind: transition\n        name: plain\n"
        + CALIBRATED
        + "      - kind: transition\n        name: wary\n"
        + wary
        + CALIBRATED
        + TAIL
    )


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> tuple[Path, list[tuple[np.ndarray, np.ndarray]], dict[str, list[int]]]:
    """Both monitors calibrated on the same 24 recorded episodes (seeds 0-23, up to 150 steps)."""
    d = tmp_path_factory.mktemp("disagreement")
    shutil.copy(EXAMPLE / "dynamics_ensemble.onnx", d / "dynamics_ensemble.onnx")
    (d / "interlock.yaml").write_text(calibrated_config())
    episodes = [policy_rollout(seed, 150) for seed in range(24)]
    np.savez(
        d / "nominal.npz",
        obs=np.concatenate([o[:-1] for o, _ in episodes]).astype(np.float32),
        action=np.concatenate([a[:-1] for _, a in episodes]),
        next_obs=np.concatenate([o[1:] for o, _ in episodes]).astype(np.float32),
        episode=np.concatenate([np.full(len(a) - 1, i) for i, (_, a) in enumerate(episodes)]),
    )
    report = calibrate(
        d / "interlock.yaml", "cartpole", d / "nominal.npz", rate=0.05, episode_rate=0.1, progress=False
    )
    plain, wary = report.transitions
    assert (plain.monitor, wary.monitor) == ("plain", "wary") and plain.split == wary.split is not None
    return d, episodes, plain.split


def monitor_surprises(monitor: TransitionMonitor, episodes) -> list[np.ndarray]:
    """Each episode's surprise at every predicted transition, as the running monitor gives them (all
    episodes side by side, one batch per step)."""
    per_episode: list[list[float]] = [[] for _ in episodes]
    for t in range(max(len(o) for o, _ in episodes)):
        live = [i for i, (o, _) in enumerate(episodes) if t < len(o)]
        out = step(
            monitor,
            [episodes[i][0][t] for i in live],
            [episodes[i][1][t] for i in live],
            [t] * len(live),
            [f"e{i}" for i in live],
        )
        if t:
            for j, i in enumerate(live):
                per_episode[i].append(float(out["surprise"][j]))
    return [np.asarray(s) for s in per_episode]


def test_calibration_uses_the_monitors_surprise_and_records_the_settings(calibrated):
    d, episodes, split = calibrated
    entries = json.loads((d / "thresholds.json").read_text())["monitors"]
    plain, wary = entries["plain"], entries["wary"]
    assert plain["disagreement"] == "none" and "disagreement_scale" not in plain
    assert wary["disagreement"] == "add" and wary["disagreement_scale"] == 2.0
    # the scale is still the residuals' (same data, same split); the members' spread lowers the surprise
    assert wary["residual_scale"] == plain["residual_scale"]
    assert wary["thresholds"]["surprise"] < 0.8 * plain["thresholds"]["surprise"]
    assert wary["drift"] < 0.8 * plain["drift"]
    guard = Guard.from_file(str(d / "interlock.yaml")).load()
    for monitor in guard.agents[0].monitors:
        entry = entries[monitor.name]
        np.testing.assert_allclose(monitor.scale, entry["residual_scale"])
        assert monitor.drift == entry["drift"] and monitor.thresholds["shift"] == entry["thresholds"]["shift"]
        # the thresholds are those of the surprise this running monitor gives on the threshold part
        fit = [monitor_surprises(monitor, episodes)[e] for e in split["threshold"]]
        drift = conformal_threshold(np.array([s.mean() for s in fit]), 0.1)
        assert entry["drift"] == pytest.approx(drift, rel=1e-4)
        assert entry["thresholds"]["surprise"] == pytest.approx(
            conformal_threshold(np.concatenate(fit), 0.05), rel=1e-4
        )
        shift = max(conformal_threshold(np.array([cusum(s, drift).max() for s in fit]), 0.1), drift)
        assert entry["thresholds"]["shift"] == pytest.approx(shift, rel=1e-3)


def test_a_calibration_with_other_disagreement_settings_is_refused(calibrated, tmp_path):
    d, _, _ = calibrated
    for f in ("dynamics_ensemble.onnx", "thresholds.json"):
        shutil.copy(d / f, tmp_path / f)
    config = tmp_path / "interlock.yaml"
    where = r"interlock\.yaml: agents\[0\] \(cartpole\)\.monitors\[1\]: "
    cases = [
        (calibrated_config("none"), "disagreement=add, the config says none"),
        (calibrated_config("add", 1.0), "disagreement_scale=2.0, the config says 1.0"),
    ]
    for text, message in cases:
        config.write_text(text)
        with pytest.raises(
            ConfigError, match=where + ".*calibrated with " + message + r"; re-run `interlock calibrate`"
        ):
            Guard(load_config(config)).load()
    thresholds = json.loads((tmp_path / "thresholds.json").read_text())
    thresholds["monitors"]["wary"] = {**thresholds["monitors"]["plain"]}  # a calibration without it
    (tmp_path / "thresholds.json").write_text(json.dumps(thresholds))
    config.write_text(calibrated_config())
    with pytest.raises(ConfigError, match=where + ".*calibrated with disagreement=none, the config says add"):
        Guard(load_config(config)).load()
    del thresholds["monitors"]["wary"]["disagreement"]  # a file from before the option
    (tmp_path / "thresholds.json").write_text(json.dumps(thresholds))
    with pytest.raises(ConfigError, match="calibrated with disagreement=none, the config says add; re-run"):
        Guard(load_config(config)).load()
    config.write_text(calibrated_config("none", 3.0))  # without add, the factor is not read
    Guard(load_config(config)).load()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("disagreement: sum", r"monitors\[1\]\.transition\.disagreement: Input should be 'none' or 'add'"),
        (
            "disagreement_scale: 0",
            r"monitors\[1\]\.transition\.disagreement_scale: Input should be greater than 0",
        ),
        (
            "disagreement_scale: -2",
            r"monitors\[1\]\.transition\.disagreement_scale: Input should be greater than 0",
        ),
        ("disagreement_scale: .nan", r"monitors\[1\]\.transition\.disagreement_scale: .*finite"),
    ],
)
def test_bad_disagreement_settings_are_config_errors_naming_the_path(tmp_path, line, message):
    text = calibrated_config().replace("        disagreement: add\n        disagreement_scale: 2.0\n", "")
    text = text.replace("        name: wary\n", f"        name: wary\n        {line}\n")
    (tmp_path / "interlock.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"interlock\.yaml: .*\n  agents\[0\]\." + message):
        load_config(tmp_path / "interlock.yaml")


def test_a_drift_fixed_in_the_config_is_reported_and_runs(calibrated, tmp_path):
    """``drift:`` in the config overrides the file's at load: calibrate still records the calibrated
    drift and its threshold, says the config fixes another, and measures the held-out rate at it."""
    d, _, _ = calibrated
    shutil.copy(d / "dynamics_ensemble.onnx", tmp_path / "dynamics_ensemble.onnx")
    text = calibrated_config().replace("name: plain\n", "name: plain\n        drift: 5.0\n")
    (tmp_path / "interlock.yaml").write_text(text)
    report = calibrate(
        tmp_path / "interlock.yaml", "cartpole", d / "nominal.npz", rate=0.05, episode_rate=0.1,
        progress=False,
    )
    fixed, free = report.transitions
    assert (fixed.config_drift, free.config_drift) == (5.0, None)
    same = json.loads((d / "thresholds.json").read_text())["monitors"]["plain"]
    assert fixed.drift == pytest.approx(same["drift"])  # the file keeps the calibrated drift
    assert fixed.thresholds["shift"] == pytest.approx(same["thresholds"]["shift"])
    assert fixed.drift < 5.0 and fixed.held_out_episode_rate_config_drift <= fixed.held_out_episode_rate
    assert "the config fixes drift: 5" in fixed.summary()
    monitor = next(m for m in Guard.from_file(str(tmp_path / "interlock.yaml")).load().agents[0].monitors
                   if m.name == "plain")
    assert monitor.drift == 5.0
