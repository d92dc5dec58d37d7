"""Round 4 of the Simplex study (RULE.md "Round 4"): the table on development seeds and the rule's choice.

python examples/lunarlander/simplex_dev/select_r4.py > examples/lunarlander/simplex_dev/RESULTS_R4.md

Runs (``python -m interlock.bench.safety.lunarlander --seeds 40 --seed-offset -100000``, wind 10000+,
nominal 12000+): ``r3_epq`` (the shipped config) from rounds 3/3b plus ``r4dev_r3_epq_{dqn,a2c}.json``
for the two agents that became development agents in round 4; ``r4dev_<design>.json`` for the round-4
designs (all seven agents, with ``INTERLOCK_EXAMPLES`` pointing at a copy of the example whose
``interlock.yaml`` is ``r4_<design>.yaml`` here, thresholds ``thresholds_<design>.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
AGENTS = ("ppo", "heuristic", "ppo_eps20", "heuristic_hover", "dqn_dev", "dqn", "a2c")
#: Unguarded cells (the agent alone; the same episodes in every design).
UNGUARDED = ("shield_h8.json", "r2_simplex_dqn_dev.json", "r2_simplex_hover.json", "r4dev_r3_epq_dqn.json",
             "r4dev_r3_epq_a2c.json")
DESIGNS = {
    "r3_epq": ("r3_epq.json", "r3_epq_dqn_dev.json", "r3_epq_hover.json", "r4dev_r3_epq_dqn.json",
               "r4dev_r3_epq_a2c.json"),
    "r4_model": ("r4dev_r4_model.json",),
    "r4_dis": ("r4dev_r4_dis.json",),
    # RULE.md "Round 4 addendum": added after r4_model's and r4_dis's development results.
    "r4_dis2": ("r4dev_r4_dis2.json",),
    "r4_dis_q2": ("r4dev_r4_dis_q2.json",),
    # RULE.md "Round 4, second addendum": after r4_dis2's and r4_dis_q2's development results.
    "r4_dis_d2": ("r4dev_r4_dis_d2.json",),
    "r4_dis_d2_only": ("r4dev_r4_dis_d2_only.json",),
    "r4_dis_d2_oldshield": ("r4dev_r4_dis_d2_oldshield.json",),
}


def _load(files: tuple[str, ...], condition: str) -> dict[str, dict]:
    cells: dict[str, dict] = {}
    for f in files:
        path = HERE / f
        if not path.is_file():
            continue
        for key, conds in json.loads(path.read_text()).items():
            if condition in conds:
                cells[key] = conds[condition]
    return cells


def _cell(c: dict) -> str:
    delay = "-" if c["median_detection_delay"] is None else f"{c['median_detection_delay']:.0f}"
    trips = f"trips {c['shift_trip_rate']:.0%} ({delay})"
    return f"{c['catastrophes_total']}, {c['intervention_rate']:.2%}, {trips}"


def out_reasons(runs: dict[str, dict], base: dict[str, dict], agents: tuple[str, ...]) -> list[str]:
    """Why a design is not eligible (RULE.md, every round): in the nominal world, for any development agent,
    more crashes than unguarded + 2.5 points, return below 95% of unguarded, or interventions above 2%."""
    why = []
    for a in agents:
        n, un = runs[f"{a}/nominal"], base[f"{a}/nominal"]
        if n["catastrophe_rate"] > un["catastrophe_rate"] + 0.025 + 1e-9:
            why.append(f"{a} nominal crashes {un['catastrophe_rate']:.1%} -> {n['catastrophe_rate']:.1%}")
        if n["mean_return"] < un["mean_return"] - 0.05 * abs(un["mean_return"]):
            why.append(f"{a} nominal return {n['mean_return']:.1f} < 95% of {un['mean_return']:.1f}")
        if n["intervention_rate"] > 0.02:
            why.append(f"{a} nominal interventions {n['intervention_rate']:.2%}")
    return why


def main() -> None:
    base = _load(UNGUARDED, "unguarded")
    print("# Round 4, development seeds (wind 10000+, nominal 12000+, 40 episodes per cell)\n")
    print("Each cell: crashes out of 40, interventions (% of steps not ALLOW), shift trips (median delay).")
    print("Rule: RULE.md \"Round 4\".\n")
    print("| design | world | " + " | ".join(AGENTS) + " |")
    print("|---|---|" + "---|" * len(AGENTS))
    for world in ("nominal", "wind"):
        print(f"| unguarded | {world} | " + " | ".join(
            f"{base[f'{a}/{world}']['catastrophes_total']}, return {base[f'{a}/{world}']['mean_return']:.0f}"
            for a in AGENTS) + " |")
    ranks, notes = {}, []
    for design, files in DESIGNS.items():
        runs = _load(files, "guarded")
        if not all(f"{a}/{w}" in runs for a in AGENTS for w in ("nominal", "wind")):
            notes.append(f"* `{design}`: not run on every agent and world")
            continue
        for world in ("nominal", "wind"):
            print(f"| {design} | {world} | " + " | ".join(_cell(runs[f"{a}/{world}"]) for a in AGENTS) + " |")
        why = out_reasons(runs, base, AGENTS)
        wind = sum(runs[f"{a}/wind"]["catastrophes_total"] for a in AGENTS)
        interventions = sum(runs[f"{a}/nominal"]["intervention_rate"] for a in AGENTS)
        ranks[design] = (bool(why), wind if not why else interventions, interventions)
        verdict = "eligible" if not why else "out: " + "; ".join(why)
        notes.append(f"* `{design}`: wind crashes {wind}/{40 * len(AGENTS)}, nominal interventions summed "
                     f"{interventions:.2%}; {verdict}")
    print("\n" + "\n".join(notes))
    if not ranks:
        return
    best = min(ranks, key=ranks.get)
    if ranks[best][0]:
        print(f"\nNo design is eligible: by the rule the one with the fewest nominal interventions summed, "
              f"**{best}**, is chosen.")
    else:
        print(f"\nChosen by the rule: **{best}** (fewest wind crashes among the eligible; ties by nominal "
              "interventions).")


def round5() -> None:
    """Round 5 (RULE.md "Round 5"): runs stopped once the rule could no longer choose them."""
    r4 = _load(DESIGNS["r4_dis_d2_only"], "guarded")
    print("\n## Round 5 (RULE.md \"Round 5\"): the agent shielded after the trip\n")
    print("Wind crashes out of 40 per agent, against round 4's choice (`r4_dis_d2_only`). A design had to")
    print("reach at most 56 wind crashes over the seven agents; each run was stopped once its first agents")
    print("had passed that.\n")
    for design in ("r5_latch_h8", "r5_latch_h20"):
        path = HERE / f"r5dev_{design}.json"
        if not path.is_file():
            continue
        cells = {k: v["guarded"] for k, v in json.loads(path.read_text()).items()}
        wind = {k.split("/")[0]: c["catastrophes_total"] for k, c in cells.items() if k.endswith("/wind")}
        base = sum(r4[f"{a}/wind"]["catastrophes_total"] for a in wind)
        parts = ", ".join(
            f"{a} {n} (round 4: {r4[f'{a}/wind']['catastrophes_total']})" for a, n in wind.items()
        )
        print(f"* `{design}`: {parts}; {sum(wind.values())} against {base} on these agents: out.")


def _three_worlds(
    designs: dict[str, tuple[str, ...]], base: dict[str, dict], agents: tuple[str, ...]
) -> dict[str, dict]:
    """Print each design's rows (nominal, wind, weak main) and its notes; crashes summed per world and
    eligibility (:func:`out_reasons`) per design that ran everywhere."""
    worlds = ("nominal", "wind", "weak_main")
    totals: dict[str, dict] = {}
    notes = []
    for design, files in designs.items():
        runs = _load(files, "guarded")
        if not all(f"{a}/{w}" in runs for a in agents for w in worlds):
            notes.append(f"* `{design}`: not run on every agent and world")
            continue
        for world in worlds:
            print(f"| {design} | {world} | " + " | ".join(_cell(runs[f"{a}/{world}"]) for a in agents) + " |")
        why = out_reasons(runs, base, agents)
        totals[design] = {w: sum(runs[f"{a}/{w}"]["catastrophes_total"] for a in agents) for w in worlds}
        totals[design]["eligible"] = not why
        calm = [runs[f"{a}/nominal"] for a in agents]
        totals[design]["calm_trips"] = sum(round(c["shift_trip_rate"] * c["episodes"]) for c in calm)
        totals[design]["calm_interventions"] = sum(100 * c["intervention_rate"] for c in calm)
        t, n = totals[design], 40 * len(agents)
        notes.append(f"* `{design}`: weak-main crashes {t['weak_main']}/{n}, wind {t['wind']}/{n}; "
                     + ("eligible" if not why else "out: " + "; ".join(why)))
    print("\n" + "\n".join(notes))
    return totals


def _head(agents: tuple[str, ...], base: dict[str, dict], worlds: tuple[str, ...]) -> None:
    """A table's header and its unguarded rows (crashes out of 40; "-" where a cell was not run)."""
    print("| design | world | " + " | ".join(agents) + " |")
    print("|---|---|" + "---|" * len(agents))
    for world in worlds:
        print(f"| unguarded | {world} | " + " | ".join(
            str(base[f"{a}/{world}"]["catastrophes_total"]) if f"{a}/{world}" in base else "-" for a in agents
        ) + " |")


