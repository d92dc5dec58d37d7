"""After round 33: in wind episodes under the shipped config, where are the crashes lost? Development seeds.

The general backup flown alone from step 0 crashes in few wind episodes (3 of 60 on seeds 10000+), yet
guarded wind cells keep 15-30% of crashes. Per guarded crash this prints the first trip's step, the
steps the agent drove after it, the deciding rules of the last 40 steps (h: handover, w: weak_engine,
p: probe rules, -: the agent), and two replays from the same seed (the environment is
deterministic given seed and actions): the executed actions up to the trip and then the backup alone,
and the backup alone from step 0.

    python simplex_dev/diag33_wind.py ppo 40 64000
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import gymnasium as gym

from interlock.bench.safety.lunarlander import WORLDS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diag27 import EXAMPLE, greedy, guard_for, guarded_flight, thresholds_of

BACKUP = EXAMPLE / "robust2_agent.onnx"


def replay_then(seed: int, prefix: list[int], act) -> bool:
    """Execute ``prefix`` from ``reset(seed)``, then ``act`` to the end; True if the lander crashed."""
    env = gym.make("LunarLander-v3", **WORLDS["wind"]["kwargs"])
    obs, _ = env.reset(seed=seed)
    reward, done = 0.0, False
    for a in prefix:
        obs, reward, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            return reward == -100
    while not done:
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        done = terminated or truncated
    return reward == -100


def main() -> None:
    agent, n, seed0 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    guard = guard_for(EXAMPLE / "interlock.yaml", thresholds_of(agent))
    policy = greedy(EXAMPLE / f"{agent}_agent.onnx")
    backup = greedy(BACKUP)
    summary: collections.Counter = collections.Counter()
    for k in range(n):
        env = gym.make("LunarLander-v3", **WORLDS["wind"]["kwargs"])
        decisions, actions, reward = guarded_flight(guard, policy, env, seed0 + k, f"e{k}")
        t, trip, agent_after, rules = len(decisions), None, 0, []
        for step, d in enumerate(decisions):
            rules.append(d.rule or "-")
            if d.rule in ("dynamics_shifted", "handover", "weak_engine", "probe_evidence") and trip is None:
                trip = step
            if trip is not None and not d.rule:
                agent_after += 1
        crashed = reward == -100
        summary["crashed" if crashed else "not crashed"] += 1
        if crashed:
            at_trip = replay_then(seed0 + k, actions[: trip if trip is not None else t], backup)
            from_zero = replay_then(seed0 + k, [], backup)
            summary[f"backup from the trip: {'crash' if at_trip else 'safe'}"] += 1
            summary[f"backup from step 0: {'crash' if from_zero else 'safe'}"] += 1
            summary["agent drove after the trip" if agent_after else "backup only after the trip"] += 1
            print(k, "steps", t, "trip", trip, "agent steps after the trip", agent_after,
                  "| backup from the trip:", "crash" if at_trip else "safe",
                  "| from step 0:", "crash" if from_zero else "safe",
                  "| last rules", "".join(r[0] for r in rules[-40:]))
    print(agent, dict(summary))


if __name__ == "__main__":
    main()
