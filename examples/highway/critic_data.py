"""Training data for a learned safety critic distilled from the oracle (``oracle.py``), stock speeds.

Behaviour: episodes of highway-fast-v0 (``shield_study.BASE``: 20 steps, 15 vehicles) with
``vehicles_density`` drawn uniformly in [1, 2.5] per episode, driven by one of

* ``agent``: ``agent.onnx`` greedy, unguarded;
* ``shield``: ``agent.onnx`` under today's kinematic shield (``h1_t3_tie_rank2b``, as shield_study);
* ``backup``: ``backup_stock.onnx`` greedy;
* ``backup_shield``: ``backup_stock.onnx`` through the shield's choice (design C2 after the trip);
* ``critic``: ``agent.onnx`` under a trained critic (``--critic``, a later round of data: the
  states the guarded agent visits),

each with an epsilon-random perturbation (epsilon drawn from {0, 0, 0.1, 0.3}).

Labels: at every visited state, for each of the 5 meta-actions, the oracle's survival
``s[a] = 0`` if the ego crashes during ``a`` (in a deep copy of the true simulator), else
``1 + Search.survival(child, depth - 1)``: the most decisions (<= ``depth``) some continuation
survives. ``s[a] == depth`` is "safe for depth decisions"; ``min(s, d)`` is the label at any
smaller depth ``d`` (the search is exhaustive up to its first full-depth success).

Seeds: episode k uses env seed ``600000 + k`` (training range; never 400000-599999) and its own
``numpy`` generator seeded with ``k`` for the density, the policy and the epsilon draws.

Run (one CPU-heavy process at a time on the shared machine)::

    OMP_NUM_THREADS=1 nice -n 10 python examples/highway/critic_data.py --first 0 --episodes 200 \\
        --depth 3 --out /tmp/critic_data_0.npz
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from kinematic_model import KinematicModel, shield_choice, shield_choice_ranked  # noqa: E402
from oracle import Search  # noqa: E402
from shield_study import BASE, ENV_ID, SPEEDS, Agent  # noqa: E402

SEED_BASE = 600_000
POLICIES = ("agent", "shield", "backup", "backup_shield")
EPSILONS = (0.0, 0.0, 0.1, 0.3)


class Shield:
    """Today's shield (h1_t3_tie_rank2b) outside Interlock, as ``shield_study.run_episode``."""

    def __init__(self, speeds) -> None:
        self.model = KinematicModel(target_speeds=speeds, horizon=1, followups=("hold", "brake"))
        self.rank = KinematicModel(target_speeds=speeds, horizon=2,
                                   followups=("hold", "brake", "left", "right"))

    def __call__(self, flat: np.ndarray, q: np.ndarray) -> int:
        proposed = np.argmax(q, axis=1)
        margins = self.model.margins_all(flat)
        if margins[0, proposed[0]] < 3.0:
            ranking = self.rank.margins_all(flat)
            return int(shield_choice_ranked(margins, ranking, q, proposed, 3.0, 1.0)[0])
        return int(shield_choice(margins, q, proposed, 3.0, 1.0)[0])


def label(env, search: Search, depth: int) -> np.ndarray:
    """[5] survival per meta-action from the unwrapped ``env`` (0..depth)."""
    out = np.zeros(5, dtype=np.int8)
    for a in range(5):
        child = search.step_copy(env, a)
        out[a] = 0 if child is None else 1 + search.survival(child, depth - 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--first", type=int, default=0, help="First episode index k (seed 600000 + k).")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--speeds", default="stock", choices=sorted(SPEEDS))
    p.add_argument("--policies", default=",".join(POLICIES), help="Comma list drawn from per episode.")
    p.add_argument("--critic", type=Path, help="A critic ONNX, for the 'critic' behaviour policy.")
    p.add_argument("--density", default="1.0,2.5", help="LOW,HIGH of the uniform density draw.")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    import gymnasium as gym
    import highway_env  # noqa: F401  (registers the environments)

    speeds = SPEEDS[args.speeds]
    agent = Agent(HERE / "agent.onnx")
    backup = Agent(HERE / f"backup_{args.speeds}.onnx")
    shield = Shield(speeds)
    critic = None
    if args.critic is not None:
        from critic import CriticGuard

        critic = CriticGuard(args.critic, threshold=0.5)
    policies = args.policies.split(",")
    low, high = (float(x) for x in args.density.split(","))
    search = Search(args.depth)
    rows: dict[str, list] = {k: [] for k in ("obs", "surv", "q", "qb", "density", "step", "policy",
                                              "seed", "behaviour", "crashed_next")}
    t0 = time.perf_counter()
    for k in range(args.first, args.first + args.episodes):
        rng = np.random.default_rng(k)
        density = float(rng.uniform(low, high))
        policy = policies[int(rng.integers(len(policies)))]
        eps = float(EPSILONS[int(rng.integers(len(EPSILONS)))])
        action_cfg = {"type": "DiscreteMetaAction", "target_speeds": list(speeds)}
        env = gym.make(ENV_ID, config={**BASE, "vehicles_density": density, "action": action_cfg})
        obs, _ = env.reset(seed=SEED_BASE + k)
        done, step, crashed = False, 0, False
        while not done:
            flat = np.asarray(obs, dtype=np.float32).reshape(1, -1)
            q, qb = agent.q(flat), backup.q(flat)
            surv = label(env.unwrapped, search, args.depth)
            if policy == "agent":
                action = int(np.argmax(q))
            elif policy == "shield":
                action = shield(flat, q)
            elif policy == "backup":
                action = int(np.argmax(qb))
            elif policy == "backup_shield":
                action = shield(flat, qb)
            elif policy == "critic":
                action = int(critic.choose(flat, q)[0])
            else:
                raise ValueError(policy)
            if rng.random() < eps:
                action = int(rng.integers(5))
            obs, _, terminated, truncated, info = env.step(action)
            crashed = bool(info.get("crashed"))
            for key, val in (("obs", flat[0]), ("surv", surv), ("q", q[0]), ("qb", qb[0]),
                             ("density", density), ("step", step), ("policy", policies.index(policy)),
                             ("seed", SEED_BASE + k), ("behaviour", action), ("crashed_next", crashed)):
                rows[key].append(val)
            step += 1
            done = terminated or truncated
        env.close()
        n = len(rows["obs"])
        print(f"k {k} density {density:.2f} {policy} eps {eps} steps {step} crashed {crashed} "
              f"states {n} t {time.perf_counter() - t0:.0f}s ({(time.perf_counter() - t0) / n:.2f} s/state)",
              flush=True)
        tmp = args.out.with_name(args.out.stem + ".tmp.npz")  # atomic: readable while this runs
        np.savez_compressed(tmp, policies=np.array(policies), depth=args.depth,
                            **{key: np.asarray(val) for key, val in rows.items()})
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
