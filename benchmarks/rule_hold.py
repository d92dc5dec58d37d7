"""What ``hold_while`` costs per decision, side by side: the LunarLander config as shipped and the same
config with its ``hold_while`` removed, both through ``Guard.check`` (no server), interleaved.

Each call checks ``--batch`` rows of distinct episodes at the same step, for ``--steps`` steps, so the
engine looks up and records the deciding rule of every row. Prints the median time per call over
``--repeats`` rounds and the ratio. Usage::

    python benchmarks/rule_hold.py --batch 1 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interlock.config import LoadedConfig, load_config
from interlock.engine import Guard
from interlock.types import CheckInput

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "lunarlander" / "interlock.yaml"


def without_holds(loaded: LoadedConfig) -> LoadedConfig:
    (agent,) = loaded.config.agents
    rules = [r.model_copy(update={"hold_while": None}) for r in agent.policy.rules]
    agent = agent.model_copy(update={"policy": agent.policy.model_copy(update={"rules": rules})})
    return LoadedConfig(
        loaded.config.model_copy(update={"agents": [agent]}), loaded.base_dir, loaded.version, loaded.source
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--batch", type=int, action="append", help="rows per call (repeatable; default 1, 64)"
    )
    parser.add_argument("--steps", type=int, default=200, help="calls per round")
    parser.add_argument("--repeats", type=int, default=7, help="rounds per configuration")
    args = parser.parse_args()
    loaded = load_config(CONFIG)
    if not any(r.hold_while for r in loaded.config.agents[0].policy.rules):
        raise SystemExit(f"{CONFIG} has no hold_while: nothing to compare")
    guards = {"hold_while": Guard(loaded).load(), "without": Guard(without_holds(loaded)).load()}
    rng = np.random.default_rng(0)
    for batch in args.batch or [1, 64]:
        obs = rng.normal(0.0, 0.3, (batch, 8)).astype(np.float32)
        obs[:, 1] += 1.0  # airborne, legs up: every monitor scores
        obs[:, 6:] = 0.0
        times: dict[str, list[float]] = {k: [] for k in guards}
        for rep in range(args.repeats):
            for name, guard in guards.items():
                start = time.perf_counter()
                for step in range(args.steps):
                    guard.check(
                        [
                            CheckInput(
                                "lunarlander", obs[i], np.int64(i % 4), episode_id=f"{rep}-{i}", step=step
                            )
                            for i in range(batch)
                        ]
                    )
                times[name].append((time.perf_counter() - start) / args.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"batch {batch:3d}: with hold_while {med['hold_while'] * 1e6:8.0f} us/call, without "
            f"{med['without'] * 1e6:8.0f} us/call, ratio {med['hold_while'] / med['without']:.3f}"
        )


if __name__ == "__main__":
    main()
