"""Markdown tables and PNG plots of a ``bench perf`` result, written into docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from interlock.bench.docs import save_figure


def _fmt(x: float, digits: int = 0) -> str:
    if x != x:  # NaN
        return "-"
    return f"{x:,.{digits}f}"


def _points(setup: dict, method: str, service: str) -> list[dict]:
    return sorted(
        (p for p in setup["points"] if p["method"] == method and p["service"] == service),
        key=lambda p: (p["concurrency"], p["batch"]),
    )


def headline_table(result: dict[str, Any]) -> str:
    s = result["summary"]
    t = s["targets"]
    plural = "s" if s["columns_concurrency"] > 1 else ""
    rows = [
        (
            "Check p50 / transport floor (1 client)",
            f"{s['check_p50_over_transport_floor']:.2f}x ({_fmt(s['check_p50_us'])} us vs "
            f"{_fmt(s['transport_floor_p50_us'])} us)",
            t["check_p50_over_transport_floor"],
        ),
        (
            f"Check decisions/s, {s['clients']} clients / echo calls/s",
            f"{s['check_throughput_16_clients_over_transport_floor']:.2f}x "
            f"({_fmt(s['check_decisions_per_second_16_clients'])} vs "
            f"{_fmt(s['echo_calls_per_second_16_clients'])}; {s['check_16_clients_setup']})",
            t["check_throughput_16_clients_over_transport_floor"],
        ),
        (
            f"CheckColumns of {s['batch_size']} / compute floor (decisions/s)",
            f"{s['columns_throughput_over_compute_floor']:.2f}x "
            f"({_fmt(s['columns_decisions_per_second'])} vs "
            f"{_fmt(s['columns_compute_floor_decisions_per_second'])}; "
            f"{s['columns_concurrency']} client{plural})",
            t["columns_throughput_over_compute_floor"],
        ),
        (
            f"CheckColumns of {s['batch_size']} / CheckBatch of {s['batch_size']} (decisions/s)",
            f"{s['columns_over_batch_throughput']:.1f}x ({_fmt(s['columns_decisions_per_second'])} vs "
            f"{_fmt(s['batch_decisions_per_second'])})",
            t["columns_over_batch_throughput"],
        ),
        (
            "Guard.check at batch 1 in process / its ONNX calls",
            f"{s['engine_batch1_over_onnx']:.2f}x ({_fmt(s['engine_batch1_us'])} us vs "
            f"{_fmt(s['engine_batch1_onnx_us'])} us)",
            t["engine_batch1_over_onnx"],
        ),
    ]
    cfg = result.get("config_unary")
    if cfg is not None and "check_p50_over_transport_floor_config" in t:
        rows.append(
            (
                f"Check p50 / transport floor on `{cfg['config']}` ({cfg['agent']}, 1 worker, "
                f"median of {cfg['rounds']} interleaved rounds)",
                f"{s['check_p50_over_transport_floor_config']:.2f}x ({_fmt(cfg['check_p50_us'])} us vs "
                f"{_fmt(cfg['transport_floor_p50_us'])} us)",
                t["check_p50_over_transport_floor_config"],
            )
        )
    lines = ["| figure | measured | target | met |", "|---|---|---|---|"]
    for name, measured, target in rows:
        lines.append(f"| {name} | {measured} | {target['target']} | {'yes' if target['met'] else '**no**'} |")
    lines += [
        "",
        "The compute floor is every ONNX `session.run` the config's monitors and fallbacks make for the "
        f"batch ({s['compute_floor_onnx_runs_per_batch']:.0f} runs per batch of {s['batch_size']}), timed "
        "in process right after the point.",
        "",
        "Server CPU time per decision (user + system time of the server processes in the measured "
        "window; unlike wall-clock figures, barely moved by other load on the machine):",
        "",
        "| path | server CPU us per decision |",
        "|---|---:|",
    ]
    for path, us in s["server_cpu_us_per_decision"].items():
        lines.append(f"| {path} | {_fmt(us, 1)} |")
    lines.append(
        f"| echo (Check), {s['clients']} clients | {_fmt(s['echo_server_cpu_us_per_call'], 1)} per call |"
    )
    return "\n".join(lines)


def latency_table(setup: dict, method: str) -> str:
    guard = _points(setup, method, "guard")
    echo = {p["concurrency"]: p for p in _points(setup, method, "echo")}
    lines = [
        "| clients | p50 us | p99 us | p99.9 us | decisions/s | echo p50 us | echo calls/s | p50 / echo |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in guard:
        e = echo.get(p["concurrency"])
        ratio = p["p50_us"] / e["p50_us"] if e else float("nan")
        lines.append(
            f"| {p['concurrency']} | {_fmt(p['p50_us'])} | {_fmt(p['p99_us'])} | {_fmt(p['p999_us'])} | "
            f"{_fmt(p['decisions_per_second'])} | {_fmt(e['p50_us']) if e else '-'} | "
            f"{_fmt(e['calls_per_second']) if e else '-'} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def batch_table(result: dict[str, Any]) -> str:
    main = result["setups"][0]
    floor = {f["batch"]: f for f in result["compute_floor"]}
    engine = {f["batch"]: f for f in result["engine_in_process"]}
    echo = {(p["concurrency"], p["batch"]): p for p in _points(main, "CheckBatch", "echo")}
    lines = [
        "| batch | clients | decisions/s | p50 us | p99 us | echo decisions/s | engine in-process /s "
        "| compute floor /s (measured right after) | / compute floor |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in _points(main, "CheckBatch", "guard"):
        b = p["batch"]
        e = echo.get((p["concurrency"], b))
        fl = p.get("compute_floor_adjacent_decisions_per_second", floor[b]["decisions_per_second"])
        lines.append(
            f"| {b} | {p['concurrency']} | {_fmt(p['decisions_per_second'])} | {_fmt(p['p50_us'])} | "
            f"{_fmt(p['p99_us'])} | {_fmt(e['decisions_per_second']) if e else '-'} | "
            f"{_fmt(engine[b]['decisions_per_second'])} | {_fmt(fl)} | {p['decisions_per_second'] / fl:.2f} |"
        )
    return "\n".join(lines)


def columns_table(result: dict[str, Any]) -> str:
    """CheckColumns and CheckBatch side by side against the config's ONNX compute floor."""
    main = result["setups"][0]
    batch = {(p["concurrency"], p["batch"]): p for p in _points(main, "CheckBatch", "guard")}
    echo = {(p["concurrency"], p["batch"]): p for p in _points(main, "CheckColumns", "echo")}
    lines = [
        "| batch | clients | CheckColumns decisions/s | p50 us | echo decisions/s | CheckBatch decisions/s "
        "| compute floor /s (right after) | columns / floor | columns / batch | server CPU us/decision |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in _points(main, "CheckColumns", "guard"):
        key = (p["concurrency"], p["batch"])
        b, e = batch.get(key), echo.get(key)
        fl = p["compute_floor_adjacent_decisions_per_second"]
        lines.append(
            f"| {p['batch']} | {p['concurrency']} | {_fmt(p['decisions_per_second'])} | "
            f"{_fmt(p['p50_us'])} | {_fmt(e['decisions_per_second']) if e else '-'} | "
            f"{_fmt(b['decisions_per_second']) if b else '-'} | "
            f"{_fmt(fl)} | {p['decisions_per_second'] / fl:.2f} | "
            f"{p['decisions_per_second'] / b['decisions_per_second'] if b else float('nan'):.1f} | "
            f"{_fmt(p['server_cpu_us_per_decision'], 1)} |"
        )
    return "\n".join(lines)


def onnx_floor_table(result: dict[str, Any]) -> str:
    """In process: the engine (columnar path) against every ONNX call it makes."""
    lines = [
        "| batch | ONNX runs | ONNX us per batch | engine us per batch | engine / ONNX |",
        "|---:|---:|---:|---:|---:|",
    ]
    for f in result.get("onnx_floor", []):
        lines.append(
            f"| {f['batch']} | {f['onnx_runs_per_batch']:.0f} | {_fmt(f['onnx_us_per_batch'])} | "
            f"{_fmt(f['engine_us_per_batch'])} | {f['engine_over_onnx']:.2f} |"
        )
    return "\n".join(lines)


def ort_table(result: dict[str, Any]) -> str:
    rows = result.get("onnxruntime_settings", [])
    sizes = sorted({r["batch"] for r in rows})
    lines = [
        "| intra-op threads | spinning | " + " | ".join(f"batch {b}: us/call" for b in sizes) + " |",
        "|---:|---|" + "---:|" * len(sizes),
    ]
    for threads, spin in sorted({(r["intra_op_threads"], r["spinning"]) for r in rows}):
        cells = [
            _fmt(
                next(
                    r["us_per_call"]
                    for r in rows
                    if (r["intra_op_threads"], r["spinning"], r["batch"]) == (threads, spin, b)
                ),
                1,
            )
            for b in sizes
        ]
        lines.append(f"| {threads} | {'on' if spin else 'off'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tracing_table(result: dict[str, Any]) -> str:
    """CPU per decision of the request path with tracing off, sampled at 1 % and always on."""
    names = {
        "off": "off",
        "sampled_1pct": "sampled 1 % (parentbased_traceidratio 0.01)",
        "always_on": "always on (spans discarded after the BatchSpanProcessor)",
        "always_on_console": "always on, console exporter to /dev/null",
    }
    rows = ["| tracing | batch | CPU us / decision | / off |", "|---|---:|---:|---:|"]
    for p in result["tracing"]["points"]:
        cpu, ratio = p["cpu_us_per_decision"], p["ratio_to_off"]
        rows.append(f"| {names[p['mode']]} | {p['batch']} | {cpu:.0f} | {ratio:.2f} |")
    return "\n".join(rows)


def setups_table(result: dict[str, Any]) -> str:
    concs = result["settings"]["concurrency"]
    lines = [
        "| setup | " + " | ".join(f"{c} clients /s (p50 us)" for c in concs) + " |",
        "|---|" + "---:|" * len(concs),
    ]
    for s in result["setups"]:
        by = {p["concurrency"]: p for p in _points(s, "Check", "guard")}
        cells = [
            f"{_fmt(by[c]['decisions_per_second'])} ({_fmt(by[c]['p50_us'])})" if c in by else "-"
            for c in concs
        ]
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ticks(ax, values: list[int]) -> None:
    """Log-2 x axis labelled with the measured values as plain numbers."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.ticklabel_format(axis="x", style="plain")


def plot(result: dict[str, Any], img: Path) -> list[Path]:
    """Latency against concurrency, throughput against batch size, Check throughput per setup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    main = result["setups"][0]
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    series = [
        ("Check", "guard", "Check", "C0", "-"),
        ("CheckStream", "guard", "CheckStream", "C1", "-"),
        ("Check", "echo", "echo (transport floor)", "C7", "--"),
        ("CheckStream", "echo", "echo stream", "C7", ":"),
    ]
    for ax, (q, title) in zip(axes, (("p50_us", "p50"), ("p99_us", "p99")), strict=True):
        for method, service, label, color, style in series:
            pts = _points(main, method, service)
            if pts:
                ax.plot(
                    [p["concurrency"] for p in pts],
                    [p[q] for p in pts],
                    marker="o",
                    color=color,
                    linestyle=style,
                    label=label,
                )
        _ticks(ax, result["settings"]["concurrency"])
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_title(f"{title} latency ({main['label']})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("microseconds per call")
    axes[0].legend()
    paths.append(save_figure(fig, img / "perf_latency.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    floor = sorted(result["compute_floor"], key=lambda f: f["batch"])
    ax.plot(
        [f["batch"] for f in floor],
        [f["decisions_per_second"] for f in floor],
        "k--",
        marker="s",
        label="compute floor (bare ensemble, 1 thread)",
    )
    engine = sorted(result["engine_in_process"], key=lambda f: f["batch"])
    ax.plot(
        [f["batch"] for f in engine],
        [f["decisions_per_second"] for f in engine],
        color="C2",
        linestyle=":",
        marker="^",
        label="engine in-process (no gRPC)",
    )
    for i, conc in enumerate(result["settings"]["batch_concurrency"]):
        pts = [p for p in _points(main, "CheckBatch", "guard") if p["concurrency"] == conc]
        ax.plot(
            [p["batch"] for p in pts],
            [p["decisions_per_second"] for p in pts],
            marker="o",
            color=f"C{i}",
            label=f"CheckBatch, {conc} client{'s' if conc > 1 else ''}",
        )
        echo = [p for p in _points(main, "CheckBatch", "echo") if p["concurrency"] == conc]
        ax.plot(
            [p["batch"] for p in echo],
            [p["decisions_per_second"] for p in echo],
            color=f"C{i}",
            linestyle="--",
            alpha=0.5,
            label=f"echo batch, {conc} client{'s' if conc > 1 else ''}",
        )
    _ticks(ax, sorted({f["batch"] for f in floor}))
    ax.set_yscale("log")
    ax.set_xlabel("batch size (requests per call)")
    ax.set_ylabel("decisions per second")
    ax.set_title("Throughput against batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, img / "perf_throughput.png"))

    if len(result["setups"]) > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, s in enumerate(result["setups"]):
            pts = _points(s, "Check", "guard")
            ax.plot(
                [p["concurrency"] for p in pts],
                [p["decisions_per_second"] for p in pts],
                marker="o",
                color=f"C{i}",
                label=s["label"],
            )
        echo = _points(main, "Check", "echo")
        ax.plot(
            [p["concurrency"] for p in echo],
            [p["calls_per_second"] for p in echo],
            "k--",
            label=f"echo ({main['label'].split(',')[0]})",
        )
        ax.axhline(5000, color="red", alpha=0.4, linestyle=":", label="target: 5,000/s at 16 clients")
        _ticks(ax, result["settings"]["concurrency"])
        ax.set_xlabel("concurrent clients (unary Check)")
        ax.set_ylabel("decisions per second")
        ax.set_title("Check throughput by server setup")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, img / "perf_setups.png"))
    return paths


def markdown(result: dict[str, Any], images: list[Path], docs: Path) -> str:
    m = result["machine"]
    sc = result["scenario"]
    main = result["setups"][0]
    rel = [p.relative_to(docs).as_posix() for p in images]
    parts = [
        f"Run of {result['started']}{' (quick)' if result['quick'] else ''}: {m['cpus']} CPUs, "
        f"Python {m['python']}, grpcio {m['grpcio']}, onnxruntime {m['onnxruntime']}; "
        f"load average before/after {m['loadavg_before'][0]:.1f}/{m['loadavg_after'][0]:.1f}; "
        f"{result['settings']['duration_s']:g} s per point after "
        f"{result['settings']['warmup_s']:g} s warm-up; "
        f"clients in {result['settings']['client_processes']} processes on the same machine.",
        "",
        f"Scenario: {sc['ensemble']}; monitors {', '.join(sc['monitors'])}; "
        f"{sc['policy_rules']} policy rules; "
        f"{sc['request_bytes']:.0f}-byte requests, {sc['decision_bytes']}-byte decisions; verdicts "
        + ", ".join(f"{k} {v}" for k, v in sorted(sc["verdicts_in_process"].items()))
        + " of 1024.",
        "",
        "#### Against the targets",
        "",
        headline_table(result),
        "",
        f"#### Check (unary), {main['label']}",
        "",
        latency_table(main, "Check"),
        "",
        f"#### CheckStream (one stream per client), {main['label']}",
        "",
        latency_table(main, "CheckStream"),
        "",
        "#### CheckBatch against the compute floor",
        "",
        batch_table(result),
        "",
        "#### CheckColumns against the compute floor (every ONNX call of the config)",
        "",
        columns_table(result),
        "",
        "#### The engine in process against its ONNX calls (CheckColumns' path, no gRPC)",
        "",
        onnx_floor_table(result),
        "",
    ]
    if len(result["setups"]) > 1:
        parts += ["#### Check throughput by server setup", "", setups_table(result), ""]
    if result.get("tracing", {}).get("points"):
        parts += [
            "#### Tracing (GuardService.check in process, process CPU per decision, median of "
            f"{result['tracing']['rounds']} interleaved rounds)",
            "",
            tracing_table(result),
            "",
        ]
    if result.get("onnxruntime_settings"):
        parts += ["#### ONNX Runtime settings (bare ensemble call, in-process)", "", ort_table(result), ""]
    parts += [f"![{Path(r).stem}]({r})" for r in rel]
    return "\n".join(parts)


def write(result: dict[str, Any], docs: Path) -> Path:
    """Plots into ``docs/img``; the ``perf`` section of ``docs/benchmarks.md`` replaced (or appended)."""
    from interlock.bench.docs import write_docs_section

    docs.mkdir(parents=True, exist_ok=True)
    images = plot(result, docs / "img")
    return write_docs_section(docs / "benchmarks.md", "perf", markdown(result, images, docs))


def summary_text(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = ["interlock bench perf" + (" (quick)" if result["quick"] else "")]
    for key, t in s["targets"].items():
        lines.append(
            f"  {key:42s} {t['value']:12.2f}   target {t['target']:>8s}   {'met' if t['met'] else 'NOT met'}"
        )
    for p in result.get("tracing", {}).get("points", []):
        if p["mode"] != "off":
            lines.append(f"  tracing {p['mode']:18s} batch {p['batch']:3d}: {p['ratio_to_off']:.2f} x off")
    return "\n".join(lines)
