"""Round 7's evaluation table: unguarded, the shipped thresholds and per-agent calibration, side by side.

    python examples/lunarlander/simplex_dev/eval_table.py \\
        examples/lunarlander/interlock_eval_r7_shipped.json examples/lunarlander/interlock_eval_r7.json

Each JSON is ``python -m interlock.bench.safety.lunarlander --json`` output on the same seeds (the
unguarded runs are identical episodes: the first file's are printed, else the second's). Crashes with
Wilson 95% intervals. Round 9: ``interlock_eval_r9_shipped.json interlock_eval_r9.json``. Two more
arguments name the columns (round 8: ``interlock_eval_r8_p1.json interlock_eval_r8.json robust robust2``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _guarded(c: dict, base: dict) -> str:
    lo, hi = c["crash_wilson95"]
    if base["catastrophe_rate"]:
        change = f"{(c['catastrophe_rate'] - base['catastrophe_rate']) / base['catastrophe_rate']:+.0%}"
    else:  # no unguarded crash: a relative change means nothing
        change = f"+{c['catastrophes_total']} crashes"
    delay = "-" if c["median_detection_delay"] is None else f"{c['median_detection_delay']:.0f}"
    return (f"{c['catastrophe_rate']:.0%} [{lo:.0%}, {hi:.0%}] ({change}) / {c['mean_return']:.1f} / "
            f"{c['intervention_rate']:.1%} / {c['shift_trip_rate']:.0%} ({delay})")


def main() -> None:
    shipped, own = (json.loads(Path(p).read_text()) for p in sys.argv[1:3])
    first, second = sys.argv[3:5] if len(sys.argv) > 4 else ("shipped thresholds", "own calibration")
    print(f"| agent / world | unguarded: crashes [Wilson 95%] / return | {first}: crashes (change) "
          f"/ return / interventions / trips (median delay) | {second}: the same |")
    print("|---|---|---|---|")
    for key in shipped:
        base = shipped[key].get("unguarded") or own[key]["unguarded"]  # either run may carry it
        lo, hi = base["crash_wilson95"]
        row = [key, f"{base['catastrophe_rate']:.0%} [{lo:.0%}, {hi:.0%}] / {base['mean_return']:.1f}",
               _guarded(shipped[key]["guarded"], base),
               _guarded(own[key]["guarded"], base) if key in own else "-"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
