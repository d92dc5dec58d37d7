"""The highway-env safety scenario: the CEL headway rules (``cel_headway.yaml``, the example's guard before
issue 11) on a real Guard, and a quick benchmark run (now guarded by the kinematic shield,
``interlock.yaml``; its own tests are in test_highway_shield.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from interlock.config import load_config
from interlock.engine import Guard
from interlock.types import CheckInput, Verdict

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "highway" / "cel_headway.yaml"
IDLE, LANE_LEFT, FASTER, SLOWER = 1, 0, 3, 4


def _obs(*others: tuple[float, float, float]) -> np.ndarray:
    """A flattened kinematics observation [25]: ego in the middle lane at 25 m/s, plus vehicles
    given as (dx metres, dy metres, dvx m/s) relative to the ego, normalised as highway-env does
    (x / 200, y / 12, vx / 80)."""
    rows = np.zeros((5, 5), dtype=np.float32)
    rows[0] = [1.0, 0.5, 4.0 / 12, 25.0 / 80, 0.0]
    for i, (dx, dy, dvx) in enumerate(others, start=1):
        rows[i] = [1.0, dx / 200, dy / 12, dvx / 80, 0.0]
    return rows.reshape(-1)


@pytest.fixture(scope="module")
def guard() -> Guard:
    return Guard(load_config(CONFIG)).load()


def _decide(guard: Guard, obs: np.ndarray, action: int):
    [d] = guard.check([CheckInput("highway", obs, np.int64(action))])
    return d


def test_headway_rule_trips_on_a_close_vehicle_ahead(guard: Guard) -> None:
    close = _obs((12.0, 0.0, -3.0), (40.0, 4.0, 0.0))  # 7 m gap, closing at 3 m/s: needs 17 m
    d = _decide(guard, close, FASTER)
    assert d.verdict is Verdict.SUBSTITUTE
    assert d.rule == "too_close"
    assert int(d.action) == SLOWER
    assert dict((n, t) for n, _, _, t in d.signals)["safety.front_gap"]
    # Braking already: allowed.
    assert _decide(guard, close, SLOWER).verdict is Verdict.ALLOW


def test_headway_rule_quiet_on_a_clear_road(guard: Guard) -> None:
    clear = _obs((60.0, 0.0, -2.0), (15.0, 4.0, -1.0), (-8.0, -4.0, 0.0))  # lead 55 m ahead
    for action in (IDLE, FASTER, SLOWER):
        d = _decide(guard, clear, action)
        assert d.verdict is Verdict.ALLOW, (action, d.reasons)
    # A vehicle close by in the next lane does not count as ahead in the ego lane ...
    assert _decide(guard, _obs((8.0, 4.0, -3.0)), IDLE).verdict is Verdict.ALLOW


def test_lane_change_into_an_occupied_gap_keeps_the_lane(guard: Guard) -> None:
    beside_left = _obs((2.0, -4.0, 0.0))  # a vehicle alongside in the left lane
    d = _decide(guard, beside_left, LANE_LEFT)
    assert d.verdict is Verdict.SUBSTITUTE and d.rule == "unsafe_lane_change" and int(d.action) == IDLE
    assert _decide(guard, _obs((60.0, -4.0, 0.0)), LANE_LEFT).verdict is Verdict.ALLOW


def test_quick_run_is_well_formed() -> None:
    pytest.importorskip("highway_env", reason="highway-env is not installed: pip install -e '.[bench]'")
    from interlock.bench.safety import highway

    if not highway.AGENT.exists():
        pytest.skip(f"{highway.AGENT} is missing: run examples/highway/train_agent.py")
    res = highway.run(quick=True, seeds=1, progress=False)
    assert res["env"] == "highway-fast-v0" and "vehicles_density" in res["shift"]
    # the bench runs the chosen design: the shield, then the dense-traffic handover (HANDOVER_RULE.md)
    assert res["guard"] == "interlock_backup_long_r6.yaml (handover, stock target speeds)"
    with pytest.raises(ValueError, match="design must be one of"):
        highway.run(quick=True, seeds=1, progress=False, design="oracle")
    for dist in ("in_distribution", "shifted"):
        for mode in ("unguarded", "guarded"):
            m = res[dist][mode]
            assert m["episodes"] == 1 and 1 <= m["steps"] <= 8
            for key in ("catastrophe_rate", "intervention_rate", "escalation_rate",
                        "false_intervention_rate"):
                assert 0.0 <= m[key] <= 1.0, (dist, mode, key, m[key])
            assert np.isfinite(m["mean_return"])
        assert res[dist]["unguarded"]["intervention_rate"] == 0.0
        assert 0.0 <= res[dist]["unguarded"]["would_intervene_rate"] <= 1.0
