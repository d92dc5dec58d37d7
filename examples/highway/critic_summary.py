"""Summarise interlock_eval.py result files of the critic exploration (CRITIC.md): per file and cell,
collisions with Wilson 95% intervals, mean return, interventions, non-ALLOW, and crashed seeds paired
against a reference file (``--ref``: saved = crashed under the reference only, caused = the reverse).

    python examples/highway/critic_summary.py --ref /tmp/c2.json /tmp/a.json /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shield_study import wilson  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--ref", type=Path)
    args = p.parse_args()
    ref = json.loads(args.ref.read_text())["cells"] if args.ref else {}
    for f in args.files:
        data = json.loads(f.read_text())
        for name, c in data["cells"].items():
            lo, hi = wilson(c["collisions"], c["episodes"])
            line = (f"{f.stem:34s} {data['seeds']:10s} {name:14s} {c['collisions']:3d}/{c['episodes']:<3d} "
                    f"[{100 * lo:4.1f}, {100 * hi:4.1f}] return {c['mean_return']:6.2f} "
                    f"interv {100 * c['intervention_rate']:5.2f}% nonallow {100 * c['not_allow_rate']:5.2f}%")
            if "unguarded" in c:
                u = c["unguarded"]
                line += f" | unguarded {u['collisions']}/{u['episodes']} return {u['mean_return']:.2f}"
            r = ref.get(name)
            if r is not None and r["episodes"] == c["episodes"]:
                mine, theirs = set(c["crashed_seeds"]), set(r["crashed_seeds"])
                line += f" | vs ref: saved {len(theirs - mine)} caused {len(mine - theirs)}"
            print(line)


if __name__ == "__main__":
    main()
