"""After round 28 (RULE.md "After round 28"): in weak-main episodes under the shipped config, who drives
when the lander crashes? Per crashed episode: its length, the first trip's step, the agent's own steps
after the trip and the deciding rules of its last 40 steps (h: handover, d: dynamics_shifted, p: probe
rules, -: the agent).

    python simplex_dev/diag28_weak.py dqn 40 56000 0.6
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import gymnasium as gym

from interlock.bench.safety.lunarlander import main_engine_power

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diag27 import EXAMPLE, after_the_trip, greedy, guard_for, guarded_flight, thresholds_of


def main() -> None:
    agent, n, seed0, scale = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    guard = guard_for(EXAMPLE / "interlock.yaml", thresholds_of(agent))
    policy = greedy(EXAMPLE / f"{agent}_agent.onnx")
    summary: collections.Counter = collections.Counter()
    for k in range(n):
        with main_engine_power(scale):
            env = gym.make("LunarLander-v3")
            decisions, _, reward = guarded_flight(guard, policy, env, seed0 + k, f"e{k}")
        t = len(decisions)
        trip, agent_after_trip, rules = after_the_trip(decisions, ("handover", "dynamics_shifted"))
        crashed = reward == -100
        summary[("crashed" if crashed else "landed", "agent" if rules[-1] == "-" else rules[-1])] += 1
        if crashed:
            print(
                k,
                "steps",
                t,
                "trip",
                trip,
                "agent steps after the trip",
                agent_after_trip,
                "last rules",
                "".join(r[0] for r in rules[-40:]),
            )
    print(agent, dict(summary))


if __name__ == "__main__":
    main()
