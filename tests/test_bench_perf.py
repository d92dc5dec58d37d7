"""Smoke test of ``interlock bench perf --quick``: the harness runs and its outputs are well formed.

No timing assertions: speed figures live in docs/benchmarks.md, not in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from interlock.bench.perf.transport import SERIES
from tests.support.bench import ROOT, check_docs, positive, run_quick

HEADLINE = (
    "check_p50_over_transport_floor",
    "check_throughput_16_clients_over_transport_floor",
    "columns_throughput_over_compute_floor",
    "columns_over_batch_throughput",
    "engine_batch1_over_onnx",
)


@pytest.mark.slow
def test_bench_perf_quick_outputs_are_well_formed(tmp_path):
    result, docs, stdout = run_quick("perf", tmp_path)

    for key in HEADLINE:
        assert positive(result[key]), key
        assert result["summary"]["targets"][key]["value"] == result[key]
        assert key in stdout
    assert result["quick"] is True and result["machine"]["cpus"] >= 1
    assert result["scenario"]["verdicts_in_process"]["ALLOW"] > 0
    assert result["scenario"]["verdicts_in_process"]["SUBSTITUTE"] > 0
    for floor in ("compute_floor", "engine_in_process", "onnx_floor"):
        assert {f["batch"] for f in result[floor]} >= {1, *result["settings"]["batch_sizes"]}
        assert all(positive(f["decisions_per_second"]) for f in result[floor])

    points = result["setups"][0]["points"]
    shapes = {(p["method"], p["service"]) for p in points}
    for method in ("Check", "CheckStream", "CheckBatch", "CheckColumns"):
        assert {(method, "guard"), (method, "echo")} <= shapes
    for p in points:
        assert p["errors"] == 0 and p["calls"] > 0, p
        for k in ("calls_per_second", "decisions_per_second", "p50_us", "p99_us", "p999_us", "mean_us"):
            assert positive(p[k]), (k, p)
        assert p["p50_us"] <= p["p99_us"] <= p["p999_us"]

    modes = {(p["mode"], p["batch"]) for p in result["tracing"]["points"]}
    assert modes == {
        (m, b) for m in ("off", "sampled_1pct", "always_on", "always_on_console") for b in (1, 64)
    }
    assert all(positive(p["cpu_us_per_decision"]) for p in result["tracing"]["points"])
    assert "tracing always_on" in stdout

    md = check_docs(docs, "perf", min_images=2)
    assert "#### Tracing" in md
    assert "| Check p50 / transport floor (1 client) |" in md
    assert "#### CheckColumns against the compute floor" in md
    assert all(positive(v) for v in result["summary"]["server_cpu_us_per_decision"].values())
    assert (docs / "img" / "perf_latency.png").is_file() and (docs / "img" / "perf_throughput.png").is_file()


def test_bench_is_a_group_with_help():
    from interlock.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["bench"])  # a subcommand is required
    args = parser.parse_args(["bench", "perf", "--quick", "--json", "x.json"])
    assert args.quick and args.json == "x.json" and args.docs is None


@pytest.mark.slow
def test_transport_options_outputs_are_well_formed(tmp_path):
    """``python -m interlock.bench.perf.transport``: every series at both concurrencies, no errors."""
    out = tmp_path / "transport.json"
    cmd = [sys.executable, "-m", "interlock.bench.perf.transport", "--rounds", "1", "--duration", "0.2"]
    cmd += ["--warmup", "0.1", "--threads", "4", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())

    names = [name for name, _, _ in SERIES]
    assert {(p["series"], p["concurrency"]) for p in result["points"]} == {
        (n, c) for n in names for c in (1, 16)
    }
    for p in result["points"]:
        assert p["errors"] == 0 and p["calls"] > 0, p
        for k in ("calls_per_second", "p50_us", "p99_us", "server_cpu_us_per_call"):
            assert positive(p[k]), (k, p)
        # Engine CPU inside the server is read from the sync server's stats service only.
        for k in ("engine_cpu_us_per_call", "handler_cpu_us_per_call"):
            assert positive(p[k]) == (p["series"] == "check_sync"), (k, p)
    assert set(result["series"]) == set(names)
    assert all(positive(v) for v in result["engine_in_process_cpu_us_per_call"])
    for check in ("check_aio", "check_sync", "check_aio_2w"):
        assert positive(result["ratios"][f"{check}_p50_over_echo_aio"])
        assert positive(result["ratios"][f"{check}_16_clients_throughput_over_echo_aio"])
    for row in names:
        assert f"| {row} |" in proc.stdout
    assert "check_sync_p50_over_echo_sync" in proc.stdout
