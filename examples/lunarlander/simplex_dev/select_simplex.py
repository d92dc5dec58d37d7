"""Table of the Simplex design study (development seeds) and the selection of RULE.md, section 2.

python examples/lunarlander/simplex_dev/select_simplex.py > examples/lunarlander/simplex_dev/RESULTS.md

Runs (each a JSON of ``python -m interlock.bench.safety.lunarlander --variant V``): ``shield_h8``
(with the unguarded cells), ``simplex`` and ``simplex_only`` with the pooled shift threshold
(thresholds_pooled.json, 300 calibration episodes: 309), ``simplex_grouped`` and
``simplex_cont_grouped`` with the per-policy threshold (thresholds_grouped.json, ``interlock calibrate
--group-by policy``, 750 episodes: 545.6). The h8 shield's actions do not depend on the threshold.
Round 2 (RULE.md "Round 2"): ``r2_simplex`` and ``r2_simplex_only``, the per-action detector scored
airborne and off the pad, and the robust backup trained 3M steps more (guarded cells only; the
unguarded cells are the same episodes as ``shield_h8``'s).
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = ("shield_h8", "simplex", "simplex_only", "simplex_grouped", "simplex_cont_grouped", "r2_simplex",
        "r2_simplex_only")
AGENTS = ("ppo", "heuristic", "ppo_eps20")


def cell_text(c: dict, unguarded_return: float) -> str:
    lo, hi = c["crash_wilson95"]
    delay = "-" if c["median_detection_delay"] is None else f"{c['median_detection_delay']:.0f}"
    return (
        f"{c['catastrophes_total']}/{c['episodes']} [{lo:.0%}, {hi:.0%}] / {c['mean_return']:.1f} "
        f"({c['mean_return'] / unguarded_return:.0%}) / {c['intervention_rate']:.2%} / trips "
        f"{c['shift_trip_rate']:.0%}, delay {delay}"
    )


def main() -> None:
    runs = {r: json.loads((HERE / f"{r}.json").read_text()) for r in RUNS}
    base = {k: v["unguarded"] for k, v in runs["shield_h8"].items()}
    print("# Simplex study, development seeds (wind 10000+, nominal 12000+, 40 episodes per cell)\n")
    print("Crashes [Wilson 95%] / mean return (% of unguarded) / interventions (verdict not ALLOW, % of")
    print("steps) / shift trips and median detection delay. Rule: RULE.md section 2.\n")
    print("| design | agent | nominal | wind |")
    print("|---|---|---|---|")
    for a in AGENTS:
        n, w = base[f"{a}/nominal"], base[f"{a}/wind"]
        print(f"| unguarded | {a} | {cell_text(n, n['mean_return'])} | {cell_text(w, w['mean_return'])} |")
    ranks, notes = {}, []
    for r in RUNS:
        why = []
        for a in AGENTS:
            n, w = runs[r][f"{a}/nominal"]["guarded"], runs[r][f"{a}/wind"]["guarded"]
            un, uw = base[f"{a}/nominal"], base[f"{a}/wind"]
            print(f"| {r} | {a} | {cell_text(n, un['mean_return'])} | {cell_text(w, uw['mean_return'])} |")
            if n["catastrophe_rate"] > un["catastrophe_rate"] + 0.025 + 1e-9:
                why.append(f"{a} nominal crashes {un['catastrophe_rate']:.1%} -> {n['catastrophe_rate']:.1%}")
            if n["mean_return"] < un["mean_return"] - 0.05 * abs(un["mean_return"]):
                why.append(f"{a} nominal return {n['mean_return']:.1f} < 95% of {un['mean_return']:.1f}")
            if n["intervention_rate"] > 0.02:
                why.append(f"{a} nominal interventions {n['intervention_rate']:.2%}")
        wind = sum(runs[r][f"{a}/wind"]["guarded"]["catastrophes_total"] for a in AGENTS)
        key = (
            wind,
            runs[r]["ppo/wind"]["guarded"]["catastrophes_total"],
            sum(runs[r][f"{a}/nominal"]["guarded"]["intervention_rate"] for a in AGENTS),
        )
        if not why:
            ranks[r] = key
        verdict = "eligible" if not why else "out: " + "; ".join(why)
        notes.append(f"* `{r}`: wind crashes {wind}/120; {verdict}")
    print("\n" + "\n".join(notes))
    best = min(ranks, key=ranks.get)
    config_wins = "shield_h8" in ranks and ranks["shield_h8"] <= ranks[best]
    choice = "shield_h8" if config_wins else best
    print(
        "\nDisclosure: `simplex` and `simplex_only` ran first, with the pooled threshold; after their "
        "results "
        "(the heuristic's\nfalse trips in nominal handed 6-11% of its steps to the backup) the per-policy "
        "threshold (`interlock calibrate\n--group-by`, added then) and the `_grouped` runs were added; "
        "`simplex_cont` ran only with it. The rule was not changed.\n\nRound 2 (`r2_*`) was designed "
        "after round 1's evaluation missed the targets (RULE.md \"Round 2\", written before its runs); it "
        "is evaluated once on new seeds."
    )
    print(f"\nChosen by the rule: **{choice}** (ranking key: wind crashes, PPO wind crashes, nominal "
          f"interventions summed: {ranks[choice]}).")


if __name__ == "__main__":
    main()
