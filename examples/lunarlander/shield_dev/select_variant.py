"""Table of the shield design study (development seeds) and the pre-registered selection (RULE.md).

python examples/lunarlander/shield_dev/select_variant.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("config", "repeat", "h8", "gated", "h8_gated", "margin", "majority")
STAND_INS = ("heuristic", "ppo_eps20")
AGENTS = ("ppo", *STAND_INS)


def load(name: str) -> dict:
    path = HERE / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    base = load("unguarded")
    rows, eligible = [], {}
    print(
        "| variant | agent | nominal: crashes [Wilson 95%] / return (% of unguarded) / interventions "
        "| wind: same |"
    )
    print("|---|---|---|---|")
    for agent in AGENTS:
        nu, wu = base[f"{agent}/nominal"]["unguarded"], base[f"{agent}/wind"]["unguarded"]
        print(
            f"| unguarded | {agent} | {nu['catastrophes_total']}/40 [{nu['crash_wilson95'][0]:.0%}, "
            f"{nu['crash_wilson95'][1]:.0%}] / {nu['mean_return']:.1f} | {wu['catastrophes_total']}/40 "
            f"[{wu['crash_wilson95'][0]:.0%}, {wu['crash_wilson95'][1]:.0%}] / {wu['mean_return']:.1f} |"
        )
    for v in VARIANTS:
        res = load(v)
        ok, why = True, []
        for agent in AGENTS:
            cells = {w: res.get(f"{agent}/{w}", {}).get("guarded") for w in ("nominal", "wind")}
            un = base[f"{agent}/nominal"]["unguarded"]
            text = []
            for w, c in cells.items():
                if c is None:
                    text.append("not run")
                    continue
                ub = base[f"{agent}/{w}"]["unguarded"]["mean_return"]
                text.append(
                    f"{c['catastrophes_total']}/{c['episodes']} "
                    f"[{c['crash_wilson95'][0]:.0%}, {c['crash_wilson95'][1]:.0%}] / "
                    f"{c['mean_return']:.1f} "
                    f"({c['mean_return'] / ub:.0%}) / {c['intervention_rate']:.2%}"
                )
            print(f"| {v} | {agent} | {text[0]} | {text[1]} |")
            n = cells["nominal"]
            if n is None or cells["wind"] is None:
                ok = False
                why.append(f"{agent} not run")
                continue
            if n["intervention_rate"] > 0.02:
                ok = False
                why.append(f"{agent} nominal interventions {n['intervention_rate']:.2%}")
            if agent in STAND_INS:
                if n["catastrophe_rate"] > un["catastrophe_rate"] + 0.025 + 1e-9:
                    ok = False
                    why.append(
                        f"{agent} nominal crashes {un['catastrophe_rate']:.0%} -> {n['catastrophe_rate']:.0%}"
                    )
                if n["mean_return"] < un["mean_return"] - 0.05 * abs(un["mean_return"]):
                    ok = False
                    why.append(
                        f"{agent} nominal return {n['mean_return']:.1f} < 95% of {un['mean_return']:.1f}"
                    )
        if ok:
            eligible[v] = (
                res["ppo/wind"]["guarded"]["catastrophes_total"],
                sum(res[f"{a}/wind"]["guarded"]["catastrophes_total"] for a in STAND_INS),
                res["ppo/nominal"]["guarded"]["intervention_rate"],
            )
        rows.append((v, ok, why))
    print()
    for v, ok, why in rows:
        print(f"{v}: {'eligible ' + str(eligible[v]) if ok else 'not eligible: ' + '; '.join(why)}")
    if eligible:
        best = min(eligible, key=lambda v: eligible[v])
        keep = "config" if "config" in eligible and eligible["config"] <= eligible[best] else best
        print(f"rule's choice: {keep}")
    else:
        print("rule's choice: none eligible, the config stays")


if __name__ == "__main__":
    main()
