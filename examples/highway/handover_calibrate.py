"""Calibrate the dense-traffic detector (``handover.DenseTraffic``) on nominal episodes only.

``agent.onnx`` drives unguarded in nominal traffic (density 1) on the development seeds 300000 + k,
k < ``--episodes``, in both speed settings; for each episode the smallest running mean of
``handover.closeness`` over its steps is recorded. The threshold is the smallest of those minima, so
none of the calibration episodes trips (HANDOVER_RULE.md). Writes ``handover_thresholds.json``.

Run::

    SDL_VIDEODRIVER=dummy python examples/highway/handover_calibrate.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from handover import closeness  # noqa: E402
from shield_study import BASE, DENSITIES, ENV_ID, SEEDS, SPEEDS, Agent  # noqa: E402


def episode_minimum(env, agent: Agent, seed: int) -> tuple[float, int]:
    """The episode's smallest running mean of ``closeness`` (m) and its step count, agent unguarded."""
    obs, _ = env.reset(seed=seed)
    values: list[float] = []
    done = False
    while not done:
        flat = np.asarray(obs, dtype=np.float32).reshape(1, -1)
        values.append(float(closeness(flat)[0]))
        obs, _, terminated, truncated, _ = env.step(int(np.argmax(agent.q(flat), axis=1)[0]))
        done = terminated or truncated
    running = np.cumsum(values) / np.arange(1, len(values) + 1)
    return float(running.min()), len(values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--agent", type=Path, default=HERE / "agent.onnx")
    p.add_argument("--out", type=Path, default=HERE / "handover_thresholds.json")
    args = p.parse_args()

    import gymnasium as gym
    import highway_env  # noqa: F401  (registers the environments)

    agent = Agent(args.agent)
    minima: dict[str, list[float]] = {}
    for speed in ("stock", "cpss"):
        env = gym.make(ENV_ID, config={**BASE, "vehicles_density": DENSITIES["nominal"],
                                       "action": {"type": "DiscreteMetaAction",
                                                  "target_speeds": list(SPEEDS[speed])}})
        seeds = [SEEDS["dev"]["nominal"] + k for k in range(args.episodes)]
        minima[speed] = [round(episode_minimum(env, agent, s)[0], 4) for s in seeds]
        env.close()
        print(speed, "smallest per-episode minimum", min(minima[speed]), flush=True)
    threshold = min(min(v) for v in minima.values())
    out = {
        "detector": "handover:DenseTraffic (running mean of closeness, m)",
        "threshold_m": threshold,
        "rule": "smallest per-episode minimum of the running mean over the calibration episodes",
        "agent": args.agent.name,
        "seeds": f"{SEEDS['dev']['nominal']} + k, k < {args.episodes}, density 1, both speed settings",
        "episode_minima": minima,
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"threshold {threshold:.4f} m -> {args.out}")


if __name__ == "__main__":
    main()