def round5b() -> None:
    """Round 5b (RULE.md "Round 5b"): a signed CUSUM beside round 4's detector, three worlds."""
    base = _load((*UNGUARDED, "r5dev_r4_weak_main.json"), "unguarded")
    designs = {
        "r4_dis_d2_only": ("r4dev_r4_dis_d2_only.json", "r5dev_r4_weak_main.json"),
        "r5b_engine": ("r5dev_r5b_engine.json",),
        "r5b_engine_vy": ("r5dev_r5b_engine_vy.json",),
    }
    print("\n## Round 5b (RULE.md \"Round 5b\"): a signed CUSUM for the engine\n")
    print("Each cell: crashes out of 40, interventions, shift trips (median delay).\n")
    print("| design | world | " + " | ".join(AGENTS) + " |")
    print("|---|---|" + "---|" * len(AGENTS))
    print("| unguarded | weak_main | " + " | ".join(
        str(base[f"{a}/weak_main"]["catastrophes_total"]) for a in AGENTS) + " |")
    totals = _three_worlds(designs, base, AGENTS)
    r4 = totals.get("r4_dis_d2_only")
    if r4 is None:
        return
    ok = [d for d, t in totals.items() if d != "r4_dis_d2_only" and t["eligible"]
          and t["weak_main"] <= r4["weak_main"] - 10 and t["wind"] <= r4["wind"] + 5]
    choice = min(ok, key=lambda d: totals[d]["weak_main"]) if ok else "r4_dis_d2_only"
    print(f"\nChosen by the rule: **{choice}**.")


