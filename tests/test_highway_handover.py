"""The highway example's dense-traffic detector and Simplex handover (HANDOVER_RULE.md).

Real parts: the example's configs loaded by Interlock's config loader, the detector plugin
(``examples/highway/handover.py``) imported by name, the committed ONNX agent and backups, a real
highway-fast-v0, and a real gRPC server on loopback behind the Gymnasium wrapper (which sends
``episode_id`` and ``step``, so the latch is kept by the server across requests).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from interlock.batch import Batch
from interlock.config import load_config
from interlock.engine import Guard
from interlock.types import CheckInput, Verdict

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
ROOT = Path(__file__).resolve().parents[1]
HIGHWAY = ROOT / "examples" / "highway"
SPEEDS = {"stock": (20.0, 25.0, 30.0), "cpss": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)}
DESIGNS = {
    "handover": {"stock": HIGHWAY / "interlock_handover.yaml",
                 "cpss": HIGHWAY / "interlock_handover_cpss.yaml"},
    "shield_handover": {"stock": HIGHWAY / "interlock_shield_handover.yaml",
                        "cpss": HIGHWAY / "interlock_shield_handover_cpss.yaml"},
    "shielded_handover": {"stock": HIGHWAY / "interlock_shielded_handover.yaml",
                          "cpss": HIGHWAY / "interlock_shielded_handover_cpss.yaml"},
    "shielded_handover_r2": {"stock": HIGHWAY / "interlock_shielded_handover_r2.yaml",
                             "cpss": HIGHWAY / "interlock_shielded_handover_r2_cpss.yaml"},
}


def _threshold(design: str, speed: str) -> float:
    """The calibrated threshold a design's config must carry: round 2's per speed setting, else round 1's."""
    if design == "shielded_handover_r2":
        return json.loads((HIGHWAY / "handover_thresholds_r2.json").read_text())["threshold_m"][speed]
    return json.loads((HIGHWAY / "handover_thresholds.json").read_text())["threshold_m"]


# the example's plugins are modules of examples/highway (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("highway_on_path")


def _obs(dxs: list[float]) -> np.ndarray:
    """A Kinematics observation [25] with the 4 other vehicles at ``dxs`` metres (x / 200)."""
    rows = np.zeros((5, 5), np.float32)
    rows[0] = [1.0, 0.5, 0.0, 25 / 80, 0.0]
    for i, dx in enumerate(dxs):
        rows[i + 1] = [1.0, dx / 200, 0.0, 0.0, 0.0]
    return rows.reshape(-1)


def _batch(rows: list[np.ndarray], episode_ids: list[str], steps: list[int]) -> Batch:
    n = len(rows)
    return Batch("highway", np.stack(rows), np.zeros(n, np.int64), np.asarray(steps, np.int64),
                 episode_ids, [{}] * n)


def test_the_configs_use_the_calibrated_threshold_and_the_backup_of_their_speed_setting() -> None:
    for design, paths in DESIGNS.items():
        for speed, path in paths.items():
            threshold = _threshold(design, speed)
            agent = yaml.safe_load(path.read_text())["agents"][0]
            [dense] = [m for m in agent["monitors"] if m.get("name") == "dense"]
            assert dense["kwargs"]["threshold"] == threshold
            assert dense["signals"]["score"] == {"threshold": threshold, "direction": "below"}
            assert dense["signals"]["shifted"] == {"threshold": 0.5, "direction": "above"}
            backup = agent["fallbacks"]["backup"]
            assert backup.get("model", backup.get("kwargs", {}).get("scores")) == f"backup_{speed}.onnx"
            first = agent["policy"]["rules"][0] if design != "handover" else agent["policy"]["rules"][1]
            assert first == {**first, "name": "handover", "when": "tripped.dense.shifted",
                             "verdict": "substitute", "fallback": "backup"}
            for m in agent["monitors"]:  # the shield's model must know the env's target speeds
                if m.get("name") == "shield":
                    assert tuple(m["kwargs"]["target_speeds"]) == SPEEDS[speed]
            if design.startswith("shielded_handover"):  # the backup's shield is the agent's shield
                shield = dict(agent["fallbacks"]["shield_choice"]["kwargs"], scores=f"backup_{speed}.onnx")
                assert backup["kwargs"] == shield


