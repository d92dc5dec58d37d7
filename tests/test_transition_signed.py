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

import numpy as np
import onnxruntime as ort
import pytest

from interlock.config import load_config
from interlock.engine import Guard
from interlock.ensembles.common import EnsembleError
from interlock.ensembles.thresholds import conformal_threshold
from interlock.errors import ConfigError
from interlock.monitors.calibrate import calibrate
from interlock.monitors.transition import SIGNED_DRIFT, TransitionMonitor, cusum
from tests.support.ensembles import CARTPOLE_EXAMPLE, CARTPOLE_HEAD, NO_RULES, policy_rollout, step

EXAMPLE = CARTPOLE_EXAMPLE
HEAD = CARTPOLE_HEAD
TAIL = NO_RULES
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
    episodes = [policy_rollout(seed, 150) for seed in range(N_CAL)]
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
    return [policy_rollout(s, 150, PUSH_UNITS * monitor.scale[PUSH_DIM], PUSH_DIM) for s in seeds]


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
    episodes = [policy_rollout(s, 150) for s in (2000, 2001)] + pushed((2002, 2003), m["signed"])
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
    nominal = [policy_rollout(s, 150) for s in range(4000, 4012)]
    for name, mon in m.items():
        assert sum(f is not None for f in first_trips(mon, nominal, "calm")) <= 3, name


def test_one_batch_of_several_episodes_equals_one_row_at_a_time(calibrated):
    """The per-action signed sums of two episodes checked in batches of four rows (each episode twice
    per batch, in reverse step order) equal those of one row at a time."""
    d, _, _ = calibrated
    mon = monitors(d)["signed_pa"]
    a_obs, a_act = pushed([11], mon)[0]
    b_obs, b_act = policy_rollout(12, 40)
    seq = {}
    for t in range(40):
        for eid, o, a in (("a", a_obs, a_act), ("b", b_obs, b_act)):
            seq[(eid, t)] = step(mon, o[t : t + 1], a[t : t + 1], [t], [eid])
    one_by_one = {e: mon.store.peek("cartpole", e).signed.copy() for e in "ab"}
    mon.store.clear()
    for lo in range(0, 40, 2):
        rows = [("a", lo + 1), ("b", lo + 1), ("a", lo), ("b", lo)]
        obs = [(a_obs if e == "a" else b_obs)[t] for e, t in rows]
        act = [(a_act if e == "a" else b_act)[t] for e, t in rows]
        out = step(mon, obs, act, [t for _, t in rows], [e for e, _ in rows])
        for i, key in enumerate(rows):
            for sig in ("shift", "shifted"):
                # (float32 model: a batch of 4 and a batch of 1 round differently in the 6th digit)
                assert out[sig][i] == pytest.approx(seq[key][sig][0], rel=1e-4, abs=1e-9), (key, sig)
    for e in "ab":  # small sums too: atol in z units (a float32 rounding of 1e-9 on a scale of 1e-5)
        np.testing.assert_allclose(mon.store.peek("cartpole", e).signed, one_by_one[e], rtol=1e-4, atol=1e-3)
    assert seq[("a", 39)]["shift"][0] > 5.0  # the pushed episode's statistic has grown


def test_a_retry_does_not_advance_it_and_lost_state_restarts_it(calibrated):
    d, _, _ = calibrated
    mon = monitors(d)["signed_pa"]
    obs, acts = pushed([21], mon)[0]
    for t in range(30):
        last = step(mon, obs[t : t + 1], acts[t : t + 1], [t], ["r"])
    sums = mon.store.peek("cartpole", "r").signed.copy()
    assert last["shift"][0] == sums.max() > 0
    again = step(mon, obs[29:30], acts[29:30], [29], ["r"])  # the same step again (a client retry)
    assert again["shift"][0] == last["shift"][0]
    np.testing.assert_array_equal(mon.store.peek("cartpole", "r").signed, sums)
    mon.store.drop("cartpole", "r")  # lost state (another worker, eviction, a restart)
    fresh = step(mon, obs[30:31], acts[30:31], [30], ["r"])
    assert fresh["shift"][0] == 0.0 and mon.store.peek("cartpole", "r").signed is None
    nxt = step(mon, obs[31:32], acts[31:32], [31], ["r"])  # one transition: one update from zeros
    z = mon.store.peek("cartpole", "r").signed
    assert nxt["shift"][0] == z.max() <= 2.0 - 0.5  # at most the clipped |z| minus the drift
    assert np.count_nonzero(z[:, 1 - int(acts[30])]) == 0  # only the executed action's group moved