def round6() -> None:
    """Round 6 (RULE.md "Round 6"): the signed monitor on the engines only, nine agents, three worlds."""
    agents = (*AGENTS, "dqn_holdout", "a2c_holdout")
    base = _load((*UNGUARDED, "r5dev_r4_weak_main.json", "r6dev_r5b_holdouts.json"), "unguarded")
    designs = {
        "r5b_engine": ("r5dev_r5b_engine.json", "r6dev_r5b_holdouts.json"),
        "r6_engines": ("r6dev_r6_engines.json",),
    }
    worlds = ("nominal", "wind", "weak_main")
    print("\n## Round 6 (RULE.md \"Round 6\"): the signed monitor on the engines only\n")
    print("Each cell: crashes out of 40, interventions, shift trips (median delay).\n")
    _head(agents, base, worlds)
    totals = _three_worlds(designs, base, agents)
    if len(totals) < 2:
        return
    old, new = totals["r5b_engine"], totals["r6_engines"]
    better = new["eligible"] and (
        not old["eligible"]
        or (new["weak_main"] <= old["weak_main"] + 5 and new["wind"] <= old["wind"] + 5)
    )
    print(f"\nChosen by the rule: **{'r6_engines' if better else 'r5b_engine'}**.")


def round7() -> None:
    """Round 7 (RULE.md "Round 7"): per-agent calibration, the six ONNX development agents, three worlds."""
    agents = ("ppo", "dqn", "a2c", "dqn_dev", "dqn_holdout", "a2c_holdout")
    base = _load(("r7dev_p1_500_02.json",), "unguarded")
    designs = {
        "r5b_engine": ("r5dev_r5b_engine.json", "r6dev_r5b_holdouts.json"),
        "p1_200_05": ("r7dev_p1_200_05.json",),
        "p1_500_02": ("r7dev_p1_500_02.json",),
    }
    worlds = ("nominal", "wind", "weak_main")
    print("\n## Round 7 (RULE.md \"Round 7\"): each agent's monitors calibrated on its own calm episodes\n")
    print("Each cell: crashes out of 40, interventions, shift trips (median delay). Eligible: every round's")
    print("check (`out_reasons`) and, new in round 7, nominal shift trips <= 5% per agent.\n")
    _head(agents, base, worlds)
    totals = _three_worlds(designs, base, agents)
    for design, files in designs.items():
        runs = _load(files, "guarded")
        tripped = [a for a in agents if runs[f"{a}/nominal"]["shift_trip_rate"] > 0.05 + 1e-9]
        if tripped and design in totals:
            totals[design]["eligible"] = False
            print(f"* `{design}`: nominal trips above 5% for " + ", ".join(tripped))
    ok = [d for d, t in totals.items() if t["eligible"]]
    pool = ok or list(totals)
    choice = min(pool, key=lambda d: totals[d]["wind"] + totals[d]["weak_main"])
    print(f"\nChosen by the rule: **{choice}**" + ("" if ok else " (no design eligible)") + ".")


