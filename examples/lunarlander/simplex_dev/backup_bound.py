"""Round 7's bound on the weak-engine cells: what the main engine can still do, and how the backup flies
the weak-engine world from step 0 (no agent, no detector). Development seeds only.

    python examples/lunarlander/simplex_dev/backup_bound.py [--episodes 50] [--policies robust2]

Prints the lander's vertical acceleration with the main engine held on (nominal power and x0.6; gravity
is -10) and, per policy, crashes / landings over weak-main seeds 11000+ (examples/lunarlander/README.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lander import (
    OnnxAgent,
    agent_chooser,
    heuristic_chooser,
    main_engine_power,
    make_env,
    run_episode,
    wilson,
)

HERE = Path(__file__).resolve().parents[1]


def main_engine_acceleration(scale: float, steps: int = 40) -> float:
    """Mean vertical acceleration (m/s^2, world units) with the main engine held on, after 5 steps."""
    env = make_env("nominal")
    with main_engine_power(scale):
        env.reset(seed=1)
        body = env.unwrapped.lander
        acc = []
        for _ in range(steps):
            v0 = body.linearVelocity.y
            env.step(2)
            acc.append((body.linearVelocity.y - v0) * 50)  # 50 simulation steps per second
    env.close()
    return float(np.mean(acc[5:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument(
        "--policies", default="robust,heuristic,ppo", help="heuristic or <name> of <name>_agent.onnx"
    )
    args = p.parse_args()
    for scale in (1.0, 0.6):
        print(f"main engine x{scale}: vertical acceleration {main_engine_acceleration(scale):+.2f} m/s^2")
    for name in args.policies.split(","):
        if name == "heuristic":
            choose = heuristic_chooser()
        else:
            choose = agent_chooser(OnnxAgent(HERE / f"{name}_agent.onnx"))
        eps = [run_episode("weak_main", 11000 + k, choose) for k in range(args.episodes)]
        crashes = sum(e.crashed for e in eps)
        lo, hi = wilson(crashes, len(eps))
        print(f"{name} from step 0, main x0.6: crashes {crashes}/{len(eps)} [{lo:.0%}, {hi:.0%}], "
              f"landed {sum(e.landed for e in eps)}, return {np.mean([e.ret for e in eps]):.1f}")


if __name__ == "__main__":
    main()