def test_round_two_differs_from_design_c_only_in_the_threshold_and_version() -> None:
    for speed in ("stock", "cpss"):
        c, c2 = (yaml.safe_load(DESIGNS[d][speed].read_text())
                 for d in ("shielded_handover", "shielded_handover_r2"))
        for config in (c, c2):
            config.pop("version")
            [dense] = [m for m in config["agents"][0]["monitors"] if m.get("name") == "dense"]
            dense["kwargs"].pop("threshold")
            for name in ("closeness", "score"):
                dense["signals"][name].pop("threshold")
        assert c == c2


def test_the_round_two_thresholds_are_the_smallest_shielded_minimum_per_speed_setting() -> None:
    from handover_calibrate import thresholds

    r2 = json.loads((HIGHWAY / "handover_thresholds_r2.json").read_text())
    assert r2["driver"].startswith("under today's shield") and r2["seeds"].startswith("320000 + k, k < 80")
    assert {s: len(v) for s, v in r2["episode_minima"].items()} == {"stock": 80, "cpss": 80}
    assert r2["threshold_m"] == thresholds(r2["episode_minima"], per_speed=True)
    assert r2["threshold_m"] == {s: min(v) for s, v in r2["episode_minima"].items()}
    minima = {"stock": [31.0, 40.0], "cpss": [36.0]}
    assert thresholds(minima, per_speed=False) == {"stock": 31.0, "cpss": 31.0}
    assert thresholds(minima, per_speed=True) == {"stock": 31.0, "cpss": 36.0}
    with pytest.raises(ValueError, match="at least one calibration episode"):
        thresholds({"stock": [31.0], "cpss": []}, per_speed=True)


def test_every_design_config_loads_and_its_plugins_pass_the_probe() -> None:
    for paths in DESIGNS.values():
        for path in paths.values():
            guard = Guard(load_config(path)).load()
            guard.unload()


def test_the_detector_latches_per_episode_and_follows_steps() -> None:
    from handover import DenseTraffic, closeness

    far, near = _obs([60, -60, 80, 100]), _obs([10, -20, 30, 40])  # mean 75 m, 25 m
    assert closeness(np.stack([far, near])) == pytest.approx([75.0, 25.0])
    absent = _obs([10, 20]).copy()  # two vehicles absent: they count 100 m each
    assert closeness(absent[None])[0] == pytest.approx((10 + 20 + 100 + 100) / 4)
    det = DenseTraffic(threshold=40.0, max_episodes=2)
    out = det(np.stack([far, near]), None, _batch([far, near], ["e1", "e1"], [0, 1]))
    assert out["score"] == pytest.approx([75.0, 50.0]) and list(out["shifted"]) == [0.0, 0.0]
    out = det(near[None], None, _batch([near], ["e1"], [2]))  # running mean (75+25+25)/3 = 41.7
    assert out["shifted"][0] == 0.0
    out = det(near[None], None, _batch([near], ["e1"], [3]))  # 37.5 < 40: trips
    assert out["score"][0] == pytest.approx(37.5) and out["shifted"][0] == 1.0
    out = det(near[None], None, _batch([near], ["e1"], [3]))  # the same step again: not counted twice
    assert out["score"][0] == pytest.approx(37.5) and out["shifted"][0] == 1.0
    for step in (4, 5, 6):  # latched: the traffic thins out, the episode stays shifted
        out = det(far[None], None, _batch([far], ["e1"], [step]))
        assert out["shifted"][0] == 1.0 and out["score"][0] > 40.0
    out = det(far[None], None, _batch([far], ["e1"], [0]))  # step 0: a new episode
    assert out["shifted"][0] == 0.0 and out["score"][0] == pytest.approx(75.0)
    out = det(near[None], None, _batch([near], [""], [7]))  # no episode id: the row alone
    assert out["shifted"][0] == 1.0 and out["score"][0] == pytest.approx(25.0)
    det(far[None], None, _batch([far], ["e2"], [0]))
    det(far[None], None, _batch([far], ["e3"], [0]))
    assert len(det) == 2  # bounded: e1 (least recently used) dropped
    with pytest.raises(ValueError, match="positive distance"):
        DenseTraffic(threshold=float("nan"))