def _challenge(
    title: str,
    incumbent: tuple[str, str],
    challenger: tuple[str, str],
    margin: int,
    wind_margin: int | None = None,
    calm: str | None = None,
) -> None:
    """Rounds 8, 10 and 11: a challenger replaces the incumbent iff eligible (round 7's rule) and its wind +
    weak-main crashes over round 7's six agents are at most ``incumbent's + margin`` (negative: fewer),
    and, with ``wind_margin``, its wind crashes at most the incumbent's + ``wind_margin``; with ``calm``
    ("calm_trips" or "calm_interventions", summed over the agents) no more of it than the incumbent."""
    agents = ("ppo", "dqn", "a2c", "dqn_dev", "dqn_holdout", "a2c_holdout")
    base = _load(("r7dev_p1_500_02.json",), "unguarded")
    designs = {name: (f,) for name, f in (incumbent, challenger)}
    print(f"\n## {title}\n")
    print("Each cell: crashes out of 40, interventions, shift trips (median delay).\n")
    _head(agents, base, ("nominal", "wind", "weak_main"))
    totals = _three_worlds(designs, base, agents)
    if len(totals) < 2:
        return
    old, new = (totals[d]["wind"] + totals[d]["weak_main"] for d in designs)
    chosen = totals[challenger[0]]["eligible"] and new <= old + margin
    if wind_margin is not None:
        chosen = chosen and totals[challenger[0]]["wind"] <= totals[incumbent[0]]["wind"] + wind_margin
    if calm is not None:
        mine, theirs = totals[challenger[0]][calm], totals[incumbent[0]][calm]
        print(f"\nCalm ({calm.replace('_', ' ')}, summed): {mine:.2f} against {theirs:.2f}.")
        chosen = chosen and mine <= theirs
    print(f"\nWind + weak-main crashes: {new} against {old}. Chosen by the rule: "
          f"**{challenger[0] if chosen else incumbent[0]}**.")


def round8() -> None:
    """Round 8 (RULE.md "Round 8"): round 7's choice with a retrained backup (at least 10 fewer crashes)."""
    _challenge("Round 8 (RULE.md \"Round 8\"): the retrained backup `robust2_agent.onnx`",
               ("p1_500_02", "r7dev_p1_500_02.json"),
               ("p1_500_02_robust2", "r8dev_p1_500_02_robust2.json"), -10)


def round10() -> None:
    """Round 10 (RULE.md "Round 10"): an intervention budget (at most 5 more crashes)."""
    _challenge("Round 10 (RULE.md \"Round 10\"): an intervention budget of 0.01 per monitor",
               ("p1_500_02_robust2", "r8dev_p1_500_02_robust2.json"),
               ("p1_500_02_b01_robust2", "r10dev_p1_500_02_b01_robust2.json"), 5)


def round11() -> None:
    """Round 11 (RULE.md "Round 11"): a main-engine vy monitor (at least 10 fewer, wind at most 5 more)."""
    _challenge("Round 11 (RULE.md \"Round 11\"): a third monitor `thrust` (main-engine vy alone)",
               ("p1_500_02_b01_robust2", "r10dev_p1_500_02_b01_robust2.json"),
               ("p1_500_02_b01_robust2_thrust", "r11dev_p1_500_02_b01_robust2_thrust.json"), -10, 5)


def round12() -> None:
    """Round 12 (RULE.md "Round 12"): joint calibration (calm trips no more, at most 5 more crashes)."""
    _challenge("Round 12 (RULE.md \"Round 12\"): the three monitors calibrated together (`--joint`)",
               ("p1_500_02_b01_robust2_thrust", "r11dev_p1_500_02_b01_robust2_thrust.json"),
               ("p1_500_02_b01j_robust2_thrust", "r12dev_p1_500_02_b01j_robust2_thrust.json"), 5,
               calm="calm_trips")


def round13() -> None:
    """Round 13 (RULE.md "Round 13"): the handover while a statistic is above its threshold."""
    _challenge("Round 13 (RULE.md \"Round 13\"): the handover not latched",
               ("p1_500_02_b01j_robust2_thrust", "r12dev_p1_500_02_b01j_robust2_thrust.json"),
               ("p1_500_02_b01j_robust2_thrust_live", "r13dev_p1_500_02_b01j_robust2_thrust_live.json"), 5,
               calm="calm_interventions")


def round14() -> None:
    """Round 14 (RULE.md "Round 14"): a weak-engine backup on the thrust trip (at least 10 fewer)."""
    _challenge("Round 14 (RULE.md \"Round 14\"): a weak-engine backup chosen by the `thrust` trip",
               ("p1_500_02_b01j_robust2_thrust_live", "r13dev_p1_500_02_b01j_robust2_thrust_live.json"),
               ("p1_500_02_b01j_robust2_thrust_live_weak",
                "r14dev_p1_500_02_b01j_robust2_thrust_live_weak.json"), -10, 5)


