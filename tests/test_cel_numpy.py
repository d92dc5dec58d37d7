"""One CEL-to-numpy compiler for rules and reachability constraints: scopes, and what the merge adds."""

from __future__ import annotations

import numpy as np
import pytest

from interlock.errors import ConfigError
from interlock.policies.cel import CelPredicate, make_env
from interlock.policies.cel_numpy import Columns, Scope, compile_checked, compile_numpy
from interlock.policies.vectorized import compile_vectorized
from interlock.reachability.constraints import BatchedCondition

# Forms the constraints' own parser did not compile (no ``!``, ``==``, ``!=``, ``true``/``false``, and
# ``math.abs`` only of arithmetic); the shared compiler does, and must still agree with CEL.
NEWLY_VECTORISED_CONSTRAINTS = [
    "!(obs[0] > 1.0)",
    "obs[0] != obs[0] || obs[1] < 0.5",  # a NaN test
    "obs[0] == 0.0 || true",
    "(obs[0] < 1.0) == (obs[1] < 1.0)",
    "(obs[0] < 1.0) != false && !(math.abs(obs[1]) >= 2.0)",
]


@pytest.mark.parametrize("expr", NEWLY_VECTORISED_CONSTRAINTS)
def test_constraints_newly_vectorised_agree_with_cel(expr: str) -> None:
    cond = BatchedCondition(expr, 2, "test")
    assert cond.vectorized is not None, expr
    rng = np.random.default_rng(5)
    x = rng.normal(scale=2.0, size=(400, 2))
    x[rng.random(x.shape) < 0.1] = np.nan
    x[:3] = [[0.0, 0.0], [np.inf, -np.inf], [1.0, 1.0]]
    got = cond(x)
    assert got.shape == (400,)
    np.testing.assert_array_equal(got, cond._rows(x))


def test_a_constant_constraint_answers_every_state() -> None:
    cond = BatchedCondition("true", 3, "test")
    assert cond.vectorized is not None
    assert cond(np.zeros((5, 3))).tolist() == [True] * 5


def test_out_of_range_read_in_a_newly_compiled_form_is_a_config_error() -> None:
    # The constraints' own parser stopped at "!" and left this to CEL, where every state errored (broken).
    with pytest.raises(ConfigError, match=r"safe_set: reads obs\[4\], but observations have 2 elements"):
        BatchedCondition("!(obs[4] < 1.0)", 2, "monitors[0].safe_set")


def test_scopes_decide_what_is_compiled() -> None:
    rules = Scope(4, action=True, step=True, signals=("u.q_std",))
    constraint = Scope(4, where="x")
    for source in ("action == 1", "step > 3", "signals.u.q_std > 0.5", "tripped.u.q_std"):
        assert compile_numpy(source, rules) is not None, source
        assert compile_numpy(source, constraint) is None, source
    # Past the end: rules keep the CEL path (the row fails closed); constraints refuse the config.
    assert compile_numpy("obs[4] > 0.0", Scope(4)) is None
    with pytest.raises(ConfigError, match=r"x: reads obs\[4\], but observations have 4 elements"):
        compile_numpy("obs[4] > 0.0", constraint)
    assert compile_numpy("obs[0] + 1.0", rules) is None  # not a condition


def test_forms_constraints_always_compiled_still_compile_for_rules() -> None:
    """The constraints' old subset (affine obs, math.abs, parenthesised logic) is in the shared one."""
    env = make_env(True, with_signals=False)
    for source in (
        "obs[0] + 0.5 * obs[1] <= 1.0 && obs[1] > -2.0",
        "(obs[0] < 0.0 || obs[1] >= 1e-3) && -obs[0] / 2.0 > -1.0",
        "math.abs(obs[0] - 2.0 * obs[1]) < 3.0",
        "(obs[0]) < .5",
    ):
        assert compile_vectorized(source, CelPredicate(env, source, "t"), 2, True, None) is not None, source


def test_compile_checked_refuses_a_form_cel_disagrees_with(caplog) -> None:
    scope = Scope(2, where="monitors[0].constraints.lying")
    rows = lambda cols: [{"obs": r} for r in cols.obs.tolist()]  # noqa: E731
    assert compile_checked("obs[0] < 1.0", scope, lambda row: True, rows, 64, seed=0) is None
    assert "disagrees with CEL" in caplog.text

    def erroring(row):
        raise RuntimeError("no such key")

    assert compile_checked("obs[0] < 1.0", scope, erroring, rows, 64, seed=0) is None
    honest = compile_checked("obs[0] < 1.0", scope, lambda row: row["obs"][0] < 1.0, rows, 64, seed=0)
    assert honest is not None
    states = np.array([[0.0, 0.0], [2.0, 0.0], [np.nan, 0.0]])
    assert honest(Columns(3, states)).tolist() == [True, False, False]