def _run(guard: Guard, agent, env, seed: int, episode: str) -> list:
    """One real episode decided by ``guard`` in process; returns its decisions."""
    obs, _ = env.reset(seed=seed)
    decisions, done, step = [], False, 0
    while not done:
        flat = np.asarray(obs, np.float32).reshape(-1)
        proposed = int(np.argmax(agent.q(flat[None])[0]))
        [d] = guard.check([CheckInput("highway", flat, np.int64(proposed), episode, step)])
        decisions.append(d)
        obs, _, terminated, truncated, _ = env.step(int(d.action))
        done, step = terminated or truncated, step + 1
    return decisions


def test_a_real_dense_episode_is_handed_over_and_a_nominal_one_is_not() -> None:
    """Design A (interlock_handover.yaml, stock speeds) on real highway-fast-v0 episodes, seeds
    outside every range of the study: in density 2 the detector trips at the first step and the
    backup drives every step after (SUBSTITUTE by rule ``handover``, the backup's argmax); in
    density 1 nothing trips and every action is the agent's own (ALLOW)."""
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("highway_env", reason="highway-env is not installed: pip install -e '.[bench]'")
    from shield_study import Agent

    agent, backup = Agent(HIGHWAY / "agent.onnx"), Agent(HIGHWAY / "backup_stock.onnx")
    guard = Guard(load_config(DESIGNS["handover"]["stock"])).load()
    try:
        runs = {}
        for density, seed in ((2.0, 500_100), (1.0, 500_200)):
            env = gym.make("highway-fast-v0", config={
                "duration": 20, "vehicles_count": 15, "vehicles_density": density,
                "action": {"type": "DiscreteMetaAction", "target_speeds": list(SPEEDS["stock"])}})
            runs[density] = _run(guard, agent, env, seed, f"test-{density}")
            env.close()
    finally:
        guard.unload()
    dense, nominal = runs[2.0], runs[1.0]
    assert len(dense) >= 3 and len(nominal) == 20
    for d in dense:
        assert (d.verdict, d.rule) == (Verdict.SUBSTITUTE, "handover")
        assert int(d.action) == int(np.argmax(backup.q(d.observation[None])[0]))
    assert all(d.verdict is Verdict.ALLOW and int(d.action) == int(d.proposed_action) for d in nominal)
    scores = [{n: v for n, v, _, _ in d.signals}["dense.score"] for d in nominal]
    assert min(scores) > yaml.safe_load(DESIGNS["handover"]["stock"].read_text())["agents"][0][
        "monitors"][1]["kwargs"]["threshold"]


def test_through_a_loopback_server_the_latch_holds_across_requests() -> None:
    """Design C (shield before, shielded backup after) behind the Gymnasium wrapper, which sends
    episode_id and step: in density 2 the server's detector trips at step 0 and every later request
    of the episode is answered by rule ``handover`` with the backup's shielded action."""
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("highway_env", reason="highway-env is not installed: pip install -e '.[bench]'")
    from gymnasium.wrappers import FlattenObservation
    from handover import ShieldedBackup
    from shield_study import Agent

    from interlock.client.gym import InterlockWrapper
    from interlock.server.background import background_server

    path = DESIGNS["shielded_handover"]["stock"]
    kwargs = yaml.safe_load(path.read_text())["agents"][0]["fallbacks"]["backup"]["kwargs"]
    shielded = ShieldedBackup(**kwargs)
    agent = Agent(HIGHWAY / "agent.onnx")
    with background_server(load_config(path)) as srv:
        env = InterlockWrapper(FlattenObservation(gym.make("highway-fast-v0", config={
            "duration": 20, "vehicles_count": 15, "vehicles_density": 2.0,
            "action": {"type": "DiscreteMetaAction", "target_speeds": list(SPEEDS["stock"])}})),
            f"127.0.0.1:{srv.port}", agent_id="highway")
        obs, _ = env.reset(seed=500_101)
        for step in range(4):
            flat = np.asarray(obs, np.float32)[None]
            expected = int(shielded(flat, np.zeros(1, np.int64), None)[0])
            obs, _, terminated, truncated, info = env.step(int(np.argmax(agent.q(flat)[0])))
            decision = info["interlock"]
            assert (decision["verdict"], decision["rule"]) == ("SUBSTITUTE", "handover"), step
            assert int(decision["action"]) == expected
            assert decision["signals"]["dense.shifted"]["tripped"]
            if terminated or truncated:
                break
        env.close()