def round15() -> None:
    """Round 15 (RULE.md "Round 15"): a preflight probe; at least 20 fewer weak-main crashes, wind at most 5
    more; of two qualifying designs the fewer weak-main crashes."""
    agents = ("ppo", "dqn", "a2c", "dqn_dev", "dqn_holdout", "a2c_holdout")
    base = _load(("r7dev_p1_500_02.json",), "unguarded")
    incumbent = "p1_500_02_b01j_robust2_thrust_live"
    designs = {
        incumbent: ("r13dev_p1_500_02_b01j_robust2_thrust_live.json",),
        "P0 (probe)": ("r15dev_P0.json",),
        "P (probe + early rule)": ("r15dev_P.json",),
    }
    print('\n## Round 15 (RULE.md "Round 15"): a preflight probe of the main engine\n')
    print("Each cell: crashes out of 40, interventions, shift trips (median delay).\n")
    _head(agents, base, ("nominal", "wind", "weak_main"))
    totals = _three_worlds(designs, base, agents)
    if len(totals) < len(designs):
        return
    old = totals[incumbent]
    ok = [
        d for d in designs
        if d != incumbent and totals[d]["eligible"]
        and totals[d]["weak_main"] <= old["weak_main"] - 20 and totals[d]["wind"] <= old["wind"] + 5
    ]
    def fewest(d: str) -> tuple[int, bool]:
        return totals[d]["weak_main"], d != "P (probe + early rule)"

    choice = min(ok, key=fewest) if ok else incumbent
    print(f"\nQualifying (eligible, weak main <= {old['weak_main'] - 20}, wind <= {old['wind'] + 5}): "
          f"{', '.join(ok) or 'none'}. Chosen by the rule: **{choice}**.")


def round16() -> None:
    """Round 16 (RULE.md "Round 16"): round 15's ``P`` on 200 fresh calm seeds per agent (52000+), unguarded
    and guarded on the same seeds; eligible by round 7's rule (and calm trips at most 5%)."""
    agents = ("ppo", "dqn", "a2c", "dqn_dev", "dqn_holdout", "a2c_holdout")
    path = HERE / "r16dev_P_calm.json"
    if not path.is_file():
        return
    runs = json.loads(path.read_text())
    print('\n## Round 16 (RULE.md "Round 16"): round 15\'s `P` on 200 fresh calm seeds per agent\n')
    print("| agent | unguarded: crashes, return | P: crashes, return (share), interventions, trips |")
    print("|---|---|---|")
    for a in agents:
        u, g = runs[f"{a}/nominal"]["unguarded"], runs[f"{a}/nominal"]["guarded"]
        share = g["mean_return"] / u["mean_return"] if u["mean_return"] > 0 else float("nan")
        print(f"| {a} | {u['catastrophes_total']}, {u['mean_return']:.1f} | {g['catastrophes_total']}, "
              f"{g['mean_return']:.1f} ({share:.1%}), {g['intervention_rate']:.2%}, "
              f"{g['shift_trip_rate']:.1%} |")
    guarded = {k: v["guarded"] for k, v in runs.items()}
    base = {k: v["unguarded"] for k, v in runs.items()}
    why = out_reasons(guarded, base, agents)
    why += [f"{a} calm trips {guarded[f'{a}/nominal']['shift_trip_rate']:.1%}" for a in agents
            if guarded[f"{a}/nominal"]["shift_trip_rate"] > 0.05]
    print("\n" + ("Eligible: **P** replaces round 13." if not why else "Not eligible (" + "; ".join(why)
                                                                       + "): round 13 stays."))


def round17() -> None:
    """Round 17 (RULE.md "Round 17"): the gated probe ``G`` on fresh development seeds (wind, weak main 40
    episodes at 70000+/71000+, round 13 beside it; calm 200 episodes at 72000+)."""
    title = "a probe gated on the agent's main-engine use"
    _probe_round("r17dev", "G", f'Round 17 (RULE.md "Round 17"): {title}')


def round18() -> None:
    """Round 18 (RULE.md "Round 18"): ``G2`` (the early bar set on its window, per-agent thresholds calibrated
    under the probe) on fresh development seeds (75000+/76000+, calm 77000+)."""
    title = "the early bar on its window, thresholds under the probe"
    _probe_round("r18dev", "G2", f'Round 18 (RULE.md "Round 18"): {title}')


def round19() -> None:
    """Round 19 (RULE.md "Round 19"): ``G3`` (the probe goes on while its evidence is undecided) beside round
    18's ``G2`` on fresh development seeds (80000+/81000+, calm 82000+)."""
    title = "the probe goes on while its evidence is undecided"
    _probe_round("r19dev", "G3", f'Round 19 (RULE.md "Round 19"): {title}', baseline="G2", margin=15)


def _shift_rows(agents: tuple[str, ...], rows: tuple) -> None:
    """The table's header and its wind and weak-main rows: crashes per agent of each ``(name, runs,
    condition)``, and their total."""
    print("| world | condition | " + " | ".join(agents) + " | total |")
    print("|---|---|" + "---|" * (len(agents) + 1))
    for world in ("wind", "weak_main"):
        for name, runs, cond in rows:
            cells = [runs[f"{a}/{world}"][cond]["catastrophes_total"] for a in agents]
            print(f"| {world} | {name} | " + " | ".join(map(str, cells)) + f" | {sum(cells)} |")


