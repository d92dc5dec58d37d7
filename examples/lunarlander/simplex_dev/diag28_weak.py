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
import numpy as np
import onnxruntime as ort

from interlock.bench.safety.lunarlander import main_engine_power
from interlock.types import CheckInput

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diag27 import EXAMPLE, guard_for, thresholds_of


def main() -> None:
    agent, n, seed0, scale = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    guard = guard_for(EXAMPLE / "interlock.yaml", thresholds_of(agent))
    policy = ort.InferenceSession(str(EXAMPLE / f"{agent}_agent.onnx"), providers=["CPUExecutionProvider"])
    name = policy.get_inputs()[0].name
    summary: collections.Counter = collections.Counter()
    for k in range(n):
        env = gym.make("LunarLander-v3")
        with main_engine_power(scale):
            obs, _ = env.reset(seed=seed0 + k)
            t, trip, agent_after_trip, rules, reward = 0, None, 0, [], 0.0
            while True:
                proposed = int(policy.run(None, {name: obs[None].astype(np.float32)})[0].argmax())
                (d,) = guard.check(
                    [CheckInput("lunarlander", obs, np.int64(proposed), episode_id=f"e{k}", step=t)]
                )
                rules.append(d.rule or "-")
                if d.rule in ("handover", "dynamics_shifted") and trip is None:
                    trip = t
                if trip is not None and not d.rule:
                    agent_after_trip += 1
                obs, reward, terminated, truncated, _ = env.step(int(np.asarray(d.action).reshape(-1)[0]))
                t += 1
                if terminated or truncated:
                    break
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