class _Recording:
    """A real Guard that also records what it was asked and what it answered."""

    def __init__(self, guard: Guard) -> None:
        self.guard, self.observations, self.actions, self.verdicts = guard, [], [], []

    def check(self, inputs: list[CheckInput]) -> list:
        decisions = self.guard.check(inputs)
        for i, d in zip(inputs, decisions, strict=True):
            self.observations.append(np.asarray(i.observation, np.float32).reshape(-1))
            self.actions.append(int(d.action))
            self.verdicts.append(d.verdict)
        return decisions


def test_guarded_calibration_measures_the_trajectory_the_guard_drives() -> None:
    """``handover_calibrate.episode_minimum`` with a guard: the minimum is that of the observations
    the guard was asked about, and the env executed the guard's actions (a replay of those actions
    reproduces the observations). Dense traffic under C2, where the backup drives most steps, so
    an episode that executed the agent's own actions would diverge."""
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("highway_env", reason="highway-env is not installed: pip install -e '.[bench]'")
    from handover import closeness
    from handover_calibrate import episode_minimum
    from shield_study import Agent

    agent = Agent(HIGHWAY / "agent.onnx")
    config = {"duration": 20, "vehicles_count": 15, "vehicles_density": 2.0,
              "action": {"type": "DiscreteMetaAction", "target_speeds": list(SPEEDS["stock"])}}
    env = gym.make("highway-fast-v0", config=config)
    guard = Guard(load_config(DESIGNS["shielded_handover_r2"]["stock"])).load()
    try:
        spy = _Recording(guard)
        minimum, steps = episode_minimum(env, agent, 500_102, spy)
    finally:
        guard.unload()
    assert steps == len(spy.observations) >= 3
    assert any(v is Verdict.SUBSTITUTE for v in spy.verdicts)
    proposed = [int(np.argmax(agent.q(o[None])[0])) for o in spy.observations]
    assert proposed != spy.actions  # the guard changed something, so the replay below can tell
    values = closeness(np.stack(spy.observations))
    assert minimum == pytest.approx(float((np.cumsum(values) / np.arange(1, steps + 1)).min()))
    obs, _ = env.reset(seed=500_102)
    for seen, action in zip(spy.observations, spy.actions, strict=True):
        assert np.array_equal(np.asarray(obs, np.float32).reshape(-1), seen)
        obs, *_ = env.step(action)
    env.close()


LIVE = {"stock": HIGHWAY / "interlock_live_handover_r4.yaml",
        "cpss": HIGHWAY / "interlock_live_handover_r4_cpss.yaml"}


def test_round_four_differs_from_round_two_only_in_the_live_handover() -> None:
    """HANDOVER_RULE.md round 4: C4 is C2 with the handover while the running mean is under the
    threshold (tripped.dense.score) instead of latched (tripped.dense.shifted)."""
    for speed in ("stock", "cpss"):
        paths = (DESIGNS["shielded_handover_r2"][speed], LIVE[speed])
        c2, c4 = (yaml.safe_load(p.read_text()) for p in paths)
        rules2, rules4 = c2["agents"][0]["policy"]["rules"], c4["agents"][0]["policy"]["rules"]
        assert rules2[0]["when"] == "tripped.dense.shifted" and rules4[0]["when"] == "tripped.dense.score"
        for config in (c2, c4):
            config.pop("version")
            for key in ("when", "reason"):
                config["agents"][0]["policy"]["rules"][0].pop(key)
        assert c2 == c4


