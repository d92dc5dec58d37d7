"""The highway example's five-action kinematic shield as ``kind: python`` plugins through Interlock.

Real parts: the example's configs loaded by Interlock's config loader, the plugin module
(``examples/highway/highway_shield.py``) imported by name, the agent's ONNX, a real highway-fast-v0,
and a real gRPC server on loopback behind the Gymnasium wrapper. The expected margins and actions
come from ``kinematic_model`` (the study's code, outside Interlock).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from interlock.config import load_config
from interlock.engine import Guard
from interlock.types import CheckInput, Verdict

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
ROOT = Path(__file__).resolve().parents[1]
HIGHWAY = ROOT / "examples" / "highway"
CONFIGS = {"stock": HIGHWAY / "interlock.yaml", "cpss": HIGHWAY / "interlock_cpss.yaml"}
SPEEDS = {"stock": (20.0, 25.0, 30.0), "cpss": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)}
THRESHOLD, TIE, RANK = 3.0, 1.0, 2  # the study's chosen variant h1_t3_tie_rank2b (round 5b)
LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER = range(5)


# the example's plugins are modules of examples/highway (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("highway_on_path")


@pytest.fixture(scope="module")
def guards(highway_on_path) -> Iterator[dict[str, Guard]]:
    gs = {name: Guard(load_config(path)).load() for name, path in CONFIGS.items()}
    yield gs
    for g in gs.values():
        g.unload()


def _agent_kwargs(path: Path) -> tuple[dict, dict, dict]:
    agent = yaml.safe_load(path.read_text())["agents"][0]
    [mon] = [m for m in agent["monitors"] if m["kind"] == "python"]
    return mon, agent["fallbacks"]["shield_choice"], agent


def test_both_configs_are_the_studys_variant_and_differ_only_in_target_speeds() -> None:
    for name, path in CONFIGS.items():
        mon, fb, agent = _agent_kwargs(path)
        assert mon["signals"]["margin"] == {"threshold": THRESHOLD, "direction": "below"}
        assert mon["signals"]["improvable"] == {"threshold": 0.5, "direction": "above"}
        for kw in (mon["kwargs"], fb["kwargs"]):
            assert kw["threshold"] == THRESHOLD and kw["tie_tolerance"] == TIE
        assert fb["kwargs"]["rank_horizon"] == RANK and "rank_horizon" not in mon["kwargs"]
        for kw in (mon["kwargs"], fb["kwargs"]):
            assert tuple(kw["target_speeds"]) == SPEEDS[name]
            assert kw["horizon"] == 1 and kw["lead_decel"] == 0.0 and kw["followups"] == ["hold", "brake"]
        assert agent["fail_safe"] == "slow_down" and agent["fail_mode"] == "closed"
    stock, cpss = (yaml.safe_load(p.read_text()) for p in CONFIGS.values())
    for doc in (stock, cpss):
        doc.pop("version")
        a = doc["agents"][0]
        a["monitors"][1]["kwargs"].pop("target_speeds")
        a["fallbacks"]["shield_choice"]["kwargs"].pop("target_speeds")
    assert stock == cpss


def test_without_the_example_folder_on_the_path_config_check_names_the_module() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT / "src")
    cmd = [sys.executable, "-m", "interlock.cli", "config", "check", str(CONFIGS["stock"])]
    bad = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert bad.returncode != 0
    assert "monitors[1].callable: cannot import module 'highway_shield'" in bad.stderr + bad.stdout
    env["PYTHONPATH"] += os.pathsep + str(HIGHWAY)
    good = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout


def _signals(d) -> dict[str, tuple[float, bool]]:
    return {n: (v, t) for n, v, _, t in d.signals}


def _real_observations(speed: str, seed: int, steps: int) -> np.ndarray:
    """[n, 25] float32 observations of dense highway-fast-v0 under random actions."""
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("highway_env", reason="highway-env is not installed: pip install -e '.[bench]'")
    env = gym.make("highway-fast-v0", config=_env_config(speed))
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(steps):
        out.append(np.asarray(obs, np.float32).reshape(-1))
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(5)))
        if terminated or truncated:
            obs, _ = env.reset(seed=seed + 1)
    env.close()
    return np.stack(out)


def _env_config(speed: str) -> dict:
    return {"duration": 20, "vehicles_count": 15, "vehicles_density": 2.0,
            "action": {"type": "DiscreteMetaAction", "target_speeds": list(SPEEDS[speed])}}


@pytest.mark.parametrize("speed", ["stock", "cpss"])
def test_the_plugins_margins_are_the_kinematic_models_on_real_observations(guards, speed) -> None:
    from kinematic_model import KinematicModel, improvable

    obs = _real_observations(speed, seed=777_000, steps=12)
    expected = KinematicModel(target_speeds=SPEEDS[speed], horizon=1).margins_all(obs)  # [12, 5]
    actions = np.arange(len(obs)) % 5
    rows = zip(obs, actions, strict=True)
    decisions = guards[speed].check(
        [CheckInput("highway", o, np.int64(a), "real", i) for i, (o, a) in enumerate(rows)]
    )
    for i, (d, a) in enumerate(zip(decisions, actions, strict=True)):
        sig = _signals(d)
        assert sig["shield.margin"][0] == pytest.approx(expected[i, a], abs=1e-9)
        assert sig["shield.best_margin"][0] == pytest.approx(expected[i].max(), abs=1e-9)
        unsafe = expected[i, a] < THRESHOLD
        better = bool(improvable(expected[i:i + 1], np.array([a]), THRESHOLD, TIE)[0])
        assert sig["shield.margin"][1] == unsafe
        assert sig["shield.improvable"] == (float(better), better)
        assert d.verdict is (Verdict.SUBSTITUTE if unsafe and better else Verdict.ALLOW)
        assert d.rule == ("unsafe" if unsafe and better else "no_safer_action" if unsafe else "")
    # Dense traffic under random actions: both kinds of decision occur in these 12 rows.
    assert {d.verdict for d in decisions} == {Verdict.ALLOW, Verdict.SUBSTITUTE}


def _ranking_model(speed: str):
    from kinematic_model import KinematicModel

    followups = ("hold", "brake", "left", "right")
    return KinematicModel(target_speeds=SPEEDS[speed], horizon=RANK, followups=followups)


def test_an_action_outside_the_space_gets_the_safe_action_the_agent_prefers(guards) -> None:
    from kinematic_model import KinematicModel
    from shield_study import Agent

    obs = _real_observations("stock", seed=777_100, steps=6)
    q = Agent(HIGHWAY / "agent.onnx").q(obs)
    margins = KinematicModel(target_speeds=SPEEDS["stock"], horizon=1).margins_all(obs)
    ranking = _ranking_model("stock").margins_all(obs)
    for i, o in enumerate(obs):
        [d] = guards["stock"].check([CheckInput("highway", o, np.int64(7), "bad", i)])
        assert d.verdict is Verdict.SUBSTITUTE and d.rule == "invalid_action"
        safe, both = margins[i] >= THRESHOLD, (margins[i] >= THRESHOLD) & (ranking[i] >= THRESHOLD)
        if both.any():  # safe for 1 s and over 2 decisions: the one with the highest Q
            assert int(d.action) == int(np.argmax(np.where(both, q[i], -np.inf)))
        elif safe.any():  # safe for 1 s only: the longest look's largest margin (Q within 1 m)
            ranked = np.where(safe, ranking[i], -np.inf)
            assert ranked[int(d.action)] >= ranked.max() - TIE
        else:  # nothing is safe: one of the least bad
            assert margins[i, int(d.action)] >= margins[i].max() - TIE


def test_real_steps_through_a_loopback_server_substitute_the_studys_choice() -> None:
    """Dense traffic, stock speeds, seed 500009 (outside every study range): the agent's SLOWER at
    step 2 leaves 1.0 m; FASTER is the only action with >= 3 m (3.4 m), so Interlock must answer
    SUBSTITUTE FASTER. Every step is checked against kinematic_model.shield_choice_ranked."""
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("highway_env", reason="highway-env is not installed: pip install -e '.[bench]'")
    from gymnasium.wrappers import FlattenObservation
    from kinematic_model import KinematicModel, shield_choice_ranked
    from shield_study import Agent

    from interlock.client.gym import InterlockWrapper
    from interlock.server.background import background_server

    agent = Agent(HIGHWAY / "agent.onnx")
    model, ranking = KinematicModel(target_speeds=SPEEDS["stock"], horizon=1), _ranking_model("stock")
    with background_server(load_config(CONFIGS["stock"])) as srv:
        env = InterlockWrapper(FlattenObservation(gym.make("highway-fast-v0", config=_env_config("stock"))),
                               f"127.0.0.1:{srv.port}", agent_id="highway")
        obs, _ = env.reset(seed=500_009)
        seen = []
        for _ in range(3):
            flat = np.asarray(obs, np.float32)[None]
            q = agent.q(flat)
            proposed = int(np.argmax(q[0]))
            expected = int(shield_choice_ranked(model.margins_all(flat), ranking.margins_all(flat), q,
                                                np.array([proposed]), THRESHOLD, TIE)[0])
            obs, _, terminated, truncated, info = env.step(proposed)
            decision = info["interlock"]
            seen.append((proposed, decision["verdict"], int(decision["action"])))
            assert int(decision["action"]) == expected
            assert not (terminated or truncated)
        env.close()
    assert seen[:2] == [(seen[0][0], "ALLOW", seen[0][0]), (seen[1][0], "ALLOW", seen[1][0])]
    assert seen[2] == (SLOWER, "SUBSTITUTE", FASTER)


def _obs(ego_speed: float, ego_lane: int, others: list[tuple[float, int, float]]) -> np.ndarray:
    """A Kinematics observation [25]: the ego at ``ego_speed`` m/s in ``ego_lane``, and ``others`` as
    (dx m, lane, speed m/s), normalised as highway-env does (x / 200, y / 12, v / 80)."""
    rows = np.zeros((5, 5), np.float32)
    rows[0] = [1.0, 0.5, ego_lane * 4 / 12, ego_speed / 80, 0.0]
    for i, (dx, lane, speed) in enumerate(others):
        rows[i + 1] = [1.0, dx / 200, (lane - ego_lane) * 4 / 12, (speed - ego_speed) / 80, 0.0]
    return rows.reshape(-1)


def test_estimate_accel_recovers_a_braking_leader_from_two_observations() -> None:
    from kinematic_model import estimate_accel

    # The ego drives 25 m/s; the leader, 20 m ahead at 20 m/s, brakes at 4 m/s^2 for 1 s
    # (18 m travelled, now 16 m/s, 13 m ahead); a car in the left lane keeps 25 m/s beside it.
    before = _obs(25.0, 1, [(20.0, 1, 20.0), (-5.0, 0, 25.0)])
    after = _obs(25.0, 1, [(13.0, 1, 16.0), (-5.0, 0, 25.0)])
    accel = estimate_accel(before[None], after[None])
    assert accel.shape == (1, 4)
    assert accel[0, 0] == pytest.approx(-4.0, abs=1e-5)
    assert accel[0, 1] == pytest.approx(0.0, abs=1e-5)
    assert accel[0, 2:].tolist() == [0.0, 0.0]  # absent rows: constant velocity
    # A vehicle that appears from nowhere (no match within 4 m) is not given an acceleration.
    jumped = _obs(25.0, 1, [(30.0, 1, 10.0)])
    assert estimate_accel(before[None], jumped[None])[0, 0] == 0.0


def test_episode_memory_follows_steps_and_stays_bounded() -> None:
    from highway_shield import EpisodeMemory

    mem = EpisodeMemory(max_episodes=2)
    o0, o1, o2 = (np.full(25, v, np.float32) for v in (0.0, 0.1, 0.2))
    assert mem.observe("a", "e1", 0, o0) is None
    assert np.array_equal(mem.observe("a", "e1", 1, o1), o0)
    assert np.array_equal(mem.observe("a", "e1", 1, o1), o0)  # the same step again: same previous
    assert np.array_equal(mem.previous("a", "e1", 1), o0)  # what the fallback reads
    assert mem.previous("a", "e1", 2) is None
    assert mem.observe("a", "e1", 5, o2) is None  # a gap: the episode starts afresh
    assert mem.observe("a", "", 1, o1) is None and len(mem) == 1  # no episode id, no state
    mem.observe("a", "e2", 0, o0)
    mem.observe("b", "e1", 0, o0)  # another agent's episode of the same id is its own
    assert len(mem) == 2 and mem.previous("a", "e1", 5) is None  # the least recently used went


@pytest.mark.parametrize("speed", ["stock", "cpss"])
def test_substitute_only_when_a_strictly_safer_action_exists(guards, speed) -> None:
    """Nothing is safe: cars close ahead in all three lanes. The least bad proposal is ALLOWed
    (rule no_safer_action, so Interlock's non-ALLOW count is the executed-action change); a
    proposal more than tie_tolerance worse than the best is substituted."""
    from kinematic_model import KinematicModel, shield_choice_ranked
    from shield_study import Agent

    obs = _obs(30.0, 1, [(7.0, 1, 20.0), (10.0, 0, 24.0), (5.0, 2, 20.0)])
    kw = _agent_kwargs(CONFIGS[speed])[0]["kwargs"]
    model = KinematicModel(target_speeds=SPEEDS[speed], horizon=kw["horizon"],
                           followups=tuple(kw["followups"]))
    margins = model.margins_all(obs[None])[0]
    assert margins.max() < THRESHOLD  # the case under test: nothing is safe
    best, worst = int(np.argmax(margins)), int(np.argmin(margins))
    assert margins[worst] < margins[best] - TIE
    [keep] = guards[speed].check([CheckInput("highway", obs, np.int64(best), "none-safe", 0)])
    sig = _signals(keep)
    assert sig["shield.margin"][1] and not sig["shield.improvable"][1]
    assert keep.verdict is Verdict.ALLOW and keep.rule == "no_safer_action" and int(keep.action) == best
    [swap] = guards[speed].check([CheckInput("highway", obs, np.int64(worst), "none-safe-2", 0)])
    assert _signals(swap)["shield.improvable"][1]
    q = Agent(HIGHWAY / "agent.onnx").q(obs[None])
    ranking = _ranking_model(speed).margins_all(obs[None])
    expected = int(shield_choice_ranked(margins[None], ranking, q, np.array([worst]), THRESHOLD, TIE)[0])
    assert swap.verdict is Verdict.SUBSTITUTE and swap.rule == "unsafe" and int(swap.action) == expected
    assert expected != worst


def test_shield_choice_ranked_looks_further_only_for_the_substitute() -> None:
    from kinematic_model import shield_choice_ranked

    q = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]] * 4)
    margins = np.array([
        [10.0, 10.0, 10.0, 10.0, 10.0],  # the proposal (IDLE) is safe: kept whatever the ranking
        [1.0, 5.0, 5.0, 0.0, 5.0],       # unsafe LANE_LEFT: IDLE is safe in both looks -> IDLE
        [1.0, 5.0, 5.0, 0.0, 5.0],       # ... no action safe in both: the safe one ranked best
        [1.6, 0.1, 1.3, -2.3, 0.1],      # nothing safe: the least bad (1.6, 1.3) ranked -> 2
    ])
    ranking = np.array([
        [-9.0, -9.0, -9.0, -9.0, -9.0],
        [0.0, 4.0, 8.0, 0.0, 0.0],
        [0.0, 1.0, 2.5, 0.0, 0.2],
        [-5.0, 3.0, 4.0, -5.0, 3.0],
    ])
    proposed = np.array([IDLE, LANE_LEFT, LANE_LEFT, SLOWER])
    chosen = shield_choice_ranked(margins, ranking, q, proposed, 3.0, 1.0)
    assert chosen.tolist() == [IDLE, IDLE, LANE_RIGHT, LANE_RIGHT]


def test_observed_accel_plugins_share_the_episodes_previous_observation() -> None:
    """The option not chosen in round 4 (``observed_accel``): the monitor records every row per
    (agent, episode) and, from the second step, the others keep their observed acceleration;
    the fallback reads the same memory."""
    from types import SimpleNamespace

    from highway_shield import ShieldChoice, ShieldMargins
    from kinematic_model import KinematicModel, estimate_accel

    before = _obs(25.0, 1, [(20.0, 1, 20.0)])
    after = _obs(25.0, 1, [(13.0, 1, 16.0)])  # the leader braked at 4 m/s^2
    monitor = ShieldMargins(observed_accel=True, memory="test-accel")
    choice = ShieldChoice(threshold=3.0, observed_accel=True, memory="test-accel")
    plain = KinematicModel(target_speeds=SPEEDS["stock"], horizon=1)

    def batch(step: int) -> SimpleNamespace:
        return SimpleNamespace(agent_id="highway", episode_ids=["ep"], steps=np.array([step]))

    first = monitor(before[None], np.array([IDLE]), batch(0))
    assert first["margin"][0] == pytest.approx(plain.margins_all(before[None])[0, IDLE])
    second = monitor(after[None], np.array([IDLE]), batch(1))
    accel = estimate_accel(before[None], after[None])
    braking = plain.margins_all(after[None], accel)[0]
    assert second["margin"][0] == pytest.approx(braking[IDLE])
    assert braking[IDLE] < plain.margins_all(after[None])[0, IDLE] - 1.0  # braking narrows the gap
    # The fallback judges with the same accelerations: its choice is safe under them.
    [chosen] = choice(after[None], np.array([FASTER]), batch(1))
    assert braking[int(chosen)] >= 3.0 or braking[int(chosen)] >= braking.max() - 1.0
