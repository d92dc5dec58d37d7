"""The vectorized fast path for simple CEL conditions gives exactly CEL's answers, row for row."""

from __future__ import annotations

import numpy as np
import pytest

from interlock.config import PolicyConfig
from interlock.engine import Guard
from interlock.policies.cel import CelPredicate, make_env
from interlock.policies.decision import DecisionPolicy
from interlock.policies.vectorized import _probe_columns, compile_vectorized, probe_rows
from interlock.types import CheckInput
from tests.support.fixtures import discrete_agent, loaded

SIGNALS = ["u.q_std", "u.disagreement", "action_space.invalid", "limits.tilt"]

SUPPORTED = [
    "tripped.action_space.invalid",
    "signals.u.q_std > 0.6",
    "signals.u.q_std >= 0.6 && !tripped.limits.tilt",
    "tripped.limits.tilt || tripped.action_space.invalid || signals.u.disagreement > 0.99",
    "math.abs(obs[2]) < 0.1",
    "math.abs(obs[2] + 0.25 * obs[3]) < 0.12",
    "obs[0] / obs[1] > -1.5",
    "-obs[1] <= 2.0 && (obs[0] > 0.5 || obs[3] < -0.5)",
    "action == 1 && signals.u.q_std > 0.1",
    "action != 0",
    "step > 100 || obs[0] == obs[0]",
    "obs[1] != obs[1]",
    "tripped.limits.tilt == tripped.action_space.invalid",
    "true",
    "!(signals.u.q_std < 1e-3)",
]

UNSUPPORTED = [
    "labels['zone'] == 'a'",
    "obs[7] > 0.0",  # out of range for obs of size 4: CEL errors at run time, fail closed
    "signals.nope.x > 1.0",
    "action + 1 > 1",  # int arithmetic
    "size(obs) > 2",
    "agent_id.startsWith('a')",
    "obs.exists(x, x > 1.0)",
    "math.greatest(obs[0], obs[1]) > 0.5",
]


@pytest.mark.parametrize("source", SUPPORTED)
def test_supported_conditions_match_cel_on_random_rows(source):
    env = make_env(True, with_signals=True)
    pred = CelPredicate(env, source, "test")
    fast = compile_vectorized(source, pred, 4, True, SIGNALS)
    assert fast is not None, source
    cols = _probe_columns(4, True, SIGNALS, 500, seed=123)
    got = fast(cols)
    want = [pred(row) for row in probe_rows(cols)]
    assert got.tolist() == want


@pytest.mark.parametrize("source", UNSUPPORTED)
def test_other_conditions_stay_on_cel(source):
    env = make_env(True, with_signals=True)
    try:
        pred = CelPredicate(env, source, "test")
    except Exception:
        pred = None  # does not even compile (e.g. unknown signal is fine for CEL maps)
    assert compile_vectorized(source, pred or (lambda row: True), 4, True, SIGNALS) is None


def test_a_condition_that_disagrees_with_cel_is_refused():
    lying = compile_vectorized("signals.u.q_std > 0.6", lambda row: True, 4, True, SIGNALS)
    assert lying is None


def test_decide_batch_equals_decide_row_by_row_with_mixed_rules():
    cfg = PolicyConfig.model_validate(
        {
            "rules": [
                {"name": "bad", "when": "tripped.action_space.invalid", "verdict": "halt"},
                {
                    "name": "lab",
                    "when": "'zone' in labels && labels['zone'] == 'red'",
                    "verdict": "escalate",
                    "fallback": "x",
                },
                {"name": "unc", "when": "signals.u.q_std > 0.5", "verdict": "substitute", "fallback": "x"},
                {"name": "idx", "when": "obs[9] > 0.0", "verdict": "halt"},  # errors: index out of range
            ],
            "default": "allow",
        }
    )
    policy = DecisionPolicy(cfg, True, SIGNALS, "test", obs_size=4)
    assert [r.vectorized is not None for r in policy.rules] == [True, False, True, False]
    cols = _probe_columns(4, True, SIGNALS, 300, seed=7)
    rows = probe_rows(cols)
    for i, row in enumerate(rows):
        row["labels"] = {"zone": "red"} if i % 5 == 0 else {}
    batch = policy.decide_batch(cols, lambda i: rows[i])
    single = [policy.decide(row) for row in rows]
    assert [(o.rule.name if o.rule else None, o.verdict, o.error) for o in batch] == [
        (o.rule.name if o.rule else None, o.verdict, o.error) for o in single
    ]
    assert {o.verdict for o in batch} >= {"halt", "escalate", "substitute", "error"}


def test_engine_batches_answer_like_single_requests(tmp_path):
    """Vectorized rules and constraints in the engine: a batch decides each row as a lone request would."""
    agent = discrete_agent()
    agent["monitors"][1]["constraints"]["not_fast"] = "obs[0] < 0.3 || labels['mode'] == 'test'"
    guard = Guard(loaded([agent], base_dir=tmp_path)).load()
    rng = np.random.default_rng(0)
    items = [
        CheckInput(
            "cartpole",
            rng.uniform(-0.5, 0.5, 4).astype(np.float32),
            np.int64(rng.integers(0, 3)),
            step=i,
            labels={"mode": "test"} if i % 4 == 0 else {"mode": "live"},
        )
        for i in range(64)
    ]
    together = guard.check(items)
    for d, it in zip(together, items, strict=True):
        [alone] = guard.check([it])
        assert (d.verdict, d.rule, d.signals) == (alone.verdict, alone.rule, alone.signals)
        np.testing.assert_array_equal(d.action, alone.action)
    assert {d.verdict.name for d in together} == {"ALLOW", "SUBSTITUTE"}
