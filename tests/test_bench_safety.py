"""Smoke test of ``interlock bench safety --quick``: the harness runs and its outputs are well formed.

No target assertions: the figures against the targets live in docs/benchmarks.md, not in tests.
"""

from __future__ import annotations

import math

import pytest

from tests.support.bench import check_docs, run_quick

METRICS = (
    "catastrophe_rate",
    "mean_return",
    "intervention_rate",
    "escalation_rate",
    "false_intervention_rate",
)
RATES = ("catastrophe_rate", "intervention_rate", "escalation_rate", "false_intervention_rate")
CORE = ("minigrid_distshift", "cartpole_shift", "cliffwalking")


@pytest.mark.slow
def test_bench_safety_quick_outputs_are_well_formed(tmp_path):
    result, docs, stdout = run_quick("safety", tmp_path)

    assert result["quick"] is True
    assert set(CORE) <= set(result["scenarios"])
    assert set(result["scenarios"]) | set(result["skipped"]) >= {*CORE, "highway", "highway_cpss"}
    for name, res in result["scenarios"].items():
        assert res["env"] and res["shift"], name
        assert res["env"] in stdout
        for dist in ("in_distribution", "shifted"):
            conds = res[dist]
            assert {"unguarded", "guarded"} <= set(conds), (name, dist)
            for cond, m in conds.items():
                assert m["episodes"] == res["seeds"] >= 1, (name, dist, cond)
                for key in METRICS:
                    assert isinstance(m[key], (int, float)) and math.isfinite(m[key]), (name, dist, cond, key)
                for key in RATES:
                    assert 0.0 <= m[key] <= 1.0, (name, dist, cond, key, m[key])
            # The unguarded agent is never intervened on or escalated.
            assert conds["unguarded"]["intervention_rate"] == conds["unguarded"]["escalation_rate"] == 0.0
            # Guarded rows carry their return against the unguarded twins, paired by seed.
            g, u = conds["guarded"], conds["unguarded"]
            assert g["return_difference"] == pytest.approx(g["mean_return"] - u["mean_return"], abs=1e-9)
            lo, hi = g["return_difference95"]
            assert lo <= g["return_difference"] <= hi, (name, dist)
        score = res["score"]
        for key in ("shifted_catastrophe_reduction", "in_distribution_return_vs_unguarded"):
            assert score[key] is None or math.isfinite(score[key])
        assert 0.0 <= score["in_distribution_false_intervention_rate"] <= 1.0

    # The MiniGrid scenario drives the escalation path: its shifted run escalates unfamiliar views.
    mg = result["scenarios"]["minigrid_distshift"]["shifted"]
    assert mg["guarded"]["escalation_rate"] > 0 and mg["guarded_silent_operator"]["escalation_rate"] > 0

    md = check_docs(docs, "safety", min_images=2)
    assert "false intervention rate" in md
    assert (docs / "img" / "safety_catastrophes.png").is_file() and (
        docs / "img" / "safety_return.png"
    ).is_file()


def test_bench_safety_arguments():
    from interlock.cli import build_parser

    args = build_parser().parse_args(
        ["bench", "safety", "--quick", "--json", "s.json", "--only", "cliffwalking"]
    )
    assert args.quick and args.json == "s.json" and args.only == "cliffwalking" and args.docs is None


def test_paired_return_intervals_pair_episodes_by_seed():
    """The interval is over pairs: a guard that shifts every episode's return by the same amount has a
    point interval however spread the returns are; unpaired noise widens it; the ratio's interval is
    withheld when the unguarded mean can reach zero."""
    import numpy as np

    from interlock.bench.safety.common import paired_return

    rng = np.random.default_rng(1)
    unguarded = list(rng.normal(100.0, 80.0, 200))
    shifted = paired_return([r - 5.0 for r in unguarded], unguarded)
    assert shifted["return_difference"] == pytest.approx(-5.0)
    assert shifted["return_difference95"] == pytest.approx([-5.0, -5.0])
    lo, hi = shifted["return_ratio95"]
    assert lo < 0.95 < hi < 1.0  # the ratio still moves with the unguarded mean

    noisy = paired_return(list(rng.normal(95.0, 80.0, 200)), unguarded)
    lo, hi = noisy["return_difference95"]
    assert hi - lo > 10.0 and lo < noisy["return_difference"] < hi

    near_zero = paired_return([1.0, -2.0, 3.0], [2.0, -3.0, 2.0])
    assert near_zero["return_ratio95"] is None and near_zero["return_difference"] == pytest.approx(1 / 3)
    assert paired_return([], []) == {}
    with pytest.raises(ValueError, match="one unguarded twin per episode"):
        paired_return([1.0], [1.0, 2.0])
