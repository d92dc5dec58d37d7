"""Recoverability checks over ONNX dynamics: rollouts against a numpy reference, fallbacks, CEL batching."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from interlock.engine import Guard
from interlock.errors import ConfigError
from interlock.reachability.constraints import BatchedCondition
from interlock.reachability.onnx_build import linear_logits, mlp_ensemble, save
from interlock.types import CheckInput, Verdict
from tests.support.fixtures import loaded

DT = 0.1
WALL = 1.0
H = 25


# ---------------------------------------------------------------------------- a double integrator in ONNX
# State [position, velocity]; discrete action 0 brakes (accel -a), 1 accelerates (+a). Member k has
# acceleration ACCELS[k]: member 1 has weaker brakes and motor, so the members disagree.
ACCELS = (1.0, 0.6)


def integrator(path: Path, accels=ACCELS, per_member: bool = False) -> Path:
    K = len(accels)
    W = np.zeros((K, 4, 2), np.float32)  # inputs [p, v, brake, accel] -> [dp, dv]
    for k, acc in enumerate(accels):
        W[k, 1, 0] = DT
        W[k, 2, 1], W[k, 3, 1] = -DT * acc, DT * acc
    return save(
        mlp_ensemble([W], [np.zeros((K, 2), np.float32)], obs_dim=2, n_actions=2, per_member=per_member), path
    )


def braking_policy(path: Path) -> Path:
    """Brakes while moving forward: logits [v, -v] -> argmax 0 (brake) when v > 0."""
    return save(linear_logits(np.array([[0.0, 0.0], [1.0, -1.0]])), path)


def reference(p: float, v: float, action: int, acc: float) -> tuple[bool, int]:
    """Plain-Python rollout: (failed, margin) with the same rules as the monitor."""

    def f(p, v, a):
        return p + DT * v, v + DT * acc * (1 if a == 1 else -1)

    p, v = f(p, v, action)
    for t in range(1, H + 1):
        if not p < WALL:
            return True, t - 1
        if abs(v) < 0.15:
            return False, H
        if t == H:
            break
        p, v = f(p, v, 0 if v > 0 else 1)
    return True, H  # never re-entered the safe set


def agent(tmp_path: Path, fallback: str = "backup", **monitor) -> dict:
    return {
        "id": "cart",
        "observation": {"shape": [2]},
        "action": {"type": "discrete", "n": 2},
        "monitors": [
            {
                "kind": "reachability",
                "name": "reach",
                "model": {"kind": "dynamics_ensemble", "model": "dyn.onnx"},
                "backup_policy": {"model": "brake.onnx", "output": "logits"},
                "constraints": {"wall": f"obs[0] < {WALL}"},
                "safe_set": "math.abs(obs[1]) < 0.15",
                "horizon": H,
                **monitor,
            }
        ],
        "policy": {
            "rules": [
                {
                    "name": "irreversible",
                    "when": "tripped.reach.unsafe",
                    "verdict": "substitute",
                    "fallback": fallback,
                }
            ]
        },
        "fallbacks": {
            "backup": {"kind": "backup", "monitor": "reach"},
            "recover": {"kind": "recover", "monitor": "reach"},
        },
    }


@pytest.fixture
def models(tmp_path):
    integrator(tmp_path / "dyn.onnx")
    braking_policy(tmp_path / "brake.onnx")
    return tmp_path


def signals(d) -> dict[str, float]:
    return {name: value for name, value, _, _ in d.signals}


def test_rollouts_match_a_plain_python_reference(models) -> None:
    guard = Guard(loaded([agent(models)], base_dir=models)).load()
    rng = np.random.default_rng(0)
    states = np.column_stack([rng.uniform(-0.5, 0.95, 60), rng.uniform(-0.3, 1.2, 60)]).astype(np.float32)
    actions = rng.integers(0, 2, 60)
    decisions = guard.check(
        [CheckInput("cart", s, np.int64(a)) for s, a in zip(states, actions, strict=True)]
    )
    kinds = set()
    for s, a, d in zip(states, actions, decisions, strict=True):
        ref = [reference(float(s[0]), float(s[1]), int(a), acc) for acc in ACCELS]
        share = np.mean([failed for failed, _ in ref])
        sig = signals(d)
        assert sig["reach.irreversibility"] == pytest.approx(share), (s, a)
        assert sig["reach.margin"] == min(m for _, m in ref), (s, a)
        assert (d.verdict is Verdict.SUBSTITUTE) == (share > 0)
        kinds.add(share)
    assert kinds == {0.0, 0.5, 1.0}  # the sample covers agreement and disagreement


def test_per_member_and_shared_layouts_agree(models, tmp_path) -> None:
    shared = Guard(loaded([agent(models)], base_dir=models)).load()
    integrator(models / "dyn.onnx", per_member=True)
    per_member = Guard(loaded([agent(models)], base_dir=models)).load()
    assert per_member.agents[0].monitors[0].engine.dynamics.per_member
    rng = np.random.default_rng(1)
    items = [
        CheckInput(
            "cart", np.array([rng.uniform(0, 0.9), rng.uniform(0, 1)], np.float32), np.int64(rng.integers(2))
        )
        for _ in range(20)
    ]
    for a, b in zip(shared.check(items), per_member.check(items), strict=True):
        assert signals(a) == signals(b)


def test_single_model_is_one_member(models) -> None:
    integrator(models / "dyn.onnx", accels=(1.0,))
    m = onnx.load(str(models / "dyn.onnx"))  # make the output [N, 2] instead of [1, N, 2]
    out = m.graph.output[0]
    m.graph.node[-1].output[0] = "next_obs_k"
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), "axes0"))
    m.graph.node.append(helper.make_node("Squeeze", ["next_obs_k", "axes0"], [out.name]))
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info(out.name, onnx.TensorProto.FLOAT, ["batch", 2]))
    onnx.save(m, str(models / "dyn.onnx"))
    guard = Guard(loaded([agent(models)], base_dir=models)).load()
    assert guard.agents[0].monitors[0].engine.dynamics.members == 1
    [d] = guard.check([CheckInput("cart", np.array([0.8, 0.9], np.float32), np.int64(1))])
    assert signals(d)["reach.irreversibility"] == float(reference(0.8, 0.9, 1, 1.0)[0])


def test_backup_and_recover_fallbacks(models) -> None:
    backup = Guard(loaded([agent(models, "backup")], base_dir=models)).load()
    recover = Guard(loaded([agent(models, "recover")], base_dir=models)).load()
    state = np.array([0.55, 0.75], np.float32)  # accelerating fails under both members; braking saves one
    assert reference(0.55, 0.75, 1, 1.0)[0] and reference(0.55, 0.75, 1, 0.6)[0]
    for guard in (backup, recover):
        [d] = guard.check([CheckInput("cart", state, np.int64(1))])
        assert d.verdict is Verdict.SUBSTITUTE and int(d.action) == 0


def test_recover_picks_the_best_sampled_box_action(tmp_path) -> None:
    # Box action u in [-1, 1] (acceleration); the backup brakes as hard as it can.
    W = np.zeros((2, 3, 2), np.float32)
    for k, acc in enumerate(ACCELS):
        W[k, 1, 0], W[k, 2, 1] = DT, DT * acc
    save(mlp_ensemble([W], [np.zeros((2, 2), np.float32)], obs_dim=2, act_dim=1), tmp_path / "dyn.onnx")
    save(linear_logits(np.array([[0.0], [-100.0]])), tmp_path / "brake.onnx")  # u = clip(-100 v)
    cfg = agent(tmp_path, "recover")
    cfg["action"] = {"type": "box", "shape": [1], "low": -1.0, "high": 1.0}
    cfg["monitors"][0]["backup_policy"] = {"model": "brake.onnx", "output": "action"}
    cfg["fallbacks"] = {"recover": {"kind": "recover", "monitor": "reach", "candidates": 8}}
    guard = Guard(loaded([cfg], base_dir=tmp_path)).load()
    [d] = guard.check([CheckInput("cart", np.array([0.45, 0.75], np.float32), np.array([1.0], np.float32))])
    assert d.verdict is Verdict.SUBSTITUTE
    [check] = guard.check([CheckInput("cart", np.array([0.45, 0.75], np.float32), d.action)])
    assert signals(check)["reach.irreversibility"] <= signals(d)["reach.irreversibility"]
    assert float(d.action[0]) < 0  # it brakes


@pytest.mark.parametrize(
    "expr",
    [
        "math.abs(obs[1]) < 0.2",
        "obs[0] + 0.5 * obs[1] <= 1.0 && obs[1] > -2.0",
        "(obs[0] < 0.0 || obs[1] >= 1e-3) && -obs[0] / 2.0 > -1.0",
        "math.abs(obs[0] - 2.0 * obs[1]) < 3.0",
    ],
)
def test_simple_conditions_are_vectorised_and_agree_with_cel(expr: str) -> None:
    cond = BatchedCondition(expr, 2, "test")
    assert cond.vectorized is not None
    x = np.random.default_rng(2).normal(scale=2.0, size=(500, 2))
    np.testing.assert_array_equal(cond(x), cond._rows(x))


def test_other_conditions_fall_back_to_cel_row_by_row() -> None:
    cond = BatchedCondition("obs.all(v, v < 1.0) && obs.size() == 2", 2, "test")
    assert cond.vectorized is None
    assert cond(np.array([[0.0, 0.5], [0.0, 1.5]])).tolist() == [True, False]
    # NaN and out-of-range reads count as broken.
    assert BatchedCondition("obs[0] < 1.0", 2, "t")(np.array([[np.nan, 0.0]])).tolist() == [False]
    with pytest.raises(ConfigError, match="reads obs\\[5\\], but observations have 2 elements"):
        BatchedCondition("obs[5] < 1.0", 2, "monitors[0].constraints.x")
    with pytest.raises(ConfigError, match="must be a condition"):
        BatchedCondition("obs[0] + 1.0", 2, "t")
    with pytest.raises(ConfigError, match="does not compile"):
        BatchedCondition("action == 1", 2, "t")  # rollout conditions see only obs


def test_config_and_model_errors(models) -> None:
    bad = agent(models)
    del bad["monitors"][0]["backup_policy"]
    with pytest.raises(ConfigError, match="needs backup_policy"):
        loaded([bad], base_dir=models)
    integrator(models / "dyn.onnx")
    cfg = agent(models)
    cfg["observation"] = {"shape": [3]}
    cfg["monitors"][0]["constraints"] = {"wall": "obs[0] < 1.0"}
    with pytest.raises(ConfigError, match=r"does not run on observations of obs_dim 3"):
        Guard(loaded([cfg], base_dir=models)).load()
    cfg = agent(models)
    cfg["fallbacks"]["backup"]["monitor"] = "nope"
    with pytest.raises(ConfigError, match="not one of the agent's monitors"):
        Guard(loaded([cfg], base_dir=models))


# ---------------------------------------------------------------------------- the CartPole example

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cartpole_recovery"


def test_cartpole_example_prevents_falls_under_a_shift() -> None:
    """The committed ensemble and backup on the real CartPole-v1 with shifted physics (short, bounded)."""
    import gymnasium as gym

    sys.path.insert(0, str(EXAMPLE))
    try:
        from cartpole_physics import NOMINAL, SHIFTED
    finally:
        sys.path.remove(str(EXAMPLE))
    import onnxruntime as ort

    guard = Guard.from_file(str(EXAMPLE / "interlock.yaml")).load()
    policy = ort.InferenceSession(str(EXAMPLE / "agent.onnx"), providers=["CPUExecutionProvider"])
    results = {}
    for guarded in (False, True):
        falls = 0
        for seed, physics in enumerate([NOMINAL, SHIFTED] * 2):
            env = gym.make("CartPole-v1", max_episode_steps=300)
            physics.apply(env)
            rng = np.random.default_rng(seed)
            obs, _ = env.reset(seed=seed)
            while True:
                action = int(policy.run(None, {"obs": obs[None].astype(np.float32)})[0].argmax())
                if rng.random() < 0.3:
                    action = int(rng.integers(2))
                if guarded:
                    [d] = guard.check(
                        [CheckInput("cartpole-recovery", obs.astype(np.float32), np.int64(action))]
                    )
                    action = int(d.action)
                obs, _, term, trunc, _ = env.step(action)
                if term or trunc:
                    falls += term
                    break
        results[guarded] = falls
    assert results[True] == 0 and results[False] >= 2, results


def test_the_ensemble_compilers_dynamics_model_plugs_in(tmp_path) -> None:
    """examples/cartpole/dynamics_ensemble.onnx (made by `interlock ensemble train --kind dynamics`):
    obs [B, 4], action [B] int64 -> delta [5, B, 4]; read with `predicts: delta`."""
    import shutil

    cartpole = Path(__file__).resolve().parents[1] / "examples" / "cartpole"
    for name in ("dynamics_ensemble.onnx", "backup_policy.onnx"):
        shutil.copy(cartpole / name, tmp_path / name)
    cfg = {
        "id": "cartpole", "observation": {"shape": [4]}, "action": {"type": "discrete", "n": 2},
        "monitors": [{
            "kind": "reachability", "name": "reach",
            "model": {"kind": "dynamics_ensemble", "model": "dynamics_ensemble.onnx", "predicts": "delta"},
            "backup_policy": {"model": "backup_policy.onnx", "output": "logits"},
            "constraints": {"pole": "math.abs(obs[2]) < 0.18", "track": "math.abs(obs[0]) < 2.2"},
            "safe_set": "math.abs(obs[2]) < 0.05 && math.abs(obs[3]) < 0.5",
            "horizon": 30,
        }],
        "policy": {"rules": [{"name": "irreversible", "when": "tripped.reach.unsafe", "verdict": "substitute",
                              "fallback": "backup"}]},
        "fallbacks": {"backup": {"kind": "backup", "monitor": "reach"}},
    }
    guard = Guard(loaded([cfg], base_dir=tmp_path)).load()
    assert guard.agents[0].monitors[0].engine.dynamics.members == 5
    upright, tipping = np.zeros(4, np.float32), np.array([0.0, 0.0, 0.15, 1.0], np.float32)
    [ok, bad] = guard.check([CheckInput("cartpole", upright, np.int64(1)),
                             CheckInput("cartpole", tipping, np.int64(0))])
    assert ok.verdict is Verdict.ALLOW and signals(ok)["reach.irreversibility"] == 0.0
    assert bad.verdict is Verdict.SUBSTITUTE and signals(bad)["reach.irreversibility"] == 1.0
