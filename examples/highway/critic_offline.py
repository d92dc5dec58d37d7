"""Offline check of choice rules against the oracle's labels on held-out critic data (critic_data.py).

For each held-out state (episodes of ``--from`` <= k, i.e. not used to train the critic) and each
rule, the fraction of states where the rule's action keeps a 3-decision way out (label ``surv ==
depth``), among the states where some action does, and the mean survival of the chosen action.
A per-state proxy, less noisy than 40 closed-loop episodes, blind to where each rule leads.

    python examples/highway/critic_offline.py --data /tmp/hwc/data_r1.npz --critic /tmp/hwc/c.onnx \\
        --from 600250
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from critic import Critic, critic_choice  # noqa: E402
from kinematic_model import KinematicModel, shield_choice_ranked  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+", required=True)
    p.add_argument("--critic", type=Path, required=True)
    p.add_argument("--from", dest="first", type=int, default=0, help="Held-out: seeds >= this.")
    p.add_argument("--min-density", type=float, default=1.75)
    args = p.parse_args()
    parts = [dict(np.load(f)) for f in args.data]
    d = {k: np.concatenate([x[k] for x in parts]) for k in ("obs", "surv", "q", "qb", "seed", "density")}
    depth = int(parts[0]["depth"])
    m = (d["seed"] >= args.first) & (d["density"] >= args.min_density)
    obs, s, q, qb = d["obs"][m], d["surv"][m], d["q"][m].astype(np.float64), d["qb"][m].astype(np.float64)
    n, rows = len(obs), np.arange(m.sum())
    kin = KinematicModel(target_speeds=(20.0, 25.0, 30.0), horizon=1, followups=("hold", "brake"))
    rank = KinematicModel(target_speeds=(20.0, 25.0, 30.0), horizon=2,
                          followups=("hold", "brake", "left", "right"))
    margins, ranking = kin.margins_all(obs.astype(np.float64)), rank.margins_all(obs.astype(np.float64))
    p_safe, expected = Critic(args.critic)(obs)
    possible = (s == depth).any(axis=1)
    print(f"{n} held-out states (density >= {args.min_density}); some action safe in "
          f"{possible.mean():.3f}; depth {depth}")

    def show(name: str, a: np.ndarray, proposal: np.ndarray) -> None:
        ok = s[rows, a] == depth
        print(f"{name:38s} safe|possible {ok[possible].mean():.3f}  mean surv {s[rows, a].mean():.3f}  "
              f"changed {(a != proposal).mean():.3f}")

    for who, qq in (("agent", q), ("backup", qb)):
        prop = np.argmax(qq, axis=1)
        show(f"{who} alone", prop, prop)
        show(f"{who} C2 shield (rank2)", shield_choice_ranked(margins, ranking, qq, prop, 3.0, 1.0), prop)
        for t in (0.5, 0.7, 0.9):
            show(f"{who} critic t{t}", critic_choice(p_safe >= t, expected, qq, prop, 0.25), prop)
            show(f"{who} critic+kin t{t}",
                 critic_choice((p_safe >= t) & (margins >= 3), expected, qq, prop, 0.25, margins), prop)
        for t in (0.2, 0.35, 0.5, 0.7):
            veto = p_safe < t
            show(f"{who} C2 + veto ranking t{t}",
                 shield_choice_ranked(margins, ranking - 100 * veto, qq, prop, 3.0, 1.0), prop)
            show(f"{who} C2 + veto both t{t}",
                 shield_choice_ranked(np.where(veto, np.minimum(margins, 2.9 - 0 * margins), margins),
                                      ranking - 100 * veto, qq, prop, 3.0, 1.0), prop)
        show(f"{who} max p_safe", np.argmax(p_safe, axis=1), prop)
        show(f"{who} max expected (Q tie 0.25)",
             critic_choice(np.zeros_like(p_safe, dtype=bool), expected, qq, -np.ones(n, np.int64),
                           0.25), prop)
        show("oracle best", np.argmax(s * 10 + (qq - qq.min()) / (np.ptp(qq) + 1e-9), axis=1), prop)


if __name__ == "__main__":
    main()