def _rules(path: Path, observations: list[np.ndarray], episode: str) -> list[str]:
    """The deciding rule per step of one episode of ``observations`` through ``path``'s config."""
    guard = Guard(load_config(path)).load()
    try:
        return [guard.check([CheckInput("highway", o, np.int64(1), episode, t)])[0].rule
                for t, o in enumerate(observations)]
    finally:
        guard.unload()


def test_the_live_handover_lets_go_when_the_traffic_thins_and_the_latched_one_does_not() -> None:
    """One episode through both stock configs: dense at step 0 (mean 25 m, under 29.2 m), then thin
    traffic (75 m) lifts the running mean over the threshold at step 1. C2 keeps the backup to the end;
    C4 gives the agent its control back. In another episode that turns dense later, C4 hands over when
    the running mean falls under the threshold and keeps the backup while it stays there."""
    near, far = _obs([10, -20, 30, 40]), _obs([60, -60, 80, 100])
    sequence = [near, far, far, near, near, near, near]  # running means 25, 50, 58, 50, 45, 41.7, 39.3
    assert _rules(DESIGNS["shielded_handover_r2"]["stock"], sequence, "live-test") == ["handover"] * 7
    live = _rules(LIVE["stock"], sequence, "live-test")
    assert live[0] == "handover" and "handover" not in live[1:]
    # thin at first, then dense for good: the mean of 75, 75 and k x 25 m falls under 29.2 m at k = 22
    again = _rules(LIVE["stock"], [far, far, *[near] * 30], "live-2")
    first = next(t for t, r in enumerate(again) if r == "handover")
    assert first == 23 and set(again[first:]) == {"handover"}  # step 23: the 22nd dense step


def test_round_five_candidates_differ_from_c4_only_in_the_backup_s_shield_setting() -> None:
    """HANDOVER_RULE.md round 5 (not chosen, kept as the record): each candidate is C4 (stock) with one
    kwarg of the backup's shield choice changed, and loads."""
    c4 = yaml.safe_load(LIVE["stock"].read_text())
    c4_backup = c4["agents"][0]["fallbacks"]["backup"]["kwargs"]
    for tag, change in (("t5", {"threshold": 5.0}), ("t8", {"threshold": 8.0}), ("h2", {"horizon": 2})):
        path = HIGHWAY / f"interlock_dense_margin_r5_{tag}.yaml"
        candidate = yaml.safe_load(path.read_text())
        backup = candidate["agents"][0]["fallbacks"]["backup"]["kwargs"]
        assert backup == {**c4_backup, **change}, tag
        candidate["agents"][0]["fallbacks"]["backup"]["kwargs"] = c4_backup
        assert {**candidate, "version": c4["version"]} == c4, tag
        Guard(load_config(path)).load().unload()


def test_round_six_differs_from_c4_only_in_the_backup_model() -> None:
    """HANDOVER_RULE.md round 6: C6 is C4 (stock) with the backup trained longer on dense traffic."""
    c4 = yaml.safe_load(LIVE["stock"].read_text())
    path = HIGHWAY / "interlock_backup_long_r6.yaml"
    c6 = yaml.safe_load(path.read_text())
    backup = c6["agents"][0]["fallbacks"]["backup"]["kwargs"]
    assert backup["scores"] == "backup_stock_long.onnx"
    assert {**backup, "scores": "backup_stock.onnx"} == c4["agents"][0]["fallbacks"]["backup"]["kwargs"]
    c6["agents"][0]["fallbacks"]["backup"]["kwargs"] = c4["agents"][0]["fallbacks"]["backup"]["kwargs"]
    assert {**c6, "version": c4["version"]} == c4
    guard = Guard(load_config(path)).load()
    try:  # the backup drives a dense observation (mean distance 25 m, under the threshold)
        [d] = guard.check([CheckInput("highway", _obs([10, -20, 30, 40]), np.int64(1), "r6", 0)])
        assert d.rule == "handover" and 0 <= int(d.action) < 5
    finally:
        guard.unload()