def test_calibration_threshold_is_the_quantile_of_the_monitors_own_episode_maxima(calibrated, tmp_path):
    """For each signed monitor: the file's ``shift`` threshold is the conformal 90% quantile of the
    largest signed statistic of each threshold-part episode, as the running monitor computes it; the
    held-out rate is the share of held-out episodes above it; with ``--group-by`` the largest of the
    groups' quantiles."""
    d, episodes, cals = calibrated
    entries = json.loads((d / "thresholds.json").read_text())["monitors"]
    m = monitors(d)
    split = cals["signed"].split
    assert split == cals["signed_pa"].split
    for name in ("signed", "signed_pa"):
        maxima = np.array([r["shift"].max() for r in run_side_by_side(m[name], episodes, "cal")])
        fit, held = maxima[split["threshold"]], maxima[split["held_out"]]
        h = entries[name]["thresholds"]["shift"]
        assert h == pytest.approx(conformal_threshold(fit, 0.1), rel=1e-4)
        assert m[name].thresholds["shift"] == h
        assert cals[name].held_out_episode_rate == pytest.approx(np.mean(held > h))
        policy = np.arange(len(episodes))[split["threshold"]] % 2
        per_group = [conformal_threshold(fit[policy == g], 0.1) for g in (0, 1)]
        out = tmp_path / f"{name}.json"
        report = calibrate(
            d / "interlock.yaml", "cartpole", d / "nominal.npz", rate=0.05, episode_rate=0.1,
            monitors=[name], output=out, group_by="policy",
        )  # fmt: skip
        [cal] = report.transitions
        grouped = json.loads(out.read_text())["monitors"][name]
        assert grouped["shift_threshold_per_group"]["0"] == pytest.approx(per_group[0], rel=1e-4)
        assert grouped["thresholds"]["shift"] == pytest.approx(max(per_group), rel=1e-4)
        assert cal.thresholds["shift"] == grouped["thresholds"]["shift"]


def test_calibration_reports_each_stream_s_own_threshold_and_a_narrower_monitor_matches_it(
    calibrated, tmp_path
):
    """The report names the (action, dimension, side) streams behind a signed threshold: each stream's
    own per-episode quantile, largest first, none above the pooled threshold; a monitor watching one
    dimension (``dims``) is calibrated on exactly those streams of the wider one (the same ``z``)."""
    d, _, cals = calibrated
    wide = cals["signed_pa"].shift_per_stream
    assert len(wide) == 2 * 2 * 4  # sides x actions x CartPole's four dimensions
    assert list(wide.values()) == sorted(wide.values(), reverse=True)
    assert max(wide.values()) <= cals["signed_pa"].thresholds["shift"] + 1e-9
    assert "its streams' own thresholds, largest first" in cals["signed_pa"].summary()
    assert cals["energy"].shift_per_stream is None
    shutil.copy(d / "dynamics_ensemble.onnx", tmp_path / "dynamics_ensemble.onnx")
    (tmp_path / "interlock.yaml").write_text(config_text({"signed_pa": f"        dims: [{PUSH_DIM}]\n"}))
    out = tmp_path / "narrow.json"
    [narrow] = calibrate(
        tmp_path / "interlock.yaml", "cartpole", d / "nominal.npz", rate=0.05, episode_rate=0.1,
        monitors=["signed_pa"], output=out, progress=False,
    ).transitions  # fmt: skip
    mine = {k: v for k, v in wide.items() if f"obs[{PUSH_DIM}]" in k}
    assert narrow.shift_per_stream == pytest.approx(mine, rel=1e-9)
    assert max(mine.values()) <= narrow.thresholds["shift"] <= cals["signed_pa"].thresholds["shift"] + 1e-9
    recorded = json.loads(out.read_text())["monitors"]["signed_pa"]["shift_threshold_per_stream"]
    assert recorded == pytest.approx(narrow.shift_per_stream)
    # score_actions: the unscored action's streams never move and are not listed
    extra = f"        dims: [{PUSH_DIM}]\n        score_actions: [0]\n"
    (tmp_path / "interlock.yaml").write_text(config_text({"signed_pa": extra}))
    [one] = calibrate(
        tmp_path / "interlock.yaml", "cartpole", d / "nominal.npz", rate=0.05, episode_rate=0.1,
        monitors=["signed_pa"], output=out, progress=False,
    ).transitions  # fmt: skip
    assert set(one.shift_per_stream) == {f"action 0 obs[{PUSH_DIM}] up", f"action 0 obs[{PUSH_DIM}] down"}


