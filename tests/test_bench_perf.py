"""Smoke test of ``interlock bench perf --quick``: the harness runs and its outputs are well formed.

No timing assertions: speed figures live in docs/benchmarks.md, not in tests.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = (
    "check_p50_over_transport_floor",
    "batch_throughput_over_compute_floor",
    "check_decisions_per_second_16_clients",
)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_bench_perf_quick_outputs_are_well_formed(tmp_path):
    out, docs = tmp_path / "perf.json", tmp_path / "docs"
    docs.mkdir()
    (docs / "benchmarks.md").write_text("# Benchmarks\n\nhand-written text that must survive\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "interlock.cli",
            "bench",
            "perf",
            "--quick",
            "--json",
            str(out),
            "--docs",
            str(docs),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())

    for key in HEADLINE:
        assert _positive(result[key]), key
        assert result["summary"]["targets"][key]["value"] == result[key]
    assert result["quick"] is True and result["machine"]["cpus"] >= 1
    assert result["scenario"]["verdicts_in_process"]["ALLOW"] > 0
    assert result["scenario"]["verdicts_in_process"]["SUBSTITUTE"] > 0
    for floor in ("compute_floor", "engine_in_process"):
        assert {f["batch"] for f in result[floor]} >= {1, *result["settings"]["batch_sizes"]}
        assert all(_positive(f["decisions_per_second"]) for f in result[floor])

    points = result["setups"][0]["points"]
    shapes = {(p["method"], p["service"]) for p in points}
    for method in ("Check", "CheckStream", "CheckBatch"):
        assert {(method, "guard"), (method, "echo")} <= shapes
    for p in points:
        assert p["errors"] == 0 and p["calls"] > 0, p
        for k in ("calls_per_second", "decisions_per_second", "p50_us", "p99_us", "p999_us", "mean_us"):
            assert _positive(p[k]), (k, p)
        assert p["p50_us"] <= p["p99_us"] <= p["p999_us"]

    md = (docs / "benchmarks.md").read_text()
    assert "hand-written text that must survive" in md
    assert md.count("<!-- perf:begin") == 1 and md.count("<!-- perf:end -->") == 1
    assert "| Check p50 / transport floor (1 client) |" in md
    for png in ("perf_latency.png", "perf_throughput.png"):
        data = (docs / "img" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"](img/{png})" in md
    assert "check_p50_over_transport_floor" in proc.stdout


def test_bench_is_a_group_with_help():
    from interlock.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["bench"])  # a subcommand is required
    args = parser.parse_args(["bench", "perf", "--quick", "--json", "x.json"])
    assert args.quick and args.json == "x.json" and args.docs is None
