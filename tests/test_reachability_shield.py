"""Tabular reachability monitor, shield fallback and `interlock shield build` on real toy-text envs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from interlock.bench.agents import q_values
from interlock.cli import main as cli_main
from interlock.config import load_config
from interlock.engine import Guard
from interlock.errors import ConfigError
from interlock.reachability.gym_models import cliffwalking_model, frozenlake_model
from interlock.reachability.shield_build import clear_memo
from interlock.types import CheckInput, Verdict
from tests.support.fixtures import loaded

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def _fresh_memo():
    clear_memo()
    yield
    clear_memo()


def shield_agent(transitions: str, **extra) -> dict:
    fallback = {"kind": "shield", "monitor": "shield", **extra.pop("fallback", {})}
    agent = {
        "id": "toy",
        "observation": {"shape": [], "dtype": "int64"},
        "action": {"type": "discrete", "n": 4},
        "monitors": [
            {
                "kind": "reachability",
                "name": "shield",
                "model": {"kind": "tabular", "transitions": transitions},
                **extra.pop("monitor", {}),
            }
        ],
        "policy": {
            "rules": [
                {
                    "name": "shield",
                    "when": "tripped.shield.unsafe",
                    "verdict": "substitute",
                    "fallback": "safe",
                }
            ]
        },
        "fallbacks": {"safe": fallback},
    }
    agent.update(extra)
    return agent


def run_random(guard: Guard | None, env_id: str, steps: int, seed: int, agent_id: str, **kwargs):
    """A uniformly random agent for ``steps`` steps; returns (unsafe entries, episodes, substitutions)."""
    env = gym.make(env_id, **kwargs)
    holes = set()
    if env_id.startswith("FrozenLake"):
        holes = set(np.flatnonzero(env.unwrapped.desc.reshape(-1) == b"H").tolist())
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    unsafe = episodes = subs = 0
    for _ in range(steps):
        action = int(rng.integers(4))
        if guard is not None:
            [d] = guard.check([CheckInput(agent_id, np.int64(obs), np.int64(action))])
            assert d.verdict in (Verdict.ALLOW, Verdict.SUBSTITUTE), d.reasons
            subs += d.verdict is Verdict.SUBSTITUTE
            action = int(d.action)
        obs, reward, term, trunc, _ = env.step(action)
        unsafe += int(reward <= -100 or (term and int(obs) in holes))
        if term or trunc:
            episodes += 1
            obs, _ = env.reset()
    env.close()
    return unsafe, episodes, subs


def test_cliffwalking_example_keeps_a_random_agent_off_the_cliff() -> None:
    guard = Guard.from_file(str(EXAMPLES / "cliffwalking" / "interlock.yaml")).load()
    falls, _, subs = run_random(guard, "CliffWalking-v1", 4000, seed=1, agent_id="cliffwalking")
    assert falls == 0 and subs > 0
    unguarded, _, _ = run_random(None, "CliffWalking-v1", 4000, seed=1, agent_id="cliffwalking")
    assert unguarded > 50


@pytest.mark.parametrize(
    "agent_id, kwargs",
    [
        ("frozenlake-det", {"map_name": "4x4", "is_slippery": False}),
        ("frozenlake", {"map_name": "4x4", "is_slippery": True}),
        ("frozenlake-8x8", {"map_name": "8x8", "is_slippery": True}),
    ],
)
def test_frozenlake_example_shields_stop_every_fall(agent_id: str, kwargs: dict) -> None:
    guard = Guard.from_file(str(EXAMPLES / "frozenlake" / "interlock.yaml")).load()
    falls, episodes, _ = run_random(guard, "FrozenLake-v1", 3000, seed=2, agent_id=agent_id, **kwargs)
    assert falls == 0
    unguarded, _, _ = run_random(None, "FrozenLake-v1", 3000, seed=2, agent_id=agent_id, **kwargs)
    assert unguarded > 20
    if not kwargs["is_slippery"]:
        assert episodes > 0  # the deterministic lake still gets solved (the goal is in the winning region)


def test_signals_on_cliffwalking(tmp_path) -> None:
    cliffwalking_model().save(tmp_path / "cw.npz")
    guard = Guard(loaded([shield_agent("cw.npz")], base_dir=tmp_path)).load()
    UP, RIGHT, DOWN = 0, 1, 2
    [into_cliff, up, goal] = guard.check(
        [
            CheckInput("toy", np.int64(36), np.int64(RIGHT)),
            CheckInput("toy", np.int64(36), np.int64(UP)),
            CheckInput("toy", np.int64(35), np.int64(DOWN)),
        ]
    )
    sig = {name: value for name, value, _, _ in into_cliff.signals}
    assert sig["shield.unsafe"] == 1.0 and sig["shield.risk"] == 1.0 and sig["shield.lost"] == 0.0
    # From the start, 39 states are reachable (the 37 cells above the cliff row and the start, the goal
    # and the fallen state; the cliff cells themselves never are); after falling, only one.
    assert sig["shield.irreversibility"] == pytest.approx(1 - 1 / 39, rel=1e-6)
    assert into_cliff.verdict is Verdict.SUBSTITUTE and int(into_cliff.action) == UP  # lowest allowed index
    assert up.verdict is Verdict.ALLOW
    assert goal.verdict is Verdict.ALLOW  # reaching the goal is safe ...
    sig = {name: value for name, value, _, _ in goal.signals}
    assert sig["shield.irreversibility"] == pytest.approx(1 - 1 / 39, rel=1e-6)  # ... and irreversible


def test_shield_fallback_follows_the_agents_q_values(tmp_path) -> None:
    frozenlake_model("4x4", is_slippery=False).save(tmp_path / "fl.npz")
    env = gym.make("FrozenLake-v1", is_slippery=False).unwrapped
    q = q_values(env.P, 16, 4)
    np.save(tmp_path / "q.npy", q)
    guard = Guard(loaded([shield_agent("fl.npz", fallback={"scores": "q.npy"})], base_dir=tmp_path)).load()
    # State 4 (row 1, col 0): right (2) leads into the hole at 5.
    [d] = guard.check([CheckInput("toy", np.int64(4), np.int64(2))])
    allowed = [a for a in range(4) if a != 2]
    assert d.verdict is Verdict.SUBSTITUTE
    assert int(d.action) == max(allowed, key=lambda a: q[4, a])
    # Declared order instead of scores.
    guard = Guard(
        loaded([shield_agent("fl.npz", fallback={"order": [3, 2, 1, 0]})], base_dir=tmp_path)
    ).load()
    [d] = guard.check([CheckInput("toy", np.int64(4), np.int64(2))])
    assert int(d.action) == 3


def test_lost_state_gets_the_safest_action(tmp_path) -> None:
    frozenlake_model("4x4", is_slippery=True).save(tmp_path / "fl.npz")
    guard = Guard(loaded([shield_agent("fl.npz")], base_dir=tmp_path)).load()
    [d] = guard.check([CheckInput("toy", np.int64(8), np.int64(1))])  # 8 is outside the winning region
    sig = {name: value for name, value, _, _ in d.signals}
    assert sig["shield.lost"] == 1.0 and d.verdict is Verdict.SUBSTITUTE
    safety = guard.agents[0].monitors[0].tables.safety[8]
    assert safety[int(d.action)] == safety.max()


def test_risk_shield_allows_more_than_the_exact_one(tmp_path) -> None:
    frozenlake_model("4x4", is_slippery=True).save(tmp_path / "fl.npz")
    exact = Guard(loaded([shield_agent("fl.npz")], base_dir=tmp_path)).load()
    risky = Guard(
        loaded([shield_agent("fl.npz", monitor={"risk": {"delta": 0.1, "horizon": 10}})], base_dir=tmp_path)
    ).load()
    a_exact, a_risk = exact.agents[0].monitors[0].tables.allowed, risky.agents[0].monitors[0].tables.allowed
    assert (a_exact <= a_risk).all() and a_risk.sum() > a_exact.sum()
    [d] = risky.check([CheckInput("toy", np.int64(14), np.int64(2))])  # 14 -> right reaches the goal often
    assert d.verdict is Verdict.ALLOW
    assert dict((n, t) for n, _, t, _ in d.signals)["shield.risk"] == 0.1


def test_bad_state_index_fails_closed(tmp_path) -> None:
    cliffwalking_model().save(tmp_path / "cw.npz")
    guard = Guard(loaded([shield_agent("cw.npz")], base_dir=tmp_path)).load()
    [d] = guard.check([CheckInput("toy", np.int64(99), np.int64(0))])
    assert d.verdict is Verdict.HALT and d.action is None
    assert any("outside the model's states [0, 49)" in r for r in d.reasons)
    guard = Guard(loaded([shield_agent("cw.npz", fail_safe="safe")], base_dir=tmp_path)).load()
    [d] = guard.check([CheckInput("toy", np.int64(-1), np.int64(0))])
    assert d.verdict is Verdict.HALT  # the shield cannot pick for an unknown state either


def test_state_field_of_a_vector_observation(tmp_path) -> None:
    cliffwalking_model().save(tmp_path / "cw.npz")
    agent = shield_agent("cw.npz", observation={"shape": [3], "dtype": "float32"})
    agent["monitors"][0]["model"]["state_field"] = 1
    guard = Guard(loaded([agent], base_dir=tmp_path)).load()
    [d] = guard.check([CheckInput("toy", np.array([7.0, 36.0, -2.0], np.float32), np.int64(1))])
    assert d.verdict is Verdict.SUBSTITUTE
    [d] = guard.check([CheckInput("toy", np.array([7.0, 36.5, -2.0], np.float32), np.int64(1))])
    assert d.verdict is Verdict.HALT and any("not a whole number" in r for r in d.reasons)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"fallback": {"monitor": "nope"}},
            "names 'nope', which is not one of the agent's monitors (shield)",
        ),
        ({"action": {"type": "box", "shape": [1], "low": 0, "high": 1}}, "needs a discrete action space"),
        ({"observation": {"shape": [2], "dtype": "int64"}}, "say which one holds the state index"),
        ({"action": {"type": "discrete", "n": 3}}, "has 4 actions; the agent's action space has n=3"),
        ({"monitor": {"constraints": {"x": "obs[0] < 1.0"}}}, "constraints only apply to model kind"),
    ],
)
def test_config_errors_say_what_to_fix(tmp_path, change: dict, message: str) -> None:
    cliffwalking_model().save(tmp_path / "cw.npz")
    with pytest.raises(ConfigError) as err:
        Guard(loaded([shield_agent("cw.npz", **change)], base_dir=tmp_path)).load()
    assert message in str(err.value)


def test_shield_build_caches_and_load_uses_the_cache(tmp_path, capsys, caplog) -> None:
    shutil.copy(EXAMPLES / "cliffwalking" / "interlock.yaml", tmp_path / "interlock.yaml")
    cliffwalking_model().save(tmp_path / "cliffwalking.npz")
    assert cli_main(["shield", "build", str(tmp_path / "interlock.yaml"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cliffwalking/shield" in out and "winning 38" in out
    assert (tmp_path / "cliffwalking.shield.npz").is_file()
    clear_memo()
    guard = Guard(load_config(tmp_path / "interlock.yaml")).load()
    assert guard.agents[0].monitors[1].loaded_from == "cache"
    assert cli_main(["shield", "build", str(tmp_path / "interlock.yaml")]) == 0
    assert "up to date" in capsys.readouterr().out
    # A changed model makes the cache stale: loading solves again and says how to refresh.
    cliffwalking_model(is_slippery=True).save(tmp_path / "cliffwalking.npz")
    clear_memo()
    with caplog.at_level(logging.WARNING):
        guard = Guard(load_config(tmp_path / "interlock.yaml")).load()
    assert guard.agents[0].monitors[1].loaded_from == "solved"
    assert "interlock shield build" in caplog.text


def test_shield_build_without_tabular_monitors(tmp_path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("agents:\n  - id: a\n    observation: {shape: [1]}\n    action: {type: discrete, n: 2}\n")
    assert cli_main(["shield", "build", str(cfg)]) == 1
    assert "no reachability monitor with a tabular model" in capsys.readouterr().err
    assert cli_main(["shield", "build", str(cfg), "--agent", "zzz"]) == 2


def test_random_agent_through_the_wrapper_and_a_real_server_never_falls() -> None:
    """End to end: gRPC server on loopback, InterlockWrapper, int64 scalar observations."""
    from interlock import InterlockWrapper
    from interlock.server.background import background_server

    with background_server(load_config(EXAMPLES / "cliffwalking" / "interlock.yaml")) as srv:
        env = InterlockWrapper(
            gym.make("CliffWalking-v1", max_episode_steps=200),
            f"127.0.0.1:{srv.port}",
            agent_id="cliffwalking",
        )
        rng = np.random.default_rng(3)
        env.reset(seed=3)
        falls = 0
        for _ in range(600):
            _, reward, term, trunc, info = env.step(int(rng.integers(4)))
            falls += reward <= -100
            assert info["interlock"]["verdict"] in ("ALLOW", "SUBSTITUTE")
            if term or trunc:
                env.reset()
        env.close()
    assert falls == 0
    assert env.verdict_counts.get("SUBSTITUTE", 0) > 0


def test_shield_fallback_reads_scores_from_an_onnx_model(tmp_path) -> None:
    """The agent's Q-network in ONNX (here a lookup table: state index int64 [N] -> [N, 4])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    frozenlake_model("4x4", is_slippery=False).save(tmp_path / "fl.npz")
    q = np.zeros((16, 4), np.float32)
    q[4] = [0.1, 0.5, 0.9, 0.3]  # prefers right (2, into the hole), then down (1)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["Q", "obs"], ["q"], axis=0)], "q_table",
        [helper.make_tensor_value_info("obs", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(q, "Q")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "q.onnx"))
    guard = Guard(loaded([shield_agent("fl.npz", fallback={"scores": "q.onnx"})], base_dir=tmp_path)).load()
    [d] = guard.check([CheckInput("toy", np.int64(4), np.int64(2))])
    assert d.verdict is Verdict.SUBSTITUTE and int(d.action) == 1
    with pytest.raises(ConfigError, match=r"must be a \.npy table or an \.onnx model"):
        Guard(loaded([shield_agent("fl.npz", fallback={"scores": "q.csv"})], base_dir=tmp_path)).load()