def test_a_per_agent_threshold_moves_the_trip_and_nothing_else() -> None:
    """HANDOVER_RULE.md round 8: ``interlock_eval.py --handover-thresholds`` rewrites the dense detector's
    threshold (its kwarg and both signals) in a copy of the config, nothing else. A first step whose
    mean distance is 25 m trips C6 at the shipped 29.2 m and not at 24 m; one at 12.5 m trips both."""
    from interlock_eval import DESIGNS as EVAL_DESIGNS
    from interlock_eval import with_dense_threshold

    shipped = EVAL_DESIGNS["backup_long_r6"]["stock"]
    assert with_dense_threshold(shipped, None) == shipped
    moved = with_dense_threshold(shipped, 24.0)
    before, after = yaml.safe_load(shipped.read_text()), yaml.safe_load(moved.read_text())
    [detector] = [m for m in after["agents"][0]["monitors"] if m.get("name") == "dense"]
    assert detector["kwargs"]["threshold"] == 24.0
    assert detector["signals"]["closeness"]["threshold"] == detector["signals"]["score"]["threshold"] == 24.0
    [old] = [m for m in before["agents"][0]["monitors"] if m.get("name") == "dense"]
    detector["kwargs"], detector["signals"] = old["kwargs"], old["signals"]
    assert after == before
    dense, denser = _obs([10, -20, 30, 40]), _obs([5, -10, 15, 20])  # mean distance 25 m, 12.5 m
    for path, rules in ((shipped, ["handover", "handover"]), (moved, ["", "handover"])):
        guard = Guard(load_config(path)).load()
        try:
            decided = [guard.check([CheckInput("highway", obs, np.int64(1), f"r8-{i}", 0)])[0]
                       for i, obs in enumerate((dense, denser))]
            assert [d.rule for d in decided] == rules, path
            assert 0 <= int(decided[1].action) < 5  # the backup's choice, through the shield
        finally:
            guard.unload()


def test_calibrating_on_an_agent_writes_the_shipped_designs_with_its_thresholds(tmp_path, monkeypatch):
    """``handover_calibrate.py --guarded --per-speed --write-configs DIR`` (round 8's step for a new agent):
    the thresholds file holds the smallest guarded minimum per speed setting, and DIR holds the shipped
    designs (C6 stock, C4 CPSS) with exactly those thresholds and nothing else changed; they load."""
    pytest.importorskip("highway_env", reason="highway-env is not installed: pip install -e '.[bench]'")
    import handover_calibrate

    out, configs = tmp_path / "thresholds.json", tmp_path / "configs"
    monkeypatch.setattr("sys.argv", ["handover_calibrate.py", "--guarded", "--per-speed", "--episodes", "2",
                                     "--seed-base", "950000", "--agent", str(HIGHWAY / "agent_seed1.onnx"),
                                     "--out", str(out), "--write-configs", str(configs)])
    handover_calibrate.main()
    result = json.loads(out.read_text())
    for speed, source in handover_calibrate.SHIPPED_CONFIGS.items():
        threshold = result["threshold_m"][speed]
        assert threshold == min(result["episode_minima"][speed])
        written = yaml.safe_load((configs / source.name).read_text())
        shipped = yaml.safe_load(source.read_text())
        [detector] = [m for m in shipped["agents"][0]["monitors"] if m.get("name") == "dense"]
        assert threshold != detector["kwargs"]["threshold"]  # agent.onnx's threshold is replaced
        assert handover_calibrate.set_dense_threshold(shipped, threshold) == written
        Guard(load_config(configs / source.name)).load().unload()
