"""Round 15's probe threshold: ``thrust``'s statistic after a preflight probe of the main engine.

Every episode starts with the main engine fired for ``--steps`` steps (what the probe rule of
``interlock_r15_probe.yaml`` does whatever the agent proposes), checked through Interlock with the
example's config in shadow mode (its monitors and thresholds, no rules). The statistic at step
``--steps`` (after that many main-engine transitions) is the same for every agent, because no agent
has acted yet. Prints its quantiles per world and, for ``--world nominal``, the probe threshold
``h_p`` (the ``--quantile`` of the calm episodes); with ``--threshold``, the share of episodes above it.

    # h_p: calm episodes only (simplex_dev/RULE.md "Round 15")
    python examples/lunarlander/simplex_dev/probe_threshold.py --world nominal --seed 32000
    # round 18's h_w: the maximum over scored transitions 4-12 (the main engine fired 12 steps)
    python examples/lunarlander/simplex_dev/probe_threshold.py --world nominal --seed 33000 --window-max 12
    # the gate, once h_p is fixed
    python examples/lunarlander/simplex_dev/probe_threshold.py --world weak_main --seed 11000 --threshold H
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import numpy as np

from interlock.bench.safety.lunarlander import AGENT_ID, ENV_ID, WORLDS, _guard, engine_power
from interlock.types import CheckInput

MAIN_ENGINE = 2


def probe_statistics(
    world: str, seed: int, episodes: int, steps: int, monitor: str, window_max: int | None = None
) -> np.ndarray:
    """``[episodes]`` ``<monitor>.shift`` after ``steps`` main-engine transitions (the main engine fired
    from step 0); with ``window_max``, the engine fired that long and the statistic's largest value
    while ``steps <= <monitor>.scored <= window_max`` (round 18's early rule reads that window)."""
    guard = _guard(False)  # the example's monitors and thresholds, shadow mode
    spec = WORLDS[world]
    fired = window_max if window_max is not None else steps
    envs = [gym.make(ENV_ID, **spec["kwargs"]) for _ in range(episodes)]
    out = np.full(episodes, -np.inf)
    with engine_power(spec):
        obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
        for t in range(fired + 1):
            batch = np.stack(obs).astype(np.float32)
            decisions = guard.check(
                [
                    CheckInput(AGENT_ID, batch[i], np.int64(MAIN_ENGINE), episode_id=f"probe-{i}", step=t)
                    for i in range(episodes)
                ]
            )
            for i, d in enumerate(decisions):
                values = {name: v for name, v, _, _ in d.signals}
                scored = values[f"{monitor}.scored"]
                in_window = steps <= scored <= window_max if window_max is not None else t == steps
                if in_window:
                    out[i] = max(out[i], values[f"{monitor}.shift"])
            if t == fired:
                break
            for i, env in enumerate(envs):
                obs[i], _, term, trunc, _ = env.step(MAIN_ENGINE)
                if term or trunc:
                    raise RuntimeError(f"episode {seed + i} ended during the probe")
    for env in envs:
        env.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="nominal", choices=sorted(WORLDS))
    p.add_argument("--seed", type=int, default=32000, help="episode i resets with seed + i")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--steps", type=int, default=4, help="probe length K")
    p.add_argument("--monitor", default="thrust")
    p.add_argument("--window-max", type=int, help="fire this long; the maximum over scored steps..this")
    p.add_argument("--quantile", type=float, default=0.9, help="h_p's quantile of the calm episodes")
    p.add_argument("--threshold", type=float, help="report the share of episodes above it")
    p.add_argument("--json", help="write the statistics and the summary here")
    args = p.parse_args()
    stats = probe_statistics(args.world, args.seed, args.episodes, args.steps, args.monitor, args.window_max)
    summary: dict[str, object] = {
        "world": args.world,
        "seeds": [args.seed, args.seed + args.episodes - 1],
        "steps": args.steps,
        "window_max": args.window_max,
        "quantiles": {str(q): float(np.quantile(stats, q)) for q in (0.5, 0.75, 0.9, 0.95, 0.99)},
    }
    if args.world == "nominal":
        summary["h_p"] = float(np.quantile(stats, args.quantile))
    if args.threshold is not None:
        summary["share_above"] = float(np.mean(stats > args.threshold))
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**summary, "statistics": stats.tolist()}, f, indent=1)


if __name__ == "__main__":
    main()
