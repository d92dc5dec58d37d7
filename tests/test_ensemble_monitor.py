"""The `uncertainty` monitor and the `robust` and `quantilizer` fallbacks on real fused ONNX ensembles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from interlock.engine import Guard
from interlock.ensembles.compile import compile_ensemble
from interlock.ensembles.scores import softmax
from interlock.errors import ConfigError
from interlock.fallbacks.quantilizer import quantilize
from interlock.types import CheckInput, Verdict
from tests.support.ensembles import mlp_onnx, q_ensemble_members, random_mlp, run
from tests.support.fixtures import loaded

OBS = np.random.default_rng(42).standard_normal((32, 4)).astype(np.float32)


@pytest.fixture
def q_ens(tmp_path):
    compile_ensemble(q_ensemble_members(tmp_path, k=4), tmp_path / "q_ens.onnx")
    return tmp_path / "q_ens.onnx"


def agent(monitors, fallbacks=None, rules=None, n=2, **kw):
    return {
        "id": "cartpole",
        "observation": {"shape": [4]},
        "action": {"type": "discrete", "n": n},
        "monitors": monitors,
        "policy": {"rules": rules or []},
        "fallbacks": fallbacks or {},
        **kw,
    }


def guard(tmp_path, *agents) -> Guard:
    return Guard(loaded(list(agents), base_dir=tmp_path)).load()


def test_q_scores_match_numpy_on_the_members(tmp_path, q_ens):
    g = guard(
        tmp_path,
        agent(
            [
                {
                    "kind": "uncertainty",
                    "model": "q_ens.onnx",
                    "ensemble": "q",
                    "thresholds": {"q_std": 0.3, "q_std_ratio": 1.0},
                }
            ]
        ),
    )
    actions = np.arange(len(OBS)) % 2
    decisions = g.check([CheckInput("cartpole", o, np.int64(a)) for o, a in zip(OBS, actions, strict=True)])
    (q,) = run(q_ens, {"obs": OBS})  # [K, batch, 2]
    want_std = q[:, np.arange(len(OBS)), actions].std(axis=0)
    mean = q.mean(axis=0)
    want_ratio = want_std / (mean.max(axis=1) - mean.min(axis=1))
    got = {name: [] for name in ("uncertainty.q_std", "uncertainty.q_std_ratio")}
    for d in decisions:
        for name, value, threshold, tripped in d.signals:
            got[name].append(value)
            assert tripped == (value > threshold)
    np.testing.assert_allclose(got["uncertainty.q_std"], want_std, rtol=1e-5)
    np.testing.assert_allclose(got["uncertainty.q_std_ratio"], want_ratio, rtol=1e-4)


def test_robust_fallback_takes_the_maximin_action(tmp_path, q_ens):
    fallbacks = {
        "worst_case": {"kind": "robust", "model": "q_ens.onnx", "bound": "min"},
        "lcb": {"kind": "robust", "model": "q_ens.onnx", "bound": "mean_minus_std", "k": 2.0},
    }
    rules = [{"name": "always", "when": "true", "verdict": "substitute", "fallback": "worst_case"}]
    g = guard(
        tmp_path,
        agent([], fallbacks, rules, id="a"),
        agent([], fallbacks, [{**rules[0], "fallback": "lcb"}], id="b"),
    )
    (q,) = run(q_ens, {"obs": OBS})
    got_min = [int(d.action) for d in g.check([CheckInput("a", o, np.int64(0)) for o in OBS])]
    got_lcb = [int(d.action) for d in g.check([CheckInput("b", o, np.int64(0)) for o in OBS])]
    assert got_min == q.min(axis=0).argmax(axis=1).tolist()
    assert got_lcb == (q.mean(axis=0) - 2.0 * q.std(axis=0)).argmax(axis=1).tolist()


def test_quantilize_distribution():
    ref = np.array([[0.1, 0.2, 0.3, 0.4]])
    values = np.array([[4.0, 3.0, 2.0, 1.0]])  # action 0 best
    np.testing.assert_allclose(quantilize(ref, values, 1.0), ref)
    np.testing.assert_allclose(quantilize(ref, values, 0.1), [[1.0, 0, 0, 0]])
    # top 0.2 of the mass: all of action 0 (0.1) and half of action 1 (0.1 of its 0.2)
    np.testing.assert_allclose(quantilize(ref, values, 0.2), [[0.5, 0.5, 0, 0]])
    # an action the reference never takes is never chosen, however good
    np.testing.assert_allclose(
        quantilize(np.array([[0.0, 0.5, 0.5]]), np.array([[9.0, 1.0, 0.0]]), 0.3), [[0, 1.0, 0]]
    )


def test_quantilizer_fallback_samples_reproducibly_from_the_top_quantile(tmp_path, q_ens):
    rng = np.random.default_rng(7)
    mlp_onnx(tmp_path / "ref.onnx", random_mlp(rng, [4, 8, 2]), output_name="logits")
    fb = {
        "careful": {
            "kind": "quantilizer",
            "model": "q_ens.onnx",
            "reference": "ref.onnx",
            "q": 0.6,
            "seed": 3,
        }
    }
    rules = [{"name": "always", "when": "true", "verdict": "substitute", "fallback": "careful"}]
    obs = np.repeat(OBS[:2], 400, axis=0)
    items = [CheckInput("cartpole", o, np.int64(0)) for o in obs]
    first = [int(d.action) for d in guard(tmp_path, agent([], fb, rules)).check(items)]
    second = [int(d.action) for d in guard(tmp_path, agent([], fb, rules)).check(items)]
    assert first == second  # same seed, same requests: same substitutes
    (q,) = run(q_ens, {"obs": OBS[:2]})
    (logits,) = run(tmp_path / "ref.onnx", {"obs": OBS[:2]})
    want = quantilize(softmax(logits), q.mean(axis=0), 0.6)
    for row in range(2):
        freq = np.mean(np.asarray(first[row * 400 : (row + 1) * 400]) == 1)
        assert abs(freq - want[row, 1]) < 0.08  # 400 draws: std <= 0.025


def test_policy_ensemble_mutual_information(tmp_path):
    rng = np.random.default_rng(5)
    same = random_mlp(rng, [4, 8, 3])
    identical = [mlp_onnx(tmp_path / f"same{i}.onnx", same, output_name="logits") for i in range(3)]
    different = [
        mlp_onnx(tmp_path / f"diff{i}.onnx", random_mlp(rng, [4, 8, 3]), output_name="logits")
        for i in range(3)
    ]
    compile_ensemble(identical, tmp_path / "same.onnx")
    compile_ensemble(different, tmp_path / "diff.onnx")
    mon = {
        "kind": "uncertainty",
        "ensemble": "policy",
        "thresholds": {"mutual_info": 0.05, "disagreement": 0.5},
    }
    g = guard(
        tmp_path,
        agent(
            [{**mon, "model": "same.onnx", "name": "same"}, {**mon, "model": "diff.onnx", "name": "diff"}],
            n=3,
        ),
    )
    ds = g.check([CheckInput("cartpole", o, np.int64(1)) for o in OBS])
    sig = {
        name: np.array([dict((n, v) for n, v, _, _ in d.signals)[name] for d in ds])
        for name, *_ in ds[0].signals
    }
    np.testing.assert_allclose(sig["same.mutual_info"], 0.0, atol=1e-6)
    assert set(np.unique(sig["same.disagreement"])) <= {0.0, 1.0}
    assert sig["diff.mutual_info"].mean() > 0.01
    (logits,) = run(tmp_path / "diff.onnx", {"obs": OBS})
    p = softmax(logits)
    h = lambda x: -(x * np.log(x)).sum(-1)  # noqa: E731
    np.testing.assert_allclose(sig["diff.mutual_info"], h(p.mean(0)) - h(p).mean(0), atol=1e-6)
    np.testing.assert_allclose(sig["diff.disagreement"], (p.argmax(-1) != 1).mean(0))


def test_dynamics_disagreement_is_normalised_per_dimension(tmp_path):
    from tests.support.ensembles import dynamics_members

    paths = dynamics_members(tmp_path, k=3)
    compile_ensemble(paths, tmp_path / "dyn.onnx")
    scale = [1.0, 2.0, 4.0, 8.0]
    mon = {
        "kind": "uncertainty",
        "name": "novelty",
        "model": "dyn.onnx",
        "ensemble": "dynamics",
        "state_scale": scale,
        "thresholds": {"disagreement": 0.1, "disagreement_max": 0.2},
    }
    g = guard(tmp_path, agent([mon]))
    actions = np.arange(len(OBS)) % 2
    ds = g.check([CheckInput("cartpole", o, np.int64(a)) for o, a in zip(OBS, actions, strict=True)])
    (pred,) = run(tmp_path / "dyn.onnx", {"obs": OBS, "action": actions.astype(np.int64)})
    norm = pred.std(axis=0) / np.array(scale)
    got = np.array([[v for _, v, _, _ in d.signals] for d in ds])
    np.testing.assert_allclose(got[:, 0], norm.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(got[:, 1], norm.max(axis=1), rtol=1e-5)


def test_config_errors_are_specific(tmp_path, q_ens):
    q_mon = {"kind": "uncertainty", "model": "q_ens.onnx", "ensemble": "q"}
    with pytest.raises(
        ConfigError, match=r"no threshold for signal\(s\) q_std, q_std_ratio.*interlock calibrate"
    ):
        guard(tmp_path, agent([q_mon]))
    with pytest.raises(ConfigError, match="thresholds_file .* does not exist.*interlock calibrate"):
        guard(tmp_path, agent([{**q_mon, "thresholds_file": "missing.json"}]))
    with pytest.raises(ConfigError, match="names q_sdt, which a q ensemble does not produce"):
        guard(tmp_path, agent([{**q_mon, "thresholds": {"q_sdt": 1.0}}]))
    with pytest.raises(ConfigError, match="outputs 2 values per member, but the action space has 3"):
        guard(tmp_path, agent([{**q_mon, "thresholds": {"q_std": 1, "q_std_ratio": 1}}], n=3))
    single = mlp_onnx(tmp_path / "single.onnx", random_mlp(np.random.default_rng(0), [4, 4, 2]))
    with pytest.raises(ConfigError, match=r"not \[members, batch, ...\].*interlock ensemble compile"):
        guard(
            tmp_path, agent([{**q_mon, "model": single.name, "thresholds": {"q_std": 1, "q_std_ratio": 1}}])
        )
    box = {
        "id": "arm",
        "observation": {"shape": [4]},
        "action": {"type": "box", "shape": [1], "low": -1, "high": 1},
        "monitors": [{**q_mon, "thresholds": {"q_std": 1, "q_std_ratio": 1}}],
    }
    with pytest.raises(ConfigError, match="discrete actions.*box"):
        guard(tmp_path, box)


def test_stale_thresholds_file_is_refused(tmp_path, q_ens):
    (tmp_path / "t.json").write_text(
        json.dumps(
            {
                "format": "interlock-thresholds/1",
                "agent": "cartpole",
                "false_alarm_rate": 0.01,
                "monitors": {
                    "uncertainty": {
                        "model_sha256": "0" * 64,
                        "thresholds": {"q_std": 1.0, "q_std_ratio": 2.0},
                    }
                },
            }
        )
    )
    with pytest.raises(ConfigError, match="calibrated for another version"):
        guard(
            tmp_path,
            agent(
                [{"kind": "uncertainty", "model": "q_ens.onnx", "ensemble": "q", "thresholds_file": "t.json"}]
            ),
        )


def test_a_failing_ensemble_fails_closed(tmp_path, q_ens):
    """An ensemble that cannot run on the request (wrong width) gives the fail-safe fallback, never ALLOW."""
    mon = {
        "kind": "uncertainty",
        "model": "q_ens.onnx",
        "ensemble": "q",
        "thresholds": {"q_std": 9, "q_std_ratio": 9},
    }
    cfg = agent([mon], {"noop": {"kind": "constant", "action": 0}}, fail_safe="noop")
    cfg["observation"] = {"shape": [5]}  # the ensemble takes 4 values
    (d,) = guard(tmp_path, cfg).check([CheckInput("cartpole", np.zeros(5, np.float32), np.int64(1))])
    assert (
        d.verdict is Verdict.SUBSTITUTE
        and d.fallback == "noop"
        and "monitor 'uncertainty' failed" in d.reasons[0]
    )