def _calm_rows(agents: tuple[str, ...], rows: tuple) -> None:
    """The table's calm rows: crashes and return per agent of each ``(name, runs, condition)``, and the
    guarded's interventions and trips."""
    for name, runs, cond in rows:
        cells = [runs[f"{a}/nominal"][cond] for a in agents]
        print(f"| nominal | {name} | " + " | ".join(
            f"{c['catastrophes_total']}, return {c['mean_return']:.1f}"
            + ("" if name == "unguarded"
               else f", {c['intervention_rate']:.2%}, trips {c['shift_trip_rate']:.1%}")
            for c in cells) + " | |")


def _worse_than_base(agents: tuple[str, ...], calm: dict, base_calm: dict, base: str,
                     relative_return: bool = False, intervention_cap: float = 1.0,
                     cap_at_least_base: bool = False, trips_at_least_base: bool = False) -> list[str]:
    """Rounds 20-27: where a design's calm cell is worse than the current design's on the same seeds:
    crashes over ``base``'s + 2.5 points, return under ``base``'s - 5.0 (round 20: - 3% of it), more
    than ``base``'s + 0.5 points of interventions (or ``intervention_cap``; round 27: the larger of the
    cap and ``base``'s own), trips over 5% (round 28: over the larger of 5% and ``base``'s own)."""
    why = []
    for a in agents:
        new, old = calm[f"{a}/nominal"]["guarded"], base_calm[f"{a}/nominal"]["guarded"]
        if new["catastrophe_rate"] > old["catastrophe_rate"] + 0.025:
            why.append(f"{a} crashes {old['catastrophe_rate']:.1%} -> {new['catastrophe_rate']:.1%}")
        margin = 0.03 * abs(old["mean_return"]) if relative_return else 5.0
        if new["mean_return"] < old["mean_return"] - margin:
            why.append(f"{a} return {new['mean_return']:.1f} < {base}'s {old['mean_return']:.1f} "
                       f"- {margin:.1f}")
        cap = max(intervention_cap, old["intervention_rate"]) if cap_at_least_base else intervention_cap
        if new["intervention_rate"] > min(cap, old["intervention_rate"] + 0.005):
            why.append(f"{a} interventions {new['intervention_rate']:.2%} ({base} "
                       f"{old['intervention_rate']:.2%})")
        trip_cap = max(0.05, old["shift_trip_rate"]) if trips_at_least_base else 0.05
        if new["shift_trip_rate"] > trip_cap:
            why.append(f"{a} trips {new['shift_trip_rate']:.1%}")
    return why


def round20(n: int = 20, base: str = "G2", design: str = "G3", fewer_by: int = 15,
            agents: tuple[str, ...] = ("ppo", "dqn", "a2c", "dqn_dev", "dqn_holdout", "a2c_holdout"),
            fewer_in: str = "weak_main") -> None:
    """Rounds 20, 21, 23 and 27 (RULE.md): ``design`` against ``base`` on fresh development seeds (round 20:
    85000+/86000+, calm 87000+; round 21: 90000+/91000+, calm 92000+; round 23, ``G4`` against ``G3``:
    95000+/96000+, calm 97000+; round 27, ``G7`` against ``G3``: 46000+/47000+, calm 48000+; round 30,
    ``G9`` against ``G8``, eight agents: 58000+/59000+, calm 60000+; round 31, ``G10`` against ``G8``:
    61000+/62000+, calm 63000+; round 32, ``G11`` against ``G8``: 64000+/65000+, calm 66000+), the calm
    cells judged against ``base``'s on the same seeds; the return margin is 97% of ``base``'s (round 20),
    ``base``'s - 5.0 (rounds 21, 23, 27, 30-32, 34); from round 30 the trips cap is the larger of 5% and
    ``base``'s own. ``fewer_in``: the world whose crashes must fall by ``fewer_by`` (the other may rise by
    at most 5): weak main, or wind (round 34, ``G12`` against ``G11``: 67000+/68000+, calm 69000+)."""
    names = (f"{design}_shift", f"{design}_calm", f"{base}_shift", f"{base}_calm")
    paths = [HERE / f"r{n}dev_{k}.json" for k in names]
    if not all(p.is_file() for p in paths):
        return
    shift, calm, base_shift, base_calm = (json.loads(p.read_text()) for p in paths)
    print(f'\n## Round {n} (RULE.md "Round {n}"): {design} against {base}, calm judged against {base}\n')
    print("Crashes out of 40 (wind, weak main) and out of 200 (calm); the guarded's interventions, trips.\n")
    _shift_rows(agents, (("unguarded", shift, "unguarded"), (base, base_shift, "guarded"),
                         (design, shift, "guarded")))
    _calm_rows(agents, (("unguarded", calm, "unguarded"), (base, base_calm, "guarded"),
                        (design, calm, "guarded")))
    why = _worse_than_base(agents, calm, base_calm, base, relative_return=n == 20, intervention_cap=0.02,
                           cap_at_least_base=n >= 27, trips_at_least_base=n >= 30)
    weak, wind = ({k: sum(runs[f"{a}/{w}"]["guarded"]["catastrophes_total"] for a in agents)
                   for k, runs in ((base, base_shift), (design, shift))} for w in ("weak_main", "wind"))
    down, other = (weak, wind) if fewer_in == "weak_main" else (wind, weak)
    fewer = down[design] <= down[base] - fewer_by and other[design] <= other[base] + 5
    print(f"\nCalm against {base}: " + ("no worse" if not why else "worse (" + "; ".join(why) + ")")
          + f". Weak main {weak[design]} against {base}'s {weak[base]} (at most "
          f"{weak[base] - (fewer_by if fewer_in == 'weak_main' else -5)}), wind {wind[design]} against "
          f"{wind[base]} (at most {wind[base] + (-fewer_by if fewer_in == 'wind' else 5)}). "
          "Chosen by the rule: **"
          + (design if fewer and not why else base) + "**.")


