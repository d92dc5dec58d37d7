"""After round 28 (RULE.md "After round 28"): from the handover state of each weak-engine crash under the
shipped config, would another controller have landed? Each crashed episode's executed actions are
replayed up to the first trip (the environment is deterministic given its seed and actions), then
``robust2`` (the backup itself: reproduces the crash), ``robust2_weak`` (round 14's weak-engine
specialist) or gymnasium's heuristic lander flies on; and ``robust2`` from step 0, for the bound.

    python simplex_dev/replay_bound.py dqn 40 56000 0.6
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime as ort
from gymnasium.envs.box2d.lunar_lander import heuristic

from interlock.bench.safety.lunarlander import main_engine_power
from interlock.types import CheckInput

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diag27 import EXAMPLE, guard_for, thresholds_of


def greedy(model: str) -> Callable[[np.ndarray], int]:
    session = ort.InferenceSession(str(EXAMPLE / model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda obs: int(session.run(None, {name: obs[None].astype(np.float32)})[0].argmax())


def crashes(seed: int, prefix: list[int], controller: str, scale: float, policies: dict) -> bool:
    """Replay ``prefix`` from ``reset(seed)``, then let ``controller`` fly; True if the lander crashes."""
    env = gym.make("LunarLander-v3").unwrapped
    reward = 0.0
    with main_engine_power(scale):
        obs, _ = env.reset(seed=seed)
        for a in prefix:
            obs, reward, _, _, _ = env.step(a)
        for _ in range(1000 - len(prefix)):
            a = heuristic(env, obs) if controller == "heuristic" else policies[controller](obs)
            obs, reward, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                break
    return reward == -100


def main() -> None:
    agent, n, seed0, scale = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    guard = guard_for(EXAMPLE / "interlock.yaml", thresholds_of(agent))
    policy = greedy(f"{agent}_agent.onnx")
    policies = {"robust2": greedy("robust2_agent.onnx"), "robust2_weak": greedy("robust2_weak_agent.onnx")}
    totals: collections.Counter = collections.Counter()
    for k in range(n):
        env = gym.make("LunarLander-v3")
        with main_engine_power(scale):
            obs, _ = env.reset(seed=seed0 + k)
            actions, trip, reward = [], None, 0.0
            for t in range(1000):
                (d,) = guard.check(
                    [CheckInput("lunarlander", obs, np.int64(policy(obs)), episode_id=f"x{k}", step=t)]
                )
                if d.rule in ("handover", "dynamics_shifted") and trip is None:
                    trip = t
                actions.append(int(np.asarray(d.action).reshape(-1)[0]))
                obs, reward, terminated, truncated, _ = env.step(actions[-1])
                if terminated or truncated:
                    break
        if reward != -100 or trip is None:
            continue
        row = {
            c: crashes(seed0 + k, actions[:trip], c, scale, policies)
            for c in ("robust2", "robust2_weak", "heuristic")
        }
        row["robust2 from step 0"] = crashes(seed0 + k, [], "robust2", scale, policies)
        print(k, "trip", trip, {c: "crash" if v else "lands" for c, v in row.items()}, flush=True)
        totals.update({c: int(v) for c, v in row.items()})
        totals["crashed episodes"] += 1
    print(agent, dict(totals))


if __name__ == "__main__":
    main()
