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