def round25(n: int = 25, design: str = "G5", what: str = "handover released on the ground") -> None:
    """Rounds 25-26 (RULE.md): ``design`` against ``G3`` on fresh development seeds (round 25, ``G5``, the
    live handover released on the ground: 40000+/41000+, calm 42000+; round 26, ``G6``, released only
    down and at rest: 43000+/44000+, calm 45000+); calm no worse per agent, calm interventions lower in
    sum, wind and weak main at most 5 more crashes each."""
    agents = ("ppo", "dqn", "a2c", "dqn_dev", "dqn_holdout", "a2c_holdout")
    paths = [HERE / f"r{n}dev_{k}.json" for k in (f"{design}_shift", f"{design}_calm", "G3_shift", "G3_calm")]
    if not all(p.is_file() for p in paths):
        return
    shift, calm, base_shift, base_calm = (json.loads(p.read_text()) for p in paths)
    print(f'\n## Round {n} (RULE.md "Round {n}"): {design} ({what}) against G3\n')
    print("Crashes out of 40 (wind, weak main) and out of 200 (calm); the guarded's interventions, trips.\n")
    _shift_rows(agents, (("unguarded", shift, "unguarded"), ("G3", base_shift, "guarded"),
                         (design, shift, "guarded")))
    _calm_rows(agents, (("unguarded", calm, "unguarded"), ("G3", base_calm, "guarded"),
                        (design, calm, "guarded")))
    why = _worse_than_base(agents, calm, base_calm, "G3")
    total = {k: sum(r[f"{a}/nominal"]["guarded"]["intervention_rate"] for a in agents)
             for k, r in (("G3", base_calm), (design, calm))}
    crashes = {(k, w): sum(r[f"{a}/{w}"]["guarded"]["catastrophes_total"] for a in agents)
               for k, r in (("G3", base_shift), (design, shift)) for w in ("wind", "weak_main")}
    ok = (not why and total[design] < total["G3"]
          and all(crashes[design, w] <= crashes["G3", w] + 5 for w in ("wind", "weak_main")))
    print("\nCalm against G3: " + ("no worse" if not why else "worse (" + "; ".join(why) + ")")
          + f". Calm interventions summed {total[design]:.2%} against {total['G3']:.2%}; wind "
          f"{crashes[design, 'wind']} against {crashes['G3', 'wind']}, weak main "
          f"{crashes[design, 'weak_main']} against {crashes['G3', 'weak_main']}. Chosen by the rule: **"
          + (design if ok else "G3") + "**.")


def round28() -> None:
    """Round 28 (RULE.md "Round 28"): ``G8`` (``G7`` with the handover released at rest) against ``G7`` on
    fresh development seeds (55000+/56000+, calm 57000+), eight agents (the six development agents and
    ``dqn_holdout2``, ``dqn_holdout5``); calm no worse per agent, calm interventions summed at least 0.5
    points lower, wind and weak main at most 5 more crashes each."""
    agents = ("ppo", "dqn", "a2c", "dqn_dev", "dqn_holdout", "a2c_holdout", "dqn_holdout2", "dqn_holdout5")
    paths = {k: HERE / f"r28dev_{k}.json" for k in ("G8_shift", "G8_calm", "G7_shift", "G7_calm")}
    if not all(p.is_file() for p in paths.values()):
        return
    shift, calm, base_shift, base_calm = (json.loads(paths[k].read_text())
                                          for k in ("G8_shift", "G8_calm", "G7_shift", "G7_calm"))
    print('\n## Round 28 (RULE.md "Round 28"): G8 (the handover released at rest) against G7\n')
    print("Crashes out of 40 (wind, weak main) and out of 200 (calm); the guarded's interventions, trips.\n")
    _shift_rows(agents, (("unguarded", shift, "unguarded"), ("G7", base_shift, "guarded"),
                         ("G8", shift, "guarded")))
    _calm_rows(agents, (("unguarded", calm, "unguarded"), ("G7", base_calm, "guarded"),
                        ("G8", calm, "guarded")))
    why = _worse_than_base(agents, calm, base_calm, "G7", trips_at_least_base=True)
    total = {k: sum(r[f"{a}/nominal"]["guarded"]["intervention_rate"] for a in agents)
             for k, r in (("G7", base_calm), ("G8", calm))}
    crashes = {(k, w): sum(r[f"{a}/{w}"]["guarded"]["catastrophes_total"] for a in agents)
               for k, r in (("G7", base_shift), ("G8", shift)) for w in ("wind", "weak_main")}
    ok = (not why and total["G8"] <= total["G7"] - 0.005
          and all(crashes["G8", w] <= crashes["G7", w] + 5 for w in ("wind", "weak_main")))
    print("\nCalm against G7: " + ("no worse" if not why else "worse (" + "; ".join(why) + ")")
          + f". Calm interventions summed {total['G8']:.2%} against {total['G7']:.2%} (at most "
          f"{total['G7'] - 0.005:.2%}); wind {crashes['G8', 'wind']} against {crashes['G7', 'wind']}, "
          f"weak main {crashes['G8', 'weak_main']} against {crashes['G7', 'weak_main']}. "
          "Chosen by the rule: **" + ("G8" if ok else "G7") + "**.")