def test_a_calibration_with_another_statistic_or_drift_is_refused(calibrated, tmp_path):
    d, _, _ = calibrated
    for f in ("dynamics_ensemble.onnx", "thresholds.json"):
        shutil.copy(d / f, tmp_path / f)
    config = tmp_path / "interlock.yaml"
    where = r"interlock\.yaml: agents\[0\] \(cartpole\)\.monitors\[1\]: .*"
    rerun = r"; re-run `interlock calibrate`"
    config.write_text(config_text({"signed": "        drift: 1.0\n"}))
    with pytest.raises(ConfigError, match=where + "calibrated with drift=0.5, the config says 1.0" + rerun):
        Guard(load_config(config)).load()
    config.write_text(config_text({"signed": "        drift: 0.5\n"}))  # the default, spelled out
    Guard(load_config(config)).load()
    thresholds = json.loads((tmp_path / "thresholds.json").read_text())
    energy = {k: v for k, v in thresholds["monitors"]["energy"].items()}
    thresholds["monitors"]["signed"] = {**energy, "clip": 4}  # an energy calibration
    (tmp_path / "thresholds.json").write_text(json.dumps(thresholds))
    config.write_text(config_text())
    with pytest.raises(
        ConfigError, match=where + "calibrated with statistic=energy, the config says signed" + rerun
    ):
        Guard(load_config(config)).load()
    del thresholds["monitors"]["signed"]["statistic"]  # a file from before the option: energy
    (tmp_path / "thresholds.json").write_text(json.dumps(thresholds))
    with pytest.raises(
        ConfigError, match=where + "calibrated with statistic=energy, the config says signed" + rerun
    ):
        Guard(load_config(config)).load()
    thresholds["monitors"]["signed"] = json.loads((d / "thresholds.json").read_text())["monitors"]["signed"]
    thresholds["monitors"]["energy"] = {**thresholds["monitors"]["signed"], "clip": None}
    (tmp_path / "thresholds.json").write_text(json.dumps(thresholds))
    energy_where = where.replace("monitors\\[1\\]", "monitors\\[0\\]")
    with pytest.raises(
        ConfigError, match=energy_where + "calibrated with statistic=signed, the config says energy"
    ):
        Guard(load_config(config)).load()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("statistic: sign", r"monitors\[1\]\.transition\.statistic: Input should be 'energy' or 'signed'"),
        ("drift: -0.5", r"monitors\[1\]\.transition\.drift: Input should be greater than or equal to 0"),
        ("drift: .nan", r"monitors\[1\]\.transition\.drift: .*finite"),
        ("drift: .inf", r"monitors\[1\]\.transition\.drift: .*finite"),
    ],
)
def test_bad_signed_settings_are_config_errors_naming_the_path(tmp_path, line, message):
    (tmp_path / "interlock.yaml").write_text(config_text({"signed": f"        {line}\n"}))
    with pytest.raises(ConfigError, match=r"interlock\.yaml: .*\n  agents\[0\]\." + message):
        load_config(tmp_path / "interlock.yaml")


def test_an_intervention_budget_raises_shift_until_the_steps_after_a_trip_fit(calibrated, tmp_path):
    """`--intervention-budget`: a response latched on episode.shifted intervenes on every step from the
    first trip on; the shift threshold is raised until that share of the threshold part's calm steps is
    within the budget, and the held-out share is measured as the running monitor trips."""
    d, episodes, cals = calibrated
    m = monitors(d)

    def share(paths: list[np.ndarray], h: float) -> float:  # a plain loop over first trips
        after = 0
        for p in paths:
            over = np.flatnonzero(p > h)
            after += len(p) - over[0] if over.size else 0
        return after / sum(len(p) for p in paths)

    for name in ("energy", "signed"):
        split = cals[name].split
        # the monitor's own statistic after each transition (its first step has none)
        paths = [r["shift"][1:] for r in run_side_by_side(m[name], episodes, f"b{name}")]
        fit = [paths[i] for i in split["threshold"]]
        held = [paths[i] for i in split["held_out"]]
        h0 = m[name].thresholds["shift"]
        budget = share(fit, h0) / 2  # half of what the per-episode target alone lets through
        assert budget > 0
        out = tmp_path / f"{name}.json"
        report = calibrate(
            d / "interlock.yaml", "cartpole", d / "nominal.npz", rate=0.05, episode_rate=0.1,
            monitors=[name], output=out, intervention_budget=budget,
        )  # fmt: skip
        [cal] = report.transitions
        h = cal.thresholds["shift"]
        assert h > h0 and share(fit, h) <= budget
        assert cal.held_out_after_trip_share == pytest.approx(share(held, h))
        entry = json.loads(out.read_text())["monitors"][name]
        assert entry["intervention_budget"] == budget
        assert entry["held_out_false_alarm_rate"]["steps_after_trip"] == pytest.approx(share(held, h))
        assert "steps at or after a trip" in cal.summary()
    with pytest.raises(EnsembleError, match="intervention budget must be in"):
        calibrate(d / "interlock.yaml", "cartpole", d / "nominal.npz", output=tmp_path / "x.json",
                  intervention_budget=1.5)  # fmt: skip


