"""Train the MiniGrid agent of the safety benchmark: tabular Q-learning on DistShift1.

    python -m interlock.bench.safety.train_minigrid   # seconds; writes models/minigrid_distshift1_q.npz

The agent sees what MiniGrid gives it, the egocentric 7x7 view (``obs["image"]``), and keys its
Q-table on that view's bytes. It uses the three movement actions (0 left, 1 right, 2 forward).
An observation it never met in training has all-zero Q-values, so it acts uniformly at random
among them (ties broken at random): that is how this agent meets DistShift2's moved lava strip.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

MODEL = Path(__file__).resolve().parent / "models" / "minigrid_distshift1_q.npz"
N_ACTIONS = 3
MAX_STEPS = 100


def make(env_id: str):
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the MiniGrid environments)

    return gym.make(env_id, max_steps=MAX_STEPS)


def key(obs: dict) -> bytes:
    """The Q-table key of one observation: its ``image`` ([7, 7, 3] uint8) bytes."""
    return np.ascontiguousarray(obs["image"], dtype=np.uint8).tobytes()


def train(
    episodes: int = 4000, seed: int = 0, alpha: float = 0.5, gamma: float = 0.95
) -> dict[bytes, np.ndarray]:
    """Q-learning with a decaying epsilon on ``MiniGrid-DistShift1-v0``."""
    env = make("MiniGrid-DistShift1-v0")
    rng = np.random.default_rng(seed)
    q: dict[bytes, np.ndarray] = {}
    for ep in range(episodes):
        eps = max(0.05, 1.0 - ep / (0.6 * episodes))
        obs, _ = env.reset(seed=int(rng.integers(1 << 31)))
        k = key(obs)
        done = False
        while not done:
            qs = q.setdefault(k, np.zeros(N_ACTIONS))
            if rng.random() < eps:
                a = int(rng.integers(N_ACTIONS))
            else:
                a = int(rng.choice(np.flatnonzero(qs == qs.max())))
            obs, r, term, trunc, _ = env.step(a)
            k2 = key(obs)
            q2 = q.setdefault(k2, np.zeros(N_ACTIONS))
            target = r + (0.0 if term else gamma * q2.max())
            qs[a] += alpha * (target - qs[a])
            k = k2
            done = term or trunc
    env.close()
    return q


def save(q: dict[bytes, np.ndarray], path: Path = MODEL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = np.stack([np.frombuffer(k, dtype=np.uint8) for k in q])
    np.savez_compressed(path, keys=keys, q=np.stack(list(q.values())))
    return path


def load(path: Path = MODEL) -> dict[bytes, np.ndarray]:
    """The Q-table (trains and saves it first if the file is missing)."""
    if not path.exists():
        save(train(), path)
    data = np.load(path)
    return {k.tobytes(): v.copy() for k, v in zip(data["keys"], data["q"], strict=True)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=4000)
    p.add_argument("--out", type=Path, default=MODEL)
    args = p.parse_args()
    q = train(args.episodes)
    print(f"{len(q)} observations in the Q-table; wrote {save(q, args.out)}")


if __name__ == "__main__":
    main()
