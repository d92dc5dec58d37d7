"""The one-row path of the engine decides exactly as the general (batch) path.

``AgentRuntime.decide_columns`` answers a batch of one row through ``_decide_one``: the monitors
as usual, the policy's rules through their scalar forms, an ALLOW built directly; any other row
continues on the general path from the monitors' signals. Here both paths decide the same
random rows (valid and invalid actions, observations far outside the training data, NaN
observations where the config accepts them) on real configs with real ONNX models: the CartPole
example (two uncertainty ensembles, rules, a quantilizer and an ONNX backup policy) and the
``bench perf`` scenario (a Q ensemble and a reachability rollout through a dynamics ensemble),
in normal and shadow mode, with an escalation rule, with fail_mode closed and open, and with a
monitor or a rule that raises. The general path is forced by turning the one-row path off on a
second Guard of the same config.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from interlock.batch import Batch, SignalBatch
from interlock.config import LoadedConfig, parse_config
from interlock.engine import Guard
from interlock.errors import InvalidRequest
from interlock.monitors.base import Monitor
from interlock.policies.cel_numpy import Row, Scope, compile_numpy, probe_columns
from interlock.types import CheckInput, Decision, Verdict

ROOT = Path(__file__).resolve().parents[1]
CARTPOLE = ROOT / "examples" / "cartpole"
ROWS = 160


def _cartpole_raw() -> dict[str, Any]:
    raw = yaml.safe_load((CARTPOLE / "interlock.yaml").read_text())
    raw["onnx"]["providers"] = ["CPUExecutionProvider"]
    raw["server"]["metrics_port"] = None
    return raw


def _guards(raw: dict[str, Any], base: Path) -> tuple[Guard, Guard]:
    """The same config twice: the first Guard takes the one-row path, the second never does."""
    guards = []
    for _ in range(2):
        cfg = parse_config(copy.deepcopy(raw), source="test.yaml")
        guards.append(Guard(LoadedConfig(cfg, base, "test-1", "test.yaml")).load())
    fast, general = guards
    assert all(a._one_row for a in fast.agents), "the config should take the one-row path"
    for a in general.agents:
        a._one_row = False
    return fast, general


def _rows(obs_dim: int, n_actions: int, seed: int, nan: bool) -> tuple[np.ndarray, np.ndarray]:
    """``[ROWS, obs_dim]`` float32 observations at several scales (some NaN when ``nan``) and ``[ROWS]``
    int64 actions, about one in eight outside ``0 .. n_actions - 1``."""
    rng = np.random.default_rng(seed)
    scale = rng.choice([0.01, 0.05, 0.3, 1.0, 5.0], size=(ROWS, 1))
    obs = (rng.standard_normal((ROWS, obs_dim)) * scale).astype(np.float32)
    if nan:
        obs[rng.random(ROWS) < 0.1, rng.integers(0, obs_dim)] = np.nan
    actions = rng.integers(0, n_actions, ROWS)
    bad = rng.random(ROWS) < 0.12
    actions[bad] = rng.choice([-1, n_actions, 7], bad.sum())
    return obs, actions.astype(np.int64)


def _same(a: Decision, b: Decision) -> None:
    assert (a.verdict, a.rule, a.fallback, a.reasons, a.errors, a.escalation_id) == (
        b.verdict,
        b.rule,
        b.fallback,
        b.reasons,
        b.errors,
        b.escalation_id,
    )
    assert (a.agent_id, a.episode_id, a.step, a.labels, a.config_version, a.shadow_verdict) == (
        b.agent_id,
        b.episode_id,
        b.step,
        b.labels,
        b.config_version,
        b.shadow_verdict,
    )
    assert (a.action is None) == (b.action is None)
    if a.action is not None:
        assert np.array_equal(a.action, b.action) and a.action.dtype == b.action.dtype
    assert np.array_equal(a.proposed_action, b.proposed_action)
    assert [(s[0], s[3]) for s in a.signals] == [(s[0], s[3]) for s in b.signals]
    for got, want in ((1, 1), (2, 2)):
        x = np.array([s[got] for s in a.signals], np.float64)
        y = np.array([s[want] for s in b.signals], np.float64)
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=0, equal_nan=True)


def _compare(fast: Guard, general: Guard, agent: str, obs: np.ndarray, actions: np.ndarray) -> list[str]:
    """Decide every row alone on both guards, through CheckColumns' and Check's entry points;
    returns the verdict names."""
    verdicts = []
    for i in range(len(obs)):
        o, a = obs[i : i + 1], actions[i : i + 1]
        cols = [g.check_columns(agent, o, a, [f"ep-{i % 3}"], [i]) for g in (fast, general)]
        assert len(cols[0].unchecked) == len(cols[1].unchecked)
        if cols[0].unchecked:  # a NaN observation the config rejects: not decided on either path
            continue
        _same(cols[0].decision(0), cols[1].decision(0))
        np.testing.assert_array_equal(cols[0].values, cols[1].values)
        item = CheckInput(agent, obs[i], actions[i], f"ep-{i % 3}", i, {"row": str(i)})
        [d_fast], [d_general] = (g.check([item]) for g in (fast, general))
        _same(d_fast, d_general)
        verdicts.append(d_fast.verdict.name)
    return verdicts


def _cartpole_variant(name: str) -> dict[str, Any]:
    raw = _cartpole_raw()
    agent = raw["agents"][0]
    if name == "shadow":
        agent["shadow"] = True
    elif name == "escalation":
        agent["policy"]["rules"].insert(
            1,
            {
                "name": "fast_cart",
                "when": "math.abs(obs[1]) > 1.0 && !tripped.action_space.invalid",
                "verdict": "escalate",
                "fallback": "backup",
            },
        )
    elif name == "fail_open_nan":
        agent["fail_mode"] = "open"
        agent["observation"]["allow_nonfinite"] = True
    elif name == "default_halt":  # an explicit allow rule decides most rows; the rest halt
        agent["policy"]["rules"].append(
            {"name": "calm", "when": "signals.q_doubt.q_std_ratio < 3.0 && step >= 0", "verdict": "allow"}
        )
        agent["policy"]["default"] = "halt"
    return raw


@pytest.mark.parametrize("variant", ["plain", "shadow", "escalation", "fail_open_nan", "default_halt"])
def test_cartpole_one_row_path_decides_as_the_general_path(variant):
    fast, general = _guards(_cartpole_variant(variant), CARTPOLE)
    obs, actions = _rows(4, 2, seed=11, nan=variant == "fail_open_nan")
    verdicts = _compare(fast, general, "cartpole", obs, actions)
    assert len(verdicts) == ROWS
    assert "ALLOW" in verdicts and "SUBSTITUTE" in verdicts  # both kinds of rows were compared
    if variant == "escalation":
        assert "ESCALATE" in verdicts
    if variant == "default_halt":
        assert "HALT" in verdicts


def test_bench_scenario_one_row_path_decides_as_the_general_path(tmp_path):
    from interlock.bench.perf import scenario

    scn = scenario.build(tmp_path)
    raw = yaml.safe_load(scn.config_path.read_text())
    fast, general = _guards(raw, tmp_path)
    obs, actions = _rows(scenario.OBS_DIM, scenario.N_ACTIONS, seed=5, nan=False)
    obs[: ROWS // 2] = scn.observations[: ROWS // 2]  # half the benchmark's own rows
    verdicts = _compare(fast, general, scenario.AGENT_ID, obs, actions)
    assert {"ALLOW", "SUBSTITUTE"} <= set(verdicts)


class _Brittle(Monitor):
    """A monitor that raises on rows whose cart position is beyond 0.5 (a buggy plugin)."""

    @property
    def signal_names(self) -> list[str]:
        return ["ok"]

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        if (np.abs(batch.observations[:, 0]) > 0.5).any():
            raise RuntimeError("cannot handle this cart position")
        return {"ok": SignalBatch.above(np.zeros(len(batch)), 0.5)}


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
def test_a_monitor_raising_fails_the_row_as_on_the_general_path(fail_mode):
    raw = _cartpole_raw()
    raw["agents"][0]["fail_mode"] = fail_mode
    fast, general = _guards(raw, CARTPOLE)
    for g in (fast, general):
        rt = g.agent("cartpole")
        rt.monitors.append(_Brittle("brittle", rt.spaces, g.runtime))
    obs, actions = _rows(4, 2, seed=3, nan=False)
    verdicts = _compare(fast, general, "cartpole", obs, actions)
    failed = [fast.check([CheckInput("cartpole", o, a)])[0] for o, a in zip(obs, actions, strict=True)]
    hit = [d for d in failed if "monitor:brittle" in d.errors]
    assert hit and len(hit) < ROWS
    if fail_mode == "closed":  # the fail-safe (the backup policy) replaces the action
        assert {d.verdict.name for d in hit} == {"SUBSTITUTE"} and {d.fallback for d in hit} == {"backup"}
    else:
        assert any(d.verdict.name == "ALLOW" for d in hit)
    assert "ALLOW" in verdicts


def test_an_exception_in_the_one_row_policy_continues_on_the_general_path():
    fast, general = _guards(_cartpole_raw(), CARTPOLE)
    rt = fast.agent("cartpole")
    assert rt._scalar_rules is not None

    def broken(row: Row) -> bool:
        raise ZeroDivisionError("a scalar form that raises")

    rt._scalar_rules = [broken, *rt._scalar_rules[1:]]
    obs, actions = _rows(4, 2, seed=8, nan=False)
    verdicts = _compare(fast, general, "cartpole", obs, actions)
    assert "ALLOW" in verdicts


def test_a_rule_only_cel_can_evaluate_keeps_the_general_path():
    raw = _cartpole_raw()
    raw["agents"][0]["policy"]["rules"].append(
        {"name": "labelled", "when": "labels['mode'] == 'manual'", "verdict": "halt"}
    )
    cfg = parse_config(raw, source="test.yaml")
    guard = Guard(LoadedConfig(cfg, CARTPOLE, "test-1", "test.yaml")).load()
    assert guard.agent("cartpole")._one_row is False
    item = CheckInput("cartpole", np.zeros(4, np.float32), np.int64(0), labels={"mode": "manual"})
    [d] = guard.check([item])
    assert d.verdict.name == "HALT" and d.rule == "labelled"


@pytest.mark.parametrize(
    "source",
    [
        "math.abs(obs[2]) < 0.1 && obs[0] / obs[1] >= -2.0",
        "tripped.m.a || signals.m.b * 2.0 - obs[3] > 0.5",
        "!(action == 1) && step > 2.5",
        "-obs[0] <= 1e-3 || signals.m.b / 0.0 > 1.0",
    ],
)
def test_scalar_forms_give_the_numpy_answer_on_every_probe_row(source):
    scope = Scope(4, action=True, step=True, signals=("m.a", "m.b"))
    cond = compile_numpy(source, scope)
    assert cond is not None and cond.scalar is not None
    cols = probe_columns(scope, 4000, seed=len(source))
    want = cond(cols)
    got = np.array([bool(cond.scalar(cols.row(i))) for i in range(cols.n)])
    np.testing.assert_array_equal(got, want)
    assert 0 < want.sum() < cols.n


def _named_config(config: str, tmp_path: Path) -> tuple[dict, Path, str, tuple[int, int]]:
    """``cartpole`` (the example) or ``bench`` (bench perf's scenario, built in ``tmp_path``): the raw
    config, its base folder, the agent id and ``(obs_dim, n_actions)``."""
    if config == "cartpole":
        return _cartpole_raw(), CARTPOLE, "cartpole", (4, 2)
    from interlock.bench.perf import scenario

    scn = scenario.build(tmp_path)
    raw = yaml.safe_load(scn.config_path.read_text())
    return raw, tmp_path, scenario.AGENT_ID, (scenario.OBS_DIM, scenario.N_ACTIONS)


@pytest.mark.parametrize("config", ["cartpole", "bench"])
def test_a_row_alone_gets_the_signals_and_verdict_it_gets_inside_a_batch(config, tmp_path):
    """Monitors have one-row shortcuts too (scalar constraints, the Q-ensemble scores of one row,
    one comparison per threshold); a row decided alone matches the same row decided in a batch.

    ONNX Runtime's float32 kernels round differently by batch size (relative differences of about
    1e-6 in the ensembles' outputs, which a q_std_ratio over a tiny spread magnifies), so only the
    verdicts, rules and tripped flags are compared here; the shortcuts themselves are compared
    exactly below, on the same inputs."""
    raw, base, agent, dims = _named_config(config, tmp_path)
    guard, _ = _guards(raw, base)
    obs, actions = _rows(*dims, seed=21, nan=False)
    together = guard.check_columns(agent, obs, actions)
    verdicts = set()
    for i in range(ROWS):
        alone = guard.check_columns(agent, obs[i : i + 1], actions[i : i + 1])
        assert (alone.verdicts[0], alone.rules[0]) == (together.verdicts[i], together.rules[i])
        np.testing.assert_array_equal(alone.tripped[0], together.tripped[i])
        verdicts.add(int(alone.verdicts[0]))
    assert len(verdicts) >= 2


def test_one_row_shortcuts_of_the_monitors_equal_their_batch_forms_exactly(tmp_path):
    from interlock.bench.perf import scenario
    from interlock.ensembles.scores import q_scores

    scn = scenario.build(tmp_path)
    guard, _ = _guards(yaml.safe_load(scn.config_path.read_text()), tmp_path)
    rt = guard.agent(scenario.AGENT_ID)
    uncertainty, recover, limits = rt.monitors[0], rt.monitors[2], rt.monitors[3]
    obs, actions = _rows(scenario.OBS_DIM, scenario.N_ACTIONS, seed=4, nan=False)
    actions = np.clip(actions, 0, scenario.N_ACTIONS - 1)
    q = uncertainty.model.run(obs)  # [K, ROWS, n_actions], one real ensemble run
    q[:, ::11] = q[:, ::11, :1]  # some rows with every action worth the same (ratio inf)
    q[:, 5::13] = np.nan  # and some a broken model answers with NaN (tripped: fail closed)
    batch = q_scores(q, actions)
    batch_above = {k: SignalBatch.above(v, 1.0) for k, v in batch.items()}
    for i in range(ROWS):
        one = q_scores(q[:, i : i + 1], actions[i : i + 1])
        for key in ("q_std", "q_std_ratio"):
            np.testing.assert_array_equal(one[key], batch[key][i : i + 1])
            above = SignalBatch.above(one[key], 1.0)
            np.testing.assert_array_equal(above.tripped, batch_above[key].tripped[i : i + 1])
    assert np.isinf(batch["q_std_ratio"][::11]).all()
    states = obs.astype(np.float64)
    states[::7] = np.nan  # NaN states reach the constraints (they must fail them)
    for cond in [*recover.engine.constraints, recover.engine.safe_set]:
        assert cond.vectorized is not None and cond.vectorized.scalar is not None
        whole = cond(states)  # numpy form (more than SCALAR_ROWS states)
        parts = np.concatenate([cond(states[k : k + 5]) for k in range(0, ROWS, 5)])  # scalar form
        np.testing.assert_array_equal(parts, whole)
        assert not whole[::7].any()
    ok, safe = recover.engine.checks(states[:5])  # a rollout's states of one row, state by state
    assert safe is not None
    np.testing.assert_array_equal(ok, recover.engine._ok(states[:5]))
    np.testing.assert_array_equal(safe, recover.engine.safe_set(states[:5]))
    proposed = np.array([-3, -1, 0, 1, 2, 3, 4, 7, 2**40], np.int64)  # inside and outside the space
    for monitor, acts in ((limits, actions), (rt.monitors[1], np.resize(proposed, ROWS))):
        full = monitor.check(Batch(scenario.AGENT_ID, obs, acts, np.arange(ROWS)))
        for i in range(ROWS):
            one = monitor.check(Batch(scenario.AGENT_ID, obs[i : i + 1], acts[i : i + 1], np.array([i])))
            for key, sb in one.items():
                assert sb.threshold == full[key].threshold
                assert (sb.values[0], sb.tripped[0]) == (full[key].values[i], full[key].tripped[i])


class _BrittleRow(_Brittle):
    """As :class:`_Brittle`, with a ``check_row`` that raises on the same rows."""

    def check_row(self, batch: Batch) -> list[tuple[float, float, bool]] | None:
        if abs(float(batch.observations[0, 0])) > 0.5:
            raise RuntimeError("cannot handle this cart position")
        return [(0.0, 0.5, False)]


class _MiscountedRow(_Brittle):
    """A plugin whose ``check_row`` gives two signals for its one: a bug the engine must catch."""

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        return {"ok": SignalBatch.above(np.zeros(len(batch)), 0.5)}

    def check_row(self, batch: Batch) -> list[tuple[float, float, bool]] | None:
        return [(0.0, 0.5, False), (0.0, 0.5, False)]


def test_a_check_row_raising_fails_the_row_as_check_raising_does_on_the_general_path():
    fast, general = _guards(_cartpole_raw(), CARTPOLE)
    for g in (fast, general):
        rt = g.agent("cartpole")
        rt.monitors.append(_BrittleRow("brittle", rt.spaces, g.runtime))
    obs, actions = _rows(4, 2, seed=3, nan=False)
    verdicts = _compare(fast, general, "cartpole", obs, actions)
    failed = [fast.check([CheckInput("cartpole", o, a)])[0] for o, a in zip(obs, actions, strict=True)]
    hit = [d for d in failed if "monitor:brittle" in d.errors]
    assert hit and len(hit) < ROWS
    assert {d.verdict.name for d in hit} == {"SUBSTITUTE"} and {d.fallback for d in hit} == {"backup"}
    assert "ALLOW" in verdicts


def test_a_check_row_with_the_wrong_number_of_signals_fails_the_row_closed():
    fast, _ = _guards(_cartpole_raw(), CARTPOLE)
    rt = fast.agent("cartpole")
    rt.monitors.append(_MiscountedRow("miscounted", rt.spaces, fast.runtime))
    [d] = fast.check([CheckInput("cartpole", np.zeros(4, np.float32), np.int64(0))])
    assert d.errors == ["monitor:miscounted"]
    assert d.verdict.name == "SUBSTITUTE" and d.fallback == "backup"
    assert any("check_row gave 2 signals; expected 1" in r for r in d.reasons)


@pytest.mark.parametrize("config", ["cartpole", "bench"])
def test_check_row_of_every_monitor_equals_its_check_exactly(config, tmp_path):
    """Every built-in monitor with a ``check_row`` gives exactly its ``check`` of the one-row batch:
    the same value, threshold and tripped flag per signal, in ``signal_names`` order."""
    raw, base, agent, dims = _named_config(config, tmp_path)
    guard, _ = _guards(raw, base)
    rt = guard.agent(agent)
    obs, actions = _rows(*dims, seed=31, nan=False)
    with_row = set()
    for i in range(ROWS):
        batch = Batch(agent, obs[i : i + 1], actions[i : i + 1], np.array([i]), [f"ep-{i}"], [{}])
        for m in rt.monitors:
            if m.kind != "action_space" and rt.spaces.action.invalid(batch.actions)[0]:
                continue  # only action_space sees actions outside the space
            row = m.check_row(batch)
            if row is None:
                continue
            with_row.add(m.kind)
            out = m.check(batch)
            want = [
                (float(out[s].values[0]), out[s].threshold, bool(out[s].tripped[0]))
                for s in m.signal_names
            ]
            assert len(row) == len(want)
            for got, exp in zip(row, want, strict=True):
                assert type(got[0]) is float and type(got[2]) is bool
                assert got[1] == exp[1] and got[2] == exp[2]
                assert got[0] == exp[0] or (np.isnan(got[0]) and np.isnan(exp[0]))
    assert {"action_space", "rules", "uncertainty"} <= with_row
    if config == "bench":
        assert "reachability" in with_row


def test_row_scores_equal_the_numpy_scores_bit_for_bit():
    """``q_scores_row`` and ``dynamics_scores_row`` (Python floats) against the numpy scores of the
    same row alone and inside a batch: equal bits, for 2-7 members, 1-7 actions / dimensions, at
    scales from 1e-4 to 1e4 and near overflow, with NaN, inf and a zero or NaN scale."""
    from interlock.ensembles import scores

    rng = np.random.default_rng(5)
    by_floats = 0
    for t in range(3000):
        k, n = int(rng.integers(2, 8)), int(rng.integers(1, 8))
        scale = 1e300 if t % 50 == 0 else 10.0 ** rng.uniform(-4, 4)
        q = (rng.standard_normal((k, 1, n)) * scale).astype(np.float64 if t % 50 == 0 else np.float32)
        if t % 31 == 0:
            q[:, :, :] = q[:, :, :1]  # every action worth the same: ratio inf
        if t % 37 == 0:
            q[rng.integers(0, k), 0, rng.integers(0, n)] = (np.nan, np.inf, -np.inf)[t % 3]
        action = int(rng.integers(0, n))
        with np.errstate(all="ignore"):
            alone = scores._q_scores_one(np.asarray(q, np.float64), action)  # the numpy steps
            inside = scores.q_scores(np.concatenate([q, q * 1.5], axis=1), np.array([action, action]))
        row = scores.q_scores_row(q, action)
        if row is not None:
            by_floats += 1
            for value, key in zip(row, ("q_std", "q_std_ratio"), strict=True):
                np.testing.assert_array_equal(np.array([value]), alone[key])
                np.testing.assert_array_equal(value, inside[key][0])
        d = int(rng.integers(1, 8))
        pred = (rng.standard_normal((k, 1, d)) * min(scale, 1e4)).astype(np.float32)
        if t % 37 == 0:
            pred[rng.integers(0, k), 0, rng.integers(0, d)] = (np.nan, np.inf, -np.inf)[t % 3]
        state_scale = None if t % 3 == 0 else np.abs(rng.standard_normal(d)) + 0.01
        if state_scale is not None and t % 7 == 0:
            state_scale[0] = (0.0, np.nan)[t % 2]
        with np.errstate(all="ignore"):
            std = scores.member_std(np.asarray(pred, np.float64))
            if state_scale is not None:
                std = std / state_scale.reshape(1, -1)
            want = (np.add.reduce(std, 1) / d, np.maximum.reduce(std, 1))
            inside = scores.dynamics_scores(np.concatenate([pred, pred * 2], axis=1), state_scale)
        drow = scores.dynamics_scores_row(pred, state_scale)
        if drow is not None:
            by_floats += 1
            for value, exp, key in zip(drow, want, ("disagreement", "disagreement_max"), strict=True):
                np.testing.assert_array_equal(np.array([value]), exp)
                np.testing.assert_array_equal(value, inside[key][0])
    assert by_floats > 5000  # most rows take the float path; the rest are left to numpy
    eight = np.ones((8, 1, 3))
    assert scores.q_scores_row(eight, 0) is None  # 8 members: numpy's pairwise sum
    assert scores.dynamics_scores_row(eight, None) is None
    assert scores.q_scores_row(eight[:3], -1) is None and scores.q_scores_row(eight[:3], 3) is None


def test_a_non_finite_row_alone_is_rejected_as_check_rejects_it():
    """``validate_columns`` checks one small row's finiteness in Python: the same rows are rejected,
    with the message Check gives them (NaN, inf, and a float64 value that overflows float32)."""
    guard, _ = _guards(_cartpole_raw(), CARTPOLE)
    for bad in (np.nan, np.inf, -np.inf, 1e300):
        obs = np.array([[0.01, bad, 0.0, 0.0]], np.float64)
        cd = guard.check_columns("cartpole", obs, np.array([1], np.int64))
        assert list(cd.unchecked) == [0] and cd.verdicts[0] == int(Verdict.HALT)
        with pytest.raises(InvalidRequest) as check_error:
            guard.check([CheckInput("cartpole", obs[0], np.int64(1))])
        assert cd.unchecked[0].message.replace("observations[0]", "observation") == check_error.value.message
    fine = guard.check_columns("cartpole", np.array([[0.01, 1e30, 0.0, 0.0]]), np.array([1], np.int64))
    assert not fine.unchecked  # large but finite in float32


def test_failing_share_is_the_members_mean_bit_for_bit():
    from interlock.reachability.recoverability import RolloutResult

    rng = np.random.default_rng(2)
    for k in range(1, 12):
        failed = rng.random((k, 33)) < 0.4
        result = RolloutResult(failed=failed, margin=np.zeros((k, 33), np.int64))
        np.testing.assert_array_equal(result.failing_share, failed.mean(axis=0))
        assert result.failing_share.dtype == np.float64


class _Recorder(_Brittle):
    """Told what each decided row executes (``after_decide``), as episode-keeping monitors are."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.told: list[tuple[list, list]] = []

    def after_decide(self, batch: Batch, executed_actions: np.ndarray, valid: np.ndarray) -> None:
        self.told.append((np.asarray(executed_actions).tolist(), np.asarray(valid).tolist()))


def test_monitors_are_told_the_executed_action_as_on_the_general_path():
    fast, general = _guards(_cartpole_raw(), CARTPOLE)
    recorders = []
    for g in (fast, general):
        rt = g.agent("cartpole")
        rec = _Recorder("recorder", rt.spaces, g.runtime)
        rt.after_decide = [rec]
        recorders.append(rec)
    obs, actions = _rows(4, 2, seed=9, nan=False)
    verdicts = _compare(fast, general, "cartpole", obs, actions)
    assert {"ALLOW", "SUBSTITUTE"} <= set(verdicts)
    assert recorders[0].told == recorders[1].told
    assert len(recorders[0].told) == 2 * len(verdicts)  # CheckColumns and Check of every row
