"""Round 28's exploratory look (RULE.md "Round 28"): where an agent's calm interventions come from.

Flies ``AGENT`` greedily behind a config (default: the shipped ``interlock.yaml``) with the agent's own
thresholds (``r18_thresholds/eval``, else ``/dev``, else ``r24_thresholds``) on calm seeds ``SEED0 ..
SEED0 + N - 1`` and prints, per rule, the steps it decided; per tripped episode, the first trip's step
and monitors and how many handover steps fall with a leg on the ground and at rest.

    python simplex_dev/diag27.py dqn_holdout5 200 53000 [CONFIG]
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime as ort

from interlock.bench.safety.lunarlander import with_thresholds
from interlock.config import load_config
from interlock.engine import Guard
from interlock.types import CheckInput

EXAMPLE = Path(__file__).resolve().parents[1]


def thresholds_of(agent: str) -> Path:
    for sub in ("r18_thresholds/eval", "r18_thresholds/dev", "r24_thresholds"):
        path = EXAMPLE / "simplex_dev" / sub / f"thresholds_{agent}.json"
        if path.exists():
            return path
    raise SystemExit(f"no thresholds for {agent}")


def guard_for(config: Path, thresholds: Path) -> Guard:
    """The config with every transition monitor reading ``thresholds``."""
    return Guard(with_thresholds(load_config(config), thresholds)).load()


def greedy(path: Path):
    """``obs [8] -> action``: the argmax of the ONNX policy at ``path``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda obs: int(session.run(None, {name: obs[None].astype(np.float32)})[0].argmax())


def guarded_flight(guard: Guard, act, env: gym.Env, seed: int, episode_id: str) -> tuple[list, list, float]:
    """One episode of ``env`` from ``reset(seed)``, ``act``'s proposals decided by ``guard``: every
    decision, the executed actions and the last reward (-100: a crash)."""
    obs, _ = env.reset(seed=seed)
    decisions, actions = [], []
    while True:
        (d,) = guard.check([CheckInput("lunarlander", obs, np.int64(act(obs)), episode_id=episode_id,
                                       step=len(actions))])
        decisions.append(d)
        actions.append(int(np.asarray(d.action).reshape(-1)[0]))
        obs, reward, terminated, truncated, _ = env.step(actions[-1])
        if terminated or truncated:
            return decisions, actions, float(reward)


def after_the_trip(decisions: list, trip_rules: tuple[str, ...]) -> tuple[int | None, int, list[str]]:
    """The first step decided by one of ``trip_rules`` (None: never), the steps the agent drove after it
    (no rule fired), and every step's deciding rule ("-": the agent)."""
    rules = [d.rule or "-" for d in decisions]
    trip = next((t for t, r in enumerate(rules) if r in trip_rules), None)
    agent_after = 0 if trip is None else sum(r == "-" for r in rules[trip + 1 :])
    return trip, agent_after, rules


def main() -> None:
    agent, n, seed0 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    config = Path(sys.argv[4]) if len(sys.argv) > 4 else EXAMPLE / "interlock.yaml"
    guard = guard_for(config, thresholds_of(agent))
    policy = ort.InferenceSession(str(EXAMPLE / f"{agent}_agent.onnx"), providers=["CPUExecutionProvider"])
    name = policy.get_inputs()[0].name
    rules: collections.Counter[str] = collections.Counter()
    steps, rows = 0, []
    for k in range(n):
        env = gym.make("LunarLander-v3")
        obs, _ = env.reset(seed=seed0 + k)
        t, episode = 0, collections.Counter()
        first_trip, monitors, ground, rest = None, [], 0, 0
        while True:
            proposed = int(policy.run(None, {name: obs[None].astype(np.float32)})[0].argmax())
            (d,) = guard.check(
                [
                    CheckInput(
                        "lunarlander", obs.astype(np.float32), np.int64(proposed), episode_id=f"e{k}", step=t
                    )
                ]
            )
            if d.rule:
                episode[d.rule] += 1
            if d.rule in ("handover", "dynamics_shifted"):
                if first_trip is None:
                    first_trip = t
                    monitors = [s for s, _, _, tripped in d.signals if s.endswith(".shift") and tripped]
                if obs[6] > 0.5 or obs[7] > 0.5:
                    ground += 1
                if obs[6] > 0.5 and obs[7] > 0.5 and abs(obs[2]) < 0.05 and abs(obs[3]) < 0.05:
                    rest += 1
            obs, _, terminated, truncated, _ = env.step(int(np.asarray(d.action).reshape(-1)[0]))
            t += 1
            if terminated or truncated:
                break
        steps += t
        rules.update(episode)
        rows.append(
            {
                "seed": seed0 + k,
                "steps": t,
                "truncated": truncated and not terminated,
                "rules": dict(episode),
                "trip": first_trip,
                "monitors": monitors,
                "handover_on_ground": ground,
                "handover_at_rest": rest,
            }
        )
    print(agent, "episodes", n, "steps", steps, "tripped", sum(r["trip"] is not None for r in rows))
    for rule, count in rules.most_common():
        print(f"  {rule}: {count} steps ({count / steps:.2%})")
    for r in rows:
        if r["trip"] is not None or sum(r["rules"].values()) > 12:
            print(r)


if __name__ == "__main__":
    main()
