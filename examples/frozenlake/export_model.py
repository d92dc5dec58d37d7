"""Export FrozenLake-v1's own transition models (env.unwrapped.P) for the shields in interlock.yaml.

Run from anywhere::

    python examples/frozenlake/export_model.py

Writes beside this file, for the 4x4 and 8x8 maps, slippery and not:
``frozenlake_<map>[_slippery].npz`` (holes unsafe, goal terminal) and
``frozenlake_<map>[_slippery]_q.npy``, the optimal Q-values [n_states, 4] (value
iteration, gamma 0.99): the agent's preferences that the shield fallback follows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from interlock.bench.agents import q_values
from interlock.reachability.gym_models import frozenlake_model

HERE = Path(__file__).resolve().parent


def export(map_name: str, slippery: bool, out_dir: Path) -> Path:
    import gymnasium as gym

    stem = f"frozenlake_{map_name}" + ("_slippery" if slippery else "")
    model = frozenlake_model(map_name, is_slippery=slippery)
    path = out_dir / f"{stem}.npz"
    model.save(path)
    env = gym.make("FrozenLake-v1", map_name=map_name, is_slippery=slippery).unwrapped
    np.save(out_dir / f"{stem}_q.npy", q_values(env.P, model.n_states, model.n_actions).astype(np.float32))
    env.close()
    print(f"wrote {path}: {model.n_states} states, {int(model.unsafe.sum())} holes; and {stem}_q.npy")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    for map_name in ("4x4", "8x8"):
        for slippery in (False, True):
            export(map_name, slippery, args.out_dir)


if __name__ == "__main__":
    main()
