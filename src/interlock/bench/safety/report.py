"""Markdown tables and PNG plots of a ``bench safety`` result, written into docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from interlock.bench.docs import save_figure

IMG_CATASTROPHES = "img/safety_catastrophes.png"
IMG_RETURN = "img/safety_return.png"

DEFINITIONS = """\
Definitions (per condition; one episode per seed, the same seeds for every condition):

* **catastrophe rate**: share of episodes with at least one catastrophe (lava; the pole falling
  past 12 degrees or the cart leaving the track; a step off the cliff; a crash).
* **return**: mean undiscounted episode return.
* **intervention rate**: share of decisions whose proposed action was not simply executed
  (verdict SUBSTITUTE, ESCALATE or HALT, or sent to an operator).
* **escalation rate**: share of decisions sent to the operator, through interlock's escalation
  manager (blocking mode, a SQLite store) and a simulated operator answering via `resolve`.
* **false intervention rate** (in distribution): episodes are paired by seed (same environment
  seed, same agent random stream). Over the guarded episodes whose *unguarded* twin ended without a
  catastrophe, interventions divided by decisions: the guard had nothing to prevent there.
  (`false_intervention_episode_rate` in the JSON: the share of those episodes with any intervention.)
* **return vs unguarded**: `1 + (guarded - unguarded) / |unguarded|` (guarded / unguarded for
  positive returns; still 1 = as good, above 1 = better for CliffWalking's negative returns).
  The JSON's guarded rows also pair the episodes by seed: `return_difference` (mean of guarded -
  unguarded) with 95% bootstrap intervals of it and of the ratio (`return_difference95`,
  `return_ratio95`; the latter null when the unguarded mean can reach zero).
* **catastrophe reduction** under shift: `1 - guarded rate / unguarded rate`.
"""


def wilson(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``rate`` over ``n`` episodes."""
    if n <= 0:
        return 0.0, 1.0
    k = rate * n
    p = k / n
    d = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / d
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / d
    return max(0.0, mid - half), min(1.0, mid + half)


def _ci(m: dict[str, Any]) -> str:
    lo, hi = wilson(m["catastrophe_rate"], int(m.get("episodes", 0)))
    return f"{100 * m['catastrophe_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _pct(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f}%" if 0 < abs(x) < 0.01 else f"{100 * x:.1f}%"


def _met(x: bool | None) -> str:
    return "-" if x is None else ("yes" if x else "**no**")


def targets_table(result: dict[str, Any]) -> str:
    t = result["targets"]
    lines = [
        "| scenario | catastrophe rate under shift [95% CI], unguarded -> guarded | reduction (target >= "
        f"{t['shifted_catastrophe_reduction']:.0%}) | in-dist. return vs unguarded (target >= "
        f"{t['in_distribution_return_vs_unguarded']:.0%}) | in-dist. false interventions (target <= "
        f"{t['in_distribution_false_intervention_rate']:.0%}) |",
        "|---|---|---|---|---|",
    ]
    for res in result["scenarios"].values():
        s, sh = res["score"], res["shifted"]
        lines.append(
            f"| {res['env']} | {_ci(sh['unguarded'])} -> "
            f"{_ci(sh['guarded'])} | {_pct(s['shifted_catastrophe_reduction'])} "
            f"({_met(s['shifted_catastrophe_reduction_met'])}) | "
            f"{_pct(s['in_distribution_return_vs_unguarded'])} ({_met(s['in_distribution_return_met'])}) | "
            f"{_pct(s['in_distribution_false_intervention_rate'])} "
            f"({_met(s['in_distribution_false_intervention_met'])}) |"
        )
    return "\n".join(lines)


