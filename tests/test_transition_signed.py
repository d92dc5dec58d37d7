"""``statistic: signed`` in the transition monitor, on the real CartPole dynamics ensemble.

Real parts: examples/cartpole/dynamics_ensemble.onnx (obs [B, 4] float32, action [B] int64 ->
delta [5, B, 4]), the example's policy driving CartPole-v1 (nominal, and with a constant push:
a small persistent bias of the cart's velocity at every step), ``interlock calibrate`` on the
recorded episodes, and :class:`~interlock.engine.Guard` loading the monitors.

With ``statistic: signed`` the ``shift`` signal is the largest of two CUSUMs per (group, dimension)
of the signed normalised residual ``z`` (``S+ = max(0, S+ + z - k)``, ``S- = max(0, S- - z - k)``),
group the executed action with ``spread: per_action``: a persistent shift of the residual's mean
smaller than its per-step spread, which ``z^2`` (the energy statistic) barely shows.
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
from interlock.monitors.transition import SIGNED_DRIFT, TransitionMonitor, cusum

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cartpole"
HEAD = """
agents:
  - id: cartpole
    observation: {shape: [4], dtype: float32}
    action: {type: discrete, n: 2}
    monitors:
"""
TAIL = "    policy:\n      rules: []\n"
FILE = "        model: dynamics_ensemble.onnx\n        thresholds_file: thresholds.json\n"
#: |z| capped at 2 in the signed sums (z^2 at 4 in the surprise): the clip path is exercised.
MONITORS = {
    "energy": "",
    "signed": "        statistic: signed\n        clip: 4\n",
    "signed_pa": "        statistic: signed\n        spread: per_action\n        clip: 4\n",
}
N_CAL = 80
#: A persistent bias: 1.5 residual scale units (of the calibrated global scale) added to the pole angle
#: after every step; the per-step spread of the residual is 1 unit.
PUSH_UNITS, PUSH_DIM = 1.5, 2


def config_text(extra: dict[str, str] | None = None) -> str:
    """The three monitors (``extra``: more lines for some of them)."""
    extra = extra or {}
    return (
        HEAD
        + "".join(
            f"      - kind: transition\n        name: {name}\n" + lines + extra.get(name, "") + FILE
            for name, lines in MONITORS.items()
        )
        + TAIL
    )


def rollout(seed: int, steps: int, push: float = 0.0, dim: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``[T + 1, 4]`` observations and ``[T + 1]`` actions (the last unused) of the example policy;
    ``push`` is added to state element ``dim`` after every step (on the cart velocity: a constant
    force, a slope)."""
    session = ort.InferenceSession(str(EXAMPLE / "policy.onnx"), providers=["CPUExecutionProvider"])
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    out, acts = [obs], []
    for _ in range(steps):
        a = int(session.run(None, {"obs": obs[None].astype(np.float32)})[0].argmax())
        acts.append(a)
        obs, _, terminated, truncated, _ = env.step(a)
        if push:
            u = env.unwrapped
            u.state = np.asarray(u.state, np.float64) + push * np.eye(4)[dim]
            obs = np.asarray(u.state, np.float32)
        out.append(obs)
        if terminated or truncated:
            break
    return np.stack(out), np.asarray([*acts, 0], np.int64)


def step(monitor: TransitionMonitor, obs, actions, steps, episodes) -> dict[str, np.ndarray]:
    """One checked batch whose proposed actions are executed; the signals' values."""
    batch = Batch(
        "cartpole", np.asarray(obs, np.float32), np.asarray(actions, np.int64), np.asarray(steps), episodes
    )
    out = monitor.check(batch)
    monitor.after_decide(batch, np.asarray(actions, np.int64), np.ones(len(batch), bool))
    return {k: v.values for k, v in out.items()}