def _probe_round(prefix: str, design: str, title: str, baseline: str = "r13", margin: int = 20) -> None:
    """Rounds 17-19: the design's wind, weak-main (40) and calm (200) cells beside the current design's
    (round 13's, from round 19 round 18's ``G2``); the rule."""
    agents = ("ppo", "dqn", "a2c", "dqn_dev", "dqn_holdout", "a2c_holdout")
    paths = [HERE / f"{prefix}_{k}.json" for k in (f"{design}_shift", f"{design}_calm", f"{baseline}_shift")]
    current = "round 13" if baseline == "r13" else f"round 18's {baseline}"
    if not all(p.is_file() for p in paths):
        return
    shift, calm, r13 = (json.loads(p.read_text()) for p in paths)
    print(f"\n## {title}\n")
    print(f"Crashes out of 40 (wind, weak main) and out of 200 (calm); {design}'s interventions and trips.\n")
    _shift_rows(agents, (("unguarded", shift, "unguarded"), (current, r13, "guarded"),
                         (design, shift, "guarded")))
    for name, cond in (("unguarded", "unguarded"), (design, "guarded")):
        cells = [calm[f"{a}/nominal"][cond] for a in agents]
        print(f"| nominal | {name} | " + " | ".join(
            f"{c['catastrophes_total']}, return {c['mean_return']:.1f}"
            + (f", {c['intervention_rate']:.2%}, trips {c['shift_trip_rate']:.1%}" if name == design else "")
            for c in cells) + " | |")
    guarded = {k: v["guarded"] for k, v in calm.items()}
    base = {k: v["unguarded"] for k, v in calm.items()}
    why = out_reasons(guarded, base, agents)
    why += [f"{a} calm trips {guarded[f'{a}/nominal']['shift_trip_rate']:.1%}" for a in agents
            if guarded[f"{a}/nominal"]["shift_trip_rate"] > 0.05]
    weak, wind = ({n: sum(runs[f"{a}/{w}"][c]["catastrophes_total"] for a in agents)
                   for n, runs, c in (("r13", r13, "guarded"), ("new", shift, "guarded"))}
                  for w in ("weak_main", "wind"))
    fewer = weak["new"] <= weak["r13"] - margin and wind["new"] <= wind["r13"] + 5
    print("\nCalm: " + ("eligible" if not why else "not eligible (" + "; ".join(why) + ")")
          + f". Weak main {weak['new']} against {current}'s {weak['r13']} (at most {weak['r13'] - margin}), "
          f"wind {wind['new']} against {wind['r13']} (at most {wind['r13'] + 5}). Chosen by the rule: **"
          + (design if fewer and not why else current) + "**.")


if __name__ == "__main__":
    main()
    round5()
    round5b()
    round6()
    round7()
    round8()
    round10()
    round11()
    round12()
    round13()
    round14()
    round15()
    round16()
    round17()
    round18()
    round19()
    round20()
    round20(21)
    round20(23, base="G3", design="G4", fewer_by=5)
    round25()
    round25(26, "G6", "handover released only down and at rest")
    round20(27, base="G3", design="G7", fewer_by=5)
    round28()
    eight = ("ppo", "dqn", "a2c", "dqn_dev", "dqn_holdout", "a2c_holdout", "dqn_holdout2", "dqn_holdout5")
    round20(30, base="G8", design="G9", fewer_by=5, agents=eight)
    round20(31, base="G8", design="G10", fewer_by=5, agents=eight)
    round20(32, base="G8", design="G11", fewer_by=5, agents=eight)
    round20(34, base="G11", design="G12", fewer_by=10, agents=eight, fewer_in="wind")