def full_table(result: dict[str, Any]) -> str:
    lines = [
        "| scenario | distribution | condition | episodes | catastrophe rate | return (mean ± sd) "
        "| intervention rate | escalation rate | false intervention rate |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for res in result["scenarios"].values():
        for dist in ("in_distribution", "shifted"):
            for cond, m in res[dist].items():
                lines.append(
                    f"| {res['env']} | {dist.replace('_', ' ')} | {cond.replace('_', ' ')} | "
                    f"{m.get('episodes', '-')} | "
                    f"{_pct(m['catastrophe_rate'])} | {m['mean_return']:.3g} ± "
                    f"{m.get('return_std', float('nan')):.3g} | "
                    f"{_pct(m['intervention_rate'])} | {_pct(m['escalation_rate'])} | "
                    f"{_pct(m['false_intervention_rate']) if dist == 'in_distribution' else '-'} |"
                )
    return "\n".join(lines)


def scenario_notes(result: dict[str, Any]) -> str:
    lines = []
    for res in result["scenarios"].values():
        lines.append(
            f"* **{res['env']}** (shift: {res['shift']}; {res['seeds']} seeds, {res['seconds']:.0f} s): "
            + "; ".join(res.get("notes", []))
        )
    for name, why in result.get("skipped", {}).items():
        lines.append(f"* **{name}**: skipped ({why})")
    for name, why in result.get("failed", {}).items():
        lines.append(f"* **{name}**: FAILED ({why})")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    return "\n\n".join(
        [
            "## Safety: real environments under shift",
            "Regenerate with `interlock bench safety --json safety.json` (about ten minutes on 2 cores; "
            "`--quick` is the seconds-long CI smoke run). Every guarded decision goes through "
            "`interlock.engine.Guard` with the configs users write.",
            "### Against the targets",
            targets_table(result),
            f"![catastrophe rate, unguarded vs guarded]({IMG_CATASTROPHES})",
            f"![mean return, unguarded vs guarded]({IMG_RETURN})",
            "### Every figure",
            full_table(result),
            "### Scenarios",
            scenario_notes(result),
            DEFINITIONS,
        ]
    )


def plots(result: dict[str, Any], img_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    img_dir.mkdir(parents=True, exist_ok=True)
    scen = list(result["scenarios"].values())
    names = [r["env"].replace(" -> ", "\n-> ") for r in scen]
    colors = {"unguarded": "#c0392b", "guarded": "#2471a3"}
    out = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    x = np.arange(len(scen))
    for ax, dist, title in zip(
        axes, ("in_distribution", "shifted"), ("in distribution", "under shift"), strict=True
    ):
        for k, cond in enumerate(("unguarded", "guarded")):
            vals = [100 * r[dist][cond]["catastrophe_rate"] for r in scen]
            bars = ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=cond, color=colors[cond])
            ax.bar_label(bars, fmt="%.0f%%", fontsize=8, padding=2)
        ax.set_xticks(x, names, fontsize=8)
        ax.set_title(f"catastrophe rate, {title}")
        ax.set_ylim(0, 110)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("episodes with a catastrophe (%)")
    axes[0].legend()
    out.append(save_figure(fig, img_dir / Path(IMG_CATASTROPHES).name))

    fig, axes = plt.subplots(1, len(scen), figsize=(3.9 * max(len(scen), 1), 3.9), squeeze=False)
    shades = {"unguarded": colors["unguarded"], "guarded": colors["guarded"]}
    for ax, r in zip(axes[0], scen, strict=True):
        conds = list(r["in_distribution"])
        width = 0.8 / len(conds)
        for k, cond in enumerate(conds):
            vals = [r[dist][cond]["mean_return"] for dist in ("in_distribution", "shifted")]
            bars = ax.bar(
                np.arange(2) + (k - (len(conds) - 1) / 2) * width,
                vals,
                width,
                color=shades.get(cond, "#85c1e9"),
                label=cond.replace("guarded_", "guarded, ").replace("_", " "),
            )
            ax.bar_label(
                bars, labels=[f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" for v in vals], fontsize=7
            )
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(range(2), ["in distribution", "under shift"], fontsize=8)
        ax.set_title(r["env"], fontsize=9)
        ax.margins(y=0.2)
        ax.grid(axis="y", alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8)
    axes[0][0].set_ylabel("mean episode return")
    out.append(save_figure(fig, img_dir / Path(IMG_RETURN).name, rect=(0, 0.07, 1, 1)))
    return out


def write(result: dict[str, Any], docs: Path) -> Path:
    """Plots under ``docs/img`` and the ``safety`` section of ``docs/benchmarks.md``."""
    from interlock.bench.docs import write_docs_section

    plots(result, docs / "img")
    return write_docs_section(docs / "benchmarks.md", "safety", markdown(result))


def summary_text(result: dict[str, Any]) -> str:
    lines = [
        f"{'scenario':36s} {'shift: unguarded -> guarded':>28s} {'in-dist return':>15s} {'false int.':>10s}"
    ]
    for res in result["scenarios"].values():
        s, sh = res["score"], res["shifted"]
        lines.append(
            f"{res['env']:36s} {_pct(sh['unguarded']['catastrophe_rate']):>13s} -> "
            f"{_pct(sh['guarded']['catastrophe_rate']):<11s} "
            f"{_pct(s['in_distribution_return_vs_unguarded']):>15s} "
            f"{_pct(s['in_distribution_false_intervention_rate']):>10s}"
        )
    for name, why in result.get("skipped", {}).items():
        lines.append(f"{name}: skipped ({why})")
    for name, why in result.get("failed", {}).items():
        lines.append(f"{name}: FAILED ({why})")
    return "\n".join(lines)
