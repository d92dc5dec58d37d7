"""Export CliffWalking-v1's own transition model (env.unwrapped.P) as the shield's .npz, and build the shield.

Run from anywhere::

    python examples/cliffwalking/export_model.py

Writes ``cliffwalking.npz`` beside this file: 49 states (the 48 cells plus one
absorbing "fell off the cliff" state, index 48, that every cliff move leads to),
4 actions, the cliff unsafe and the goal terminal. Then ``interlock shield build
examples/cliffwalking/interlock.yaml`` caches the tables (``cliffwalking.shield.npz``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from interlock.reachability.gym_models import cliffwalking_model

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slippery", action="store_true", help="the env's is_slippery=True variant")
    parser.add_argument("--out", type=Path, default=None, help="output .npz (default: beside this script)")
    args = parser.parse_args(argv)
    out = args.out or HERE / ("cliffwalking_slippery.npz" if args.slippery else "cliffwalking.npz")
    model = cliffwalking_model(is_slippery=args.slippery)
    model.save(out)
    print(
        f"wrote {out}: {model.n_states} states, {model.n_actions} actions, "
        f"{len(model.row)} transitions, {int(model.unsafe.sum())} unsafe states"
    )


if __name__ == "__main__":
    main()