def run_side_by_side(monitor: TransitionMonitor, episodes, tag: str = "e") -> list[dict[str, np.ndarray]]:
    """All episodes side by side, one batch per step; per episode ``[T + 1]`` of each signal."""
    got: list[dict[str, list[float]]] = [{} for _ in episodes]
    for t in range(max(len(o) for o, _ in episodes)):
        live = [i for i, (o, _) in enumerate(episodes) if t < len(o)]
        out = step(
            monitor,
            [episodes[i][0][t] for i in live],
            [episodes[i][1][t] for i in live],
            [t] * len(live),
            [f"{tag}{i}" for i in live],
        )
        for j, i in enumerate(live):
            for k, v in out.items():
                got[i].setdefault(k, []).append(float(v[j]))
    return [{k: np.asarray(v) for k, v in g.items()} for g in got]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> tuple[Path, list[tuple[np.ndarray, np.ndarray]], dict]:
    """The three monitors calibrated on the same 80 recorded nominal episodes (seeds 0-79, <= 150 steps)."""
    d = tmp_path_factory.mktemp("signed")
    shutil.copy(EXAMPLE / "dynamics_ensemble.onnx", d / "dynamics_ensemble.onnx")
    (d / "interlock.yaml").write_text(config_text())
    episodes = [rollout(seed, 150) for seed in range(N_CAL)]
    np.savez(
        d / "nominal.npz",
        obs=np.concatenate([o[:-1] for o, _ in episodes]).astype(np.float32),
        action=np.concatenate([a[:-1] for _, a in episodes]),
        next_obs=np.concatenate([o[1:] for o, _ in episodes]).astype(np.float32),
        episode=np.concatenate([np.full(len(a) - 1, i) for i, (_, a) in enumerate(episodes)]),
        policy=np.concatenate([np.full(len(a) - 1, i % 2) for i, (_, a) in enumerate(episodes)]),
    )
    report = calibrate(
        d / "interlock.yaml", "cartpole", d / "nominal.npz", rate=0.05, episode_rate=0.1, progress=False
    )
    assert [c.monitor for c in report.transitions] == list(MONITORS)
    return d, episodes, {c.monitor: c for c in report.transitions}


def monitors(d: Path) -> dict[str, TransitionMonitor]:
    guard = Guard.from_file(str(d / "interlock.yaml")).load()
    return {m.name: m for m in guard.agents[0].monitors}


def pushed(seeds, monitor: TransitionMonitor) -> list[tuple[np.ndarray, np.ndarray]]:
    return [rollout(s, 150, PUSH_UNITS * monitor.scale[PUSH_DIM], PUSH_DIM) for s in seeds]


def first_trips(monitor: TransitionMonitor, episodes, tag: str) -> list[int | None]:
    h = monitor.thresholds["shift"]
    out = []
    for r in run_side_by_side(monitor, episodes, tag):
        over = np.flatnonzero(r["shift"] > h)
        out.append(int(over[0]) if over.size else None)
        # shifted latches from the first trip on
        np.testing.assert_array_equal(
            r["shifted"] > 0, np.arange(len(r["shift"])) >= (over[0] if over.size else 10**9)
        )
    return out


def test_default_is_energy_and_the_file_records_the_statistic(calibrated):
    d, episodes, cals = calibrated
    entries = json.loads((d / "thresholds.json").read_text())["monitors"]
    assert [entries[n]["statistic"] for n in MONITORS] == ["energy", "signed", "signed"]
    assert entries["signed"]["drift"] == entries["signed_pa"]["drift"] == SIGNED_DRIFT == 0.5
    assert entries["energy"]["drift"] != SIGNED_DRIFT and cals["energy"].statistic == "energy"
    assert (
        "signed CUSUM, z units" in cals["signed"].summary() and "signed CUSUM" not in cals["energy"].summary()
    )
    m = monitors(d)
    assert m["energy"].cfg.statistic == "energy" and m["signed"].drift == 0.5
    # energy: the shift is the one-sided CUSUM of the monitor's own surprise, as before the option
    for r in run_side_by_side(m["energy"], episodes[:4]):
        np.testing.assert_allclose(r["shift"], cusum(r["surprise"], m["energy"].drift), rtol=1e-12)
    assert m["energy"].store.peek("cartpole", "e0").signed is None  # energy keeps no signed sums


