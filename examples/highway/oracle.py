"""An upper bound for any shield over the five meta-actions: search with the true simulator.

At every decision the oracle copies the environment (``copy.deepcopy`` of the unwrapped
``AbstractEnv``; highway-env's own ``simplify`` / ``change_vehicles`` tooling copies it the same
way) and searches meta-action sequences of ``depth`` decisions in the copy:

* the agent's action is kept if some continuation of ``depth - 1`` further decisions avoids a
  collision in the copy ("safe under the search");
* else the safe action the agent prefers (highest Q);
* else the action that survives the most decisions in the search, the agent's Q breaking ties.

The other vehicles are highway-env's IDM / MOBIL drivers. Their behaviour parameters are randomised
only when they are created (``randomize_behavior`` at reset); while driving, ``act`` and ``step``
draw nothing at random on this straight road (``road.np_random`` is used by ``next_lane`` at a lane's
end only, and it is copied with the road anyway). So the copy's future equals the real one given
the same ego actions: the oracle has **perfect foresight** within its depth, including how the
others react to the ego. It is a bound for shields that see only the observation (no shield in the
product has a simulator), not a deployable design.

Run on development seeds only (README.md): nominal 300000 + k, dense 310000 + k, k < 40::

    OMP_NUM_THREADS=1 nice -n 10 python examples/highway/oracle.py --speeds stock --densities dense \\
        --depth 3 --episodes 40 --out /tmp/oracle_stock_dense.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shield_study import BASE, DENSITIES, ENV_ID, SEEDS, SPEEDS, Agent, Episode, summarise  # noqa: E402

#: Order in which follow-up actions are tried (SLOWER first: most often safe, so the search ends early).
FOLLOWUP_ORDER = (4, 1, 0, 2, 3)


class Search:
    """Depth-limited search in copies of the unwrapped env; counts simulated decisions."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.simulated = 0

    def step_copy(self, env, action: int):
        """A copy of ``env`` after ``action``; None if the ego crashed during it."""
        child = copy.deepcopy(env)
        child.step(action)
        self.simulated += 1
        return None if child.vehicle.crashed else child

    def survival(self, env, depth: int) -> int:
        """Most decisions (<= depth) some action sequence survives from ``env`` (not crashed now)."""
        if depth == 0:
            return 0
        best = 0
        for a in FOLLOWUP_ORDER:
            child = self.step_copy(env, a)
            if child is None:
                continue
            best = max(best, 1 + self.survival(child, depth - 1))
            if best == depth:
                break
        return best

    def choose(self, env, q: np.ndarray, proposed: int) -> tuple[int, bool]:
        """The oracle's action and whether any action is safe for ``depth`` decisions."""
        order = [proposed] + [int(a) for a in np.argsort(-q) if int(a) != proposed]
        scores = {}
        for a in order:
            child = self.step_copy(env, a)
            scores[a] = 0 if child is None else 1 + self.survival(child, self.depth - 1)
            if scores[a] == self.depth:
                return a, True
        best = max(scores.values())
        return max((a for a in order if scores[a] == best), key=lambda a: q[a]), False


def run_episode(env, agent: Agent, seed: int, search: Search) -> Episode:
    """One episode with the oracle choosing every action."""
    ep = Episode(seed)
    obs, _ = env.reset(seed=seed)
    done = False
    while not done:
        flat = np.asarray(obs, dtype=np.float32).reshape(1, -1)
        q = agent.q(flat)[0]
        proposed = int(np.argmax(q))
        t0 = time.perf_counter()
        action, any_safe = search.choose(env.unwrapped, q, proposed)
        ep.model_seconds += time.perf_counter() - t0
        ep.interventions += action != proposed
        ep.no_safe_action += not any_safe
        obs, reward, terminated, truncated, info = env.step(action)
        ep.ret += float(reward)
        ep.steps += 1
        ep.crashed = ep.crashed or bool(info.get("crashed"))
        done = terminated or truncated
    return ep


def check_determinism(env, seed: int, actions: list[int]) -> float:
    """Largest position difference (m) between a copy stepped with ``actions`` and the real env."""
    env.reset(seed=seed)
    twin = copy.deepcopy(env.unwrapped)
    worst = 0.0
    for a in actions:
        env.step(a)
        twin.step(a)
        for v, w in zip(env.unwrapped.road.vehicles, twin.road.vehicles, strict=True):
            worst = max(worst, float(np.abs(v.position - w.position).max()), abs(v.speed - w.speed))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--speeds", default="stock,cpss")
    p.add_argument("--densities", default="dense")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    import gymnasium as gym
    import highway_env  # noqa: F401  (registers the environments)

    agent = Agent(HERE / "agent.onnx")
    out: dict[str, Any] = {"phase": "dev", "depth": args.depth, "episodes_per_cell": args.episodes,
                           "cells": {}}
    for speed in args.speeds.split(","):
        for density in args.densities.split(","):
            config = {**BASE, "vehicles_density": DENSITIES[density],
                      "action": {"type": "DiscreteMetaAction", "target_speeds": list(SPEEDS[speed])}}
            env = gym.make(ENV_ID, config=config)
            # Seed dev + 999: outside the dev episodes (k < 40) and every evaluation range.
            random_actions = [int(a) for a in np.random.default_rng(0).integers(0, 5, 15)]
            drift = check_determinism(env, SEEDS["dev"][density] + 999, random_actions)
            search = Search(args.depth)
            seeds = [SEEDS["dev"][density] + k for k in range(args.episodes)]
            t0 = time.perf_counter()
            eps = []
            for s in seeds:
                eps.append(run_episode(env, agent, s, search))
                print(f"{speed}/{density} seed {s}: crashed {eps[-1].crashed} steps {eps[-1].steps} "
                      f"interv {eps[-1].interventions} nosafe {eps[-1].no_safe_action} "
                      f"t {time.perf_counter() - t0:.0f}s", flush=True)
            env.close()
            cell = summarise(eps)
            cell.update(copy_vs_real_max_diff=drift, simulated_decisions=search.simulated,
                        seconds=time.perf_counter() - t0, episodes_detail=[asdict(e) for e in eps])
            out["cells"][f"{speed}/{density}"] = cell
            print(f"ORACLE depth {args.depth} {speed}/{density}: {cell['collisions']}/{cell['episodes']} "
                  f"interv {100 * cell['intervention_rate']:.1f}% return {cell['mean_return']:.2f} "
                  f"copy drift {drift:g}", flush=True)
            if args.out:
                args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
