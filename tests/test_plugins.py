"""``kind: python`` monitors and fallbacks: loaded by name (never eval'd), probed at load."""

from __future__ import annotations

import numpy as np
import pytest

from interlock.engine import Guard
from interlock.errors import ConfigError
from interlock.plugins import load_callable
from interlock.types import CheckInput, Verdict
from tests.support.fixtures import loaded


def line_agent(monitor: dict | None = None, fallback: dict | None = None) -> dict:
    return {
        "id": "line",
        "observation": {"shape": [1]},
        "action": {"type": "discrete", "n": 3},
        "monitors": [
            monitor
            or {
                "kind": "python",
                "name": "dist",
                "callable": "tests.support.plugins:distance_monitor",
                "kwargs": {"limit": 2.0},
                "signals": {"far": {"threshold": 0.5}, "action": {"threshold": 0.5, "direction": "below"}},
            }
        ],
        "policy": {
            "rules": [
                {"name": "far", "when": "tripped.dist.far", "verdict": "substitute", "fallback": "home"}
            ]
        },
        "fallbacks": {
            "home": fallback
            or {
                "kind": "python",
                "callable": "tests.support.plugins:toward_zero",
                "kwargs": {"left": 0, "right": 2},
            }
        },
    }


def check(guard: Guard, xs: list[float], action: int = 1):
    return guard.check([CheckInput("line", np.array([x], np.float32), np.int64(action)) for x in xs])


def test_python_monitor_and_fallback_decide(tmp_path) -> None:
    guard = Guard(loaded([line_agent()], base_dir=tmp_path)).load()
    near, right, left = check(guard, [0.5, 1.5, -1.5], action=1)
    sig = {n: (v, t) for n, v, _, t in right.signals}
    assert sig["dist.far"] == (pytest.approx(0.75), True)  # kwargs reached the function: 1.5 / 2.0
    assert sig["dist.action"] == (1.0, False)  # "below" 0.5 trips only under it
    assert near.verdict is Verdict.ALLOW
    assert right.verdict is Verdict.SUBSTITUTE and int(right.action) == 0
    assert left.verdict is Verdict.SUBSTITUTE and int(left.action) == 2
    (zero,) = check(guard, [0.0], action=0)
    assert {n: t for n, _, _, t in zero.signals}["dist.action"] is True


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("not a spec", "must look like 'package.module:attribute'"),
        ("os.system", "must look like"),  # no attribute part: never a bare module
        ("tests.support.no_such_module:f", "cannot import module 'tests.support.no_such_module'"),
        ("tests.support.plugins:missing", "has no attribute 'missing'"),
        ("tests.support.plugins:NOT_CALLABLE", "is a int, not a function or class"),
        ("tests.support.plugins:BrokenInit", "constructing tests.support.plugins:BrokenInit with kwargs"),
        ("tests.support.plugins:wrong_length_monitor", r"has shape \[3\]; expected \[2\]"),
        ("tests.support.plugins:list_monitor", "expected a dict"),
        ("tests.support.plugins:NoBias", r"returned signals \['zero'\]; config declares"),
    ],
)
def test_monitor_plugins_are_checked_at_load(tmp_path, spec, message) -> None:
    monitor = {"kind": "python", "name": "dist", "callable": spec, "signals": {"far": {"threshold": 1.0}}}
    with pytest.raises(ConfigError, match=r"agents\[0\] \(line\)\.monitors\[0\]") as err:
        Guard(loaded([line_agent(monitor)], base_dir=tmp_path)).load()
    assert err.match(message)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.support.plugins:wrong_shape_fallback", r"returned shape \[2, 2\] for 2 rows; expected \[2\]"),
        ("tests.support.plugins:nope", "has no attribute 'nope'"),
    ],
)
def test_fallback_plugins_are_checked_at_load(tmp_path, spec, message) -> None:
    with pytest.raises(ConfigError, match=r"fallbacks\.home") as err:
        Guard(loaded([line_agent(fallback={"kind": "python", "callable": spec})], base_dir=tmp_path)).load()
    assert err.match(message)


def test_a_fallback_action_outside_the_space_halts(tmp_path) -> None:
    fb = {"kind": "python", "callable": "tests.support.plugins:out_of_space_fallback"}
    guard = Guard(loaded([line_agent(fallback=fb)], base_dir=tmp_path)).load()
    (d,) = check(guard, [1.5])
    assert d.verdict is Verdict.HALT and d.action is None


def test_kwargs_bind_to_functions_and_classes() -> None:
    fn = load_callable("tests.support.plugins:toward_zero", {"left": 1, "right": 1}, "x")
    assert fn(np.array([[3.0], [-3.0]]), None, None).tolist() == [1, 1]
    model = load_callable("tests.support.plugins:LineModel", {"steps": [1.0]}, "x")
    assert model(np.zeros((1, 1)), np.array([2])).tolist() == [[[1.0]]]