def test_the_signed_statistic_equals_a_numpy_reference(calibrated):
    """Rows one at a time (each model run a batch of one, as the reference's), two nominal and two
    pushed episodes: every step's ``shift`` and the stored ``[2, groups, 4]`` sums equal a plain
    reference: z of the executed action's scale, clipped to +-2, per-action groups updated only on
    their own action's steps."""
    d, _, _ = calibrated
    entries = json.loads((d / "thresholds.json").read_text())["monitors"]
    m = monitors(d)
    session = ort.InferenceSession(str(d / "dynamics_ensemble.onnx"), providers=["CPUExecutionProvider"])
    episodes = [rollout(s, 150) for s in (2000, 2001)] + pushed((2002, 2003), m["signed"])
    clipped = 0
    for name, groups in (("signed", 1), ("signed_pa", 2)):
        mon, entry = m[name], entries[name]
        scale = np.asarray(entry["residual_scale_per_action"] if groups == 2 else [entry["residual_scale"]])
        for e, (obs, acts) in enumerate(episodes):
            sums = np.zeros((2, groups, 4))
            for t in range(len(obs)):
                out = step(mon, obs[t : t + 1], acts[t : t + 1], [t], [f"ref{e}"])
                if t:
                    prev = obs[t - 1 : t].astype(np.float32)
                    delta = session.run(None, {"obs": prev, "action": acts[t - 1 : t]})[0].astype(np.float64)
                    predicted = prev[0].astype(np.float64) + delta.mean(axis=0)[0]
                    g = int(acts[t - 1]) if groups == 2 else 0
                    z = (obs[t].astype(np.float64) - predicted) / scale[g]
                    clipped += int(np.sum(np.abs(z) > 2.0))
                    z = np.clip(z, -2.0, 2.0)
                    for dim in range(4):
                        sums[0, g, dim] = max(0.0, sums[0, g, dim] + z[dim] - 0.5)
                        sums[1, g, dim] = max(0.0, sums[1, g, dim] - z[dim] - 0.5)
                    np.testing.assert_allclose(
                        mon.store.peek("cartpole", f"ref{e}").signed, sums, rtol=1e-9, atol=1e-12
                    )
                assert out["shift"][0] == pytest.approx(sums.max(), rel=1e-9, abs=1e-12), (name, e, t)
            if e >= 2:  # the pushed episodes trip
                assert sums.max() > mon.thresholds["shift"]
    assert clipped > 0  # the clip path was exercised


def test_a_persistent_bias_trips_signed_quickly_and_not_energy(calibrated):
    """At the same calibrated targets (10% of in-distribution episodes), a push of 1.5 scale units on
    the pole angle at every step: the signed statistic trips in (nearly) every episode within about 100
    steps, the energy statistic (z^2) in a few at most; unseen nominal episodes rarely trip either."""
    d, _, _ = calibrated
    m = monitors(d)
    shifted = pushed(range(3000, 3012), m["energy"])
    trips = {name: first_trips(mon, shifted, "push") for name, mon in m.items()}
    for name in ("signed", "signed_pa"):
        # measured: 11 of 12 (signed, median step 50), 12 of 12 (signed_pa, median 87)
        assert sum(f is not None for f in trips[name]) >= 11, trips
        assert np.median([150 if f is None else f for f in trips[name]]) < 100, trips
    assert sum(f is not None for f in trips["energy"]) <= 3, trips  # measured: 2 of 12
    nominal = [rollout(s, 150) for s in range(4000, 4012)]
    for name, mon in m.items():
        assert sum(f is not None for f in first_trips(mon, nominal, "calm")) <= 3, name
