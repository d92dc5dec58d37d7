"""Calibrate the dense-traffic detector (``handover.DenseTraffic``) on nominal episodes only.

``agent.onnx`` drives in nominal traffic (density 1) on seeds ``--seed-base`` + k, k < ``--episodes``,
in both speed settings; for each episode the smallest running mean of ``handover.closeness`` over the
observations the agent acted on is recorded. The threshold is the smallest of those minima, so none of
the calibration episodes trips (HANDOVER_RULE.md).

* Round 1 (default): the agent unguarded on the development seeds 300000 + k, k < 40; one threshold
  for both speed settings -> ``handover_thresholds.json``.
* Round 2 (``--guarded``): the agent driving under today's shield (``interlock.yaml`` /
  ``interlock_cpss.yaml``), every action decided by Interlock's ``Guard.check``, i.e. the trajectories
  design C2 guards before any trip; with ``--per-speed`` one threshold per speed setting ->
  ``handover_thresholds_r2.json``.

Run::

    SDL_VIDEODRIVER=dummy python examples/highway/handover_calibrate.py
    SDL_VIDEODRIVER=dummy python examples/highway/handover_calibrate.py --guarded --per-speed \
        --seed-base 320000 --episodes 80 --out examples/highway/handover_thresholds_r2.json
    # round 8: calibrate on the agent you guard and write the shipped designs with its thresholds
    SDL_VIDEODRIVER=dummy python examples/highway/handover_calibrate.py --guarded --per-speed \
        --agent my_agent.onnx --seed-base 760000 --episodes 80 --out my_thresholds.json \
        --write-configs my_configs/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from handover import closeness  # noqa: E402
from shield_study import BASE, DENSITIES, ENV_ID, SEEDS, SPEEDS, Agent  # noqa: E402

#: The configs whose trajectories ``--guarded`` calibrates on (today's shield; design C2 before a trip).
GUARD_CONFIGS = {"stock": HERE / "interlock.yaml", "cpss": HERE / "interlock_cpss.yaml"}
AGENT_ID = "highway"
#: The shipped designs (C6 stock, C4 CPSS) that ``--write-configs`` copies with the new thresholds.
SHIPPED_CONFIGS = {"stock": HERE / "interlock_backup_long_r6.yaml",
                   "cpss": HERE / "interlock_live_handover_r4_cpss.yaml"}


def set_dense_threshold(config: dict[str, Any], threshold: float) -> dict[str, Any]:
    """``config`` (a loaded YAML mapping) with its dense-traffic detector (``handover:DenseTraffic``) tripping
    at ``threshold`` metres: the plugin's kwarg and its ``closeness`` / ``score`` signals' thresholds."""
    detectors = [m for a in config["agents"] for m in a.get("monitors", [])
                 if m.get("callable") == "handover:DenseTraffic"]
    if not detectors:
        raise ValueError("the config has no handover:DenseTraffic monitor")
    for plugin in detectors:
        plugin["kwargs"]["threshold"] = threshold
        for signal in ("closeness", "score"):
            plugin["signals"][signal]["threshold"] = threshold
    return config


def episode_minimum(env, agent: Agent, seed: int, guard: Any = None) -> tuple[float, int]:
    """The episode's smallest running mean of ``closeness`` (m) and its step count.

    ``guard`` None: the agent's argmax is executed (unguarded). Otherwise an ``interlock.engine.Guard``
    decides every action (episode id ``calib-<seed>``, steps from 0), so the closeness is that of the
    trajectory the guard produces; a decision without an action is an error, not a silent fallback.
    """
    from interlock.types import CheckInput

    obs, _ = env.reset(seed=seed)
    values: list[float] = []
    done = False
    while not done:
        flat = np.asarray(obs, dtype=np.float32).reshape(1, -1)
        values.append(float(closeness(flat)[0]))
        action = int(np.argmax(agent.q(flat), axis=1)[0])
        if guard is not None:
            [d] = guard.check([CheckInput(AGENT_ID, flat[0], np.int64(action), f"calib-{seed}",
                                          len(values) - 1)])
            if d.action is None:
                raise RuntimeError(f"seed {seed} step {len(values) - 1}: no action: {d.reasons}")
            action = int(d.action)
        obs, _, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
    running = np.cumsum(values) / np.arange(1, len(values) + 1)
    return float(running.min()), len(values)


def thresholds(minima: dict[str, list[float]], per_speed: bool) -> dict[str, float]:
    """Per speed setting, the threshold (m): the smallest per-episode minimum of that setting
    (``per_speed``) or of all settings together (one threshold for all, round 1)."""
    if not minima or any(not v for v in minima.values()):
        raise ValueError("every speed setting needs at least one calibration episode")
    joint = min(min(v) for v in minima.values())
    return {speed: (min(v) if per_speed else joint) for speed, v in minima.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--seed-base", type=int, default=SEEDS["dev"]["nominal"],
                   help="Episode k uses seed seed_base + k (round 1: 300000; round 2: 320000).")
    p.add_argument("--guarded", action="store_true",
                   help="Drive under today's shield through Guard.check (interlock.yaml / "
                        "interlock_cpss.yaml) instead of unguarded.")
    p.add_argument("--per-speed", action="store_true",
                   help="One threshold per speed setting instead of one for both.")
    p.add_argument("--agent", type=Path, default=HERE / "agent.onnx")
    p.add_argument("--out", type=Path, default=HERE / "handover_thresholds.json")
    p.add_argument("--write-configs", type=Path, default=None, metavar="DIR",
                   help="With --per-speed: also write the shipped designs (" + ", ".join(
                       f"{k}: {v.name}" for k, v in SHIPPED_CONFIGS.items()) + ") into DIR with these "
                   "thresholds, ready to serve (the example folder on PYTHONPATH).")
    args = p.parse_args()
    if args.write_configs is not None and not args.per_speed:
        p.error("--write-configs needs --per-speed (one threshold per speed setting)")

    import gymnasium as gym
    import highway_env  # noqa: F401  (registers the environments)

    from interlock.config import load_config
    from interlock.engine import Guard

    agent = Agent(args.agent)
    minima: dict[str, list[float]] = {}
    for speed in ("stock", "cpss"):
        env = gym.make(ENV_ID, config={**BASE, "vehicles_density": DENSITIES["nominal"],
                                       "action": {"type": "DiscreteMetaAction",
                                                  "target_speeds": list(SPEEDS[speed])}})
        guard = Guard(load_config(GUARD_CONFIGS[speed])).load() if args.guarded else None
        seeds = [args.seed_base + k for k in range(args.episodes)]
        minima[speed] = [round(episode_minimum(env, agent, s, guard)[0], 4) for s in seeds]
        if guard is not None:
            guard.unload()
        env.close()
        print(speed, "smallest per-episode minimum", min(minima[speed]), flush=True)
    chosen = thresholds(minima, args.per_speed)
    out: dict[str, Any] = {
        "detector": "handover:DenseTraffic (running mean of closeness, m)",
        # Round 1's file has one number for both settings; --per-speed writes one per setting.
        "threshold_m": chosen if args.per_speed else chosen["stock"],
        "rule": "smallest per-episode minimum of the running mean over the calibration episodes"
                + (", per speed setting" if args.per_speed else ", both speed settings together"),
        "agent": args.agent.name,
        "driver": ("under today's shield through Guard.check: "
                   + ", ".join(p.name for p in GUARD_CONFIGS.values())) if args.guarded else "unguarded",
        "seeds": f"{args.seed_base} + k, k < {args.episodes}, density 1, both speed settings",
        "episode_minima": minima,
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"threshold {out['threshold_m']} m -> {args.out}")
    if args.write_configs is not None:
        import yaml

        args.write_configs.mkdir(parents=True, exist_ok=True)
        for speed, source in SHIPPED_CONFIGS.items():
            config = set_dense_threshold(yaml.safe_load(source.read_text()), chosen[speed])
            target = args.write_configs / source.name
            header = (f"# {source.name} with the dense detector calibrated on {args.agent.name} "
                      f"({args.out.name}): {chosen[speed]} m\n")
            target.write_text(header + yaml.safe_dump(config, sort_keys=False))
            print(f"{speed}: {target}")


if __name__ == "__main__":
    main()
