"""Check :class:`kinematic_model.KinematicModel`'s ego prediction against highway-env, and time it.

Drives highway-fast-v0 with uniformly random meta-actions; before each step the model predicts
the ego's position and speed one decision ahead from the observation alone, and the script
compares that with the simulator's ego after the step (steps that end in a crash are skipped:
a crashed vehicle brakes erratically). Then it times ``margins_all`` at batch 1 and 64.

Run::

    SDL_VIDEODRIVER=dummy python examples/highway/validate_model.py --episodes 15
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kinematic_model import ACTION_NAMES, KinematicModel
from shield_study import BASE, SPEEDS


def main() -> None:
    import gymnasium as gym
    import highway_env  # noqa: F401  (registers the environments)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=15)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    observations = []
    for speed_name, speeds in SPEEDS.items():
        env = gym.make("highway-fast-v0", config={
            **BASE, "action": {"type": "DiscreteMetaAction", "target_speeds": list(speeds)}})
        model = KinematicModel(target_speeds=speeds, horizon=1, followups=("hold",))
        errors = []  # [steps, 4]: action, |dx|, |dy|, |dv|
        for ep in range(args.episodes):
            obs, _ = env.reset(seed=900_000 + ep)  # outside the study's dev and eval ranges
            done = False
            while not done:
                action = int(rng.integers(5))
                ego = env.unwrapped.vehicle
                x0 = float(ego.position[0])
                pred = model.rollout(obs.reshape(1, -1), np.array([action]))
                observations.append(obs.reshape(-1))
                obs, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                if info["crashed"]:
                    continue
                ego = env.unwrapped.vehicle
                errors.append([action, abs(pred.ego_x[0, 0, -1] - (ego.position[0] - x0)),
                               abs(pred.ego_y[0, 0, -1] - ego.position[1]),
                               abs(pred.ego_v[0, 0, -1] - ego.speed)])
        env.close()
        err = np.asarray(errors)
        print(f"{speed_name} target speeds {speeds}: {len(err)} steps")
        for a, name in enumerate(ACTION_NAMES):
            e = err[err[:, 0] == a, 1:]
            print(f"  {name:10s} n={len(e):3d}  max |error| x {e[:, 0].max():.2e} m, "
                  f"y {e[:, 1].max():.2e} m, speed {e[:, 2].max():.2e} m/s")
    obs = np.asarray(observations, dtype=np.float32)
    for horizon in (1, 2, 3):
        model = KinematicModel(target_speeds=SPEEDS["cpss"], horizon=horizon)
        for batch in (1, 64):
            x = obs[:batch]
            model.margins_all(x)
            reps = 200 if batch == 1 else 20
            t0 = time.perf_counter()
            for _ in range(reps):
                model.margins_all(x)
            ms = 1000 * (time.perf_counter() - t0) / reps
            print(f"margins_all horizon {horizon}, 2 follow-ups, batch {batch}: {ms:.2f} ms per call "
                  f"({ms / batch:.3f} ms per observation, all 5 actions)")


if __name__ == "__main__":
    main()
