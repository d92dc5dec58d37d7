"""After round 33: in wind episodes under the shipped config, where are the crashes lost? Development seeds.

Per guarded crash (round 32's config when it ran; RULE.md "Round 34") this prints the first trip's
step, the steps the agent drove after it, the deciding rules of the last 40 steps (first letters: d
dynamics_shifted, h handover, w weak_engine or wind, p probe rules; -: the agent), and two replays
from the same seed (the environment is deterministic given seed and actions): the executed actions
up to the trip and then the backup alone, and the backup alone from step 0.

    python simplex_dev/diag33_wind.py ppo 40 64000
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import gymnasium as gym

from interlock.bench.safety.lunarlander import WORLDS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diag27 import EXAMPLE, after_the_trip, greedy, guard_for, guarded_flight, thresholds_of

BACKUP = EXAMPLE / "robust2_agent.onnx"
#: Rules that act on a trip (round 34's config adds wind).
TRIP_RULES = ("dynamics_shifted", "handover", "weak_engine", "wind", "probe_evidence")


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
        t = len(decisions)
        trip, agent_after, rules = after_the_trip(decisions, TRIP_RULES)
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