def test_joint_calibration_holds_the_union_of_the_monitors_to_the_targets(calibrated, tmp_path):
    """`--joint`: episode.shifted is any monitor's trip, so the per-episode target and the budget hold
    for the union. Each threshold sits at the same rank of its own calm episode maxima (as the running
    monitors compute them), the largest rank whose union stays within what one conformal threshold
    allows; the held-out union rate is what the running monitors, loaded from the file, do."""
    import math

    d, episodes, cals = calibrated
    shutil.copy(d / "dynamics_ensemble.onnx", tmp_path / "dynamics_ensemble.onnx")
    (tmp_path / "interlock.yaml").write_text(config_text())
    rate = 0.1
    report = calibrate(
        tmp_path / "interlock.yaml", "cartpole", d / "nominal.npz", rate=0.05, episode_rate=rate,
        joint=True, progress=False,
    )  # fmt: skip
    joint = {c.monitor: c for c in report.transitions}
    assert set(joint) == set(MONITORS) and all(c.joint is joint["energy"].joint for c in joint.values())
    record = json.loads((tmp_path / "thresholds.json").read_text())["monitors"]["signed"]["joint"]
    assert record["monitors"] == list(MONITORS) and record["per_episode"] == rate
    m = monitors(tmp_path)  # the running monitors with the joint thresholds
    split = cals["signed"].split
    paths = {n: [r["shift"] for r in run_side_by_side(m[n], episodes, f"j{n}")] for n in MONITORS}
    fit = {n: [paths[n][i] for i in split["threshold"]] for n in MONITORS}
    held = {n: [paths[n][i] for i in split["held_out"]] for n in MONITORS}
    rank = joint["signed"].joint.rank
    for n in MONITORS:
        h = m[n].thresholds["shift"]
        maxima = np.sort([p.max() for p in fit[n]])[::-1]
        assert h == pytest.approx(max(maxima[rank], joint[n].paths.floor), rel=1e-9)
        if n != "energy":  # same statistic as alone, a rank no larger: the threshold can only rise
            assert h >= cals[n].thresholds["shift"] - 1e-12

    def union(part: dict[str, list[np.ndarray]]) -> np.ndarray:
        return np.any([[p.max() > m[n].thresholds["shift"] for p in part[n]] for n in MONITORS], axis=0)

    n_fit = len(split["threshold"])
    allowed = n_fit - math.ceil((n_fit + 1) * (1 - rate))
    assert union(fit).sum() <= allowed
    assert joint["signed"].joint.held_out_union_rate == pytest.approx(union(held).mean())
    n_held, k_held = len(split["held_out"]), int(union(held).sum())
    assert record["held_out_episodes"] == joint["signed"].joint.held_out_episodes == n_held
    exact = sum(  # P(X >= k_held), X ~ Binomial(n_held, rate)
        math.comb(n_held, i) * rate**i * (1 - rate) ** (n_held - i)
        for i in range(k_held, n_held + 1)
    )
    assert record["held_out_over_target_p"] == pytest.approx(exact)
    assert "joint (energy, signed, signed_pa" in report.summary()
    left_out = "--joint calibrates every transition monitor.*left out by --monitor: "
    with pytest.raises(ConfigError, match=left_out):
        calibrate(tmp_path / "interlock.yaml", "cartpole", d / "nominal.npz", monitors=["signed"], joint=True)


def test_the_joint_summary_warns_when_held_out_episodes_trip_over_the_target_beyond_chance() -> None:
    """Round 24 on LunarLander: a quiet agent's joint calibration held out 8 trips of 150 against a 2%
    target, and its guarded calm episodes then tripped in 9%. The summary says so, and what to do; 3 of
    150 (2%) is within chance and gets no warning."""
    from interlock.monitors.calibrate_transition import JointCalibration

    def summary(trips: int) -> str:
        return JointCalibration(["drift", "thrust"], 0.02, 0.01, 0, 0.0, trips / 150, 0.05, 150).summary()

    warned = summary(8)
    assert "warning: the held-out episodes trip at 5.3% of 150, over the 0.02 target" in warned
    assert "(p = 0.011)" in warned and "--episodes" in warned
    assert "warning" not in summary(3)
    none_held_out = JointCalibration(["drift"], 0.02, None, 0, 0.0, 0.0, 0.0)
    assert "warning" not in none_held_out.summary()
