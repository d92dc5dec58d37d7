"""The study's evaluation cells again, with every decision made by Interlock's engine.

``shield_study.py`` ran the first chosen shield (``h1_t3_tie``) outside Interlock. This script runs the
SAME evaluation cells (the same agent, traffic, target speeds and evaluation seeds 400000 + k and
410000 + k, see README.md) with each action decided by ``Guard.check`` in process on
``interlock.yaml`` (stock speeds) or ``interlock_cpss.yaml`` (CPSS speeds), and compares every
episode with ``shield_study.json``: the same rule on the same seeds must give the same collisions,
returns and interventions. No tuning happens here.

The second evaluation (round 4's chosen design ``h1_t3_tie_rank2b``, fresh seeds 420000 + k and
430000 + k, with paired unguarded runs; ``interlock_eval2.json``) ran with ``--seeds eval2
--unguarded --variant h1_t3_tie_rank2b``; ``interlock_dev_check.json`` is the same on the
development seeds (``--seeds dev``), compared with the study.

The Simplex handover designs of HANDOVER_RULE.md (``--design handover``, ``shield_handover`` or
``shielded_handover``, and round 2's ``shielded_handover_r2``:
a dense-traffic detector and a robust backup; ``interlock_handover*.yaml``,
``interlock_shield_handover*.yaml``) run the same way; each cell then also reports how many
episodes the detector tripped in and at which step (``trip_steps``: the first decision whose
``dense.shifted`` signal tripped, -1 when never).

Run::

    # the handover designs on the development seeds (HANDOVER_RULE.md)
    SDL_VIDEODRIVER=dummy python examples/highway/interlock_eval.py --design handover --seeds dev \
        --episodes 40 --json /tmp/handover_dev.json
    # interlock_eval.json, with the configs of commit a8150d5 (h1_t3_tie):
    SDL_VIDEODRIVER=dummy python examples/highway/interlock_eval.py --episodes 100 --variant h1_t3_tie \\
        --json examples/highway/interlock_eval.json
    SDL_VIDEODRIVER=dummy python examples/highway/interlock_eval.py --seeds eval2 --unguarded \\
        --variant h1_t3_tie_rank2b --episodes 100 --json examples/highway/interlock_eval2.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # highway_shield, kinematic_model, shield_study (not automatic)

from shield_study import (  # noqa: E402
    BASE,
    DENSITIES,
    ENV_ID,
    SEEDS,
    SPEEDS,
    Agent,
    Episode,
    summarise,
)
from shield_study import run_episode as run_unguarded  # noqa: E402

#: The configs of each design, per speed setting.
DESIGNS = {
    "shield": {"stock": HERE / "interlock.yaml", "cpss": HERE / "interlock_cpss.yaml"},
    "handover": {"stock": HERE / "interlock_handover.yaml", "cpss": HERE / "interlock_handover_cpss.yaml"},
    "shield_handover": {"stock": HERE / "interlock_shield_handover.yaml",
                        "cpss": HERE / "interlock_shield_handover_cpss.yaml"},
    "shielded_handover": {"stock": HERE / "interlock_shielded_handover.yaml",
                          "cpss": HERE / "interlock_shielded_handover_cpss.yaml"},
    # Round 2's C2: C with the detector calibrated on the shielded agent's nominal episodes.
    "shielded_handover_r2": {"stock": HERE / "interlock_shielded_handover_r2.yaml",
                             "cpss": HERE / "interlock_shielded_handover_r2_cpss.yaml"},
    # Round 4: C2 with the handover live (while the running mean is under the threshold).
    "live_handover_r4": {"stock": HERE / "interlock_live_handover_r4.yaml",
                         "cpss": HERE / "interlock_live_handover_r4_cpss.yaml"},
    # Round 5's candidates (stock only): C4 with the backup's shield choice stricter after the handover.
    "dense_margin_r5_t5": {"stock": HERE / "interlock_dense_margin_r5_t5.yaml"},
    "dense_margin_r5_t8": {"stock": HERE / "interlock_dense_margin_r5_t8.yaml"},
    "dense_margin_r5_h2": {"stock": HERE / "interlock_dense_margin_r5_h2.yaml"},
    # Round 6: C4 (stock) with a backup trained longer on dense traffic.
    "backup_long_r6": {"stock": HERE / "interlock_backup_long_r6.yaml"},
    # The learned-critic exploration (critic.py, CRITIC.md; stock speeds only, not shipped): the
    # critic alone, the critic and the kinematic margin, and C2 with the critic choosing after the trip
    # (the agent proposing, or the backup).
    "critic": {"stock": HERE / "interlock_critic.yaml"},
    "critic_kin": {"stock": HERE / "interlock_critic_kin.yaml"},
    "critic_handover": {"stock": HERE / "interlock_critic_handover.yaml"},
    "critic_backup": {"stock": HERE / "interlock_critic_backup.yaml"},
    # C2's choice with the critic's veto after the trip (the backup proposing, or the agent).
    "critic_veto_backup": {"stock": HERE / "interlock_critic_veto_backup.yaml"},
    "critic_veto_handover": {"stock": HERE / "interlock_critic_veto_handover.yaml"},
}
CONFIGS = DESIGNS["shield"]
#: The design the committed configs implement (interlock_eval.json was made with h1_t3_tie's configs,
#: before round 4: commit a8150d5).
VARIANT = "h1_t3_tie_rank2b"
AGENT_ID = "highway"


def run_episode(env, agent: Agent, guard, seed: int) -> tuple[Episode, int, int]:
    """One episode decided by ``guard``; returns it, its count of non-ALLOW verdicts and the step at
    which the dense-traffic detector's ``dense.shifted`` first tripped (-1: never, or no detector).

    ``Episode.interventions`` counts, like the study, steps whose executed action differs from the
    agent's (a SUBSTITUTE may return the agent's own action when no action is safe).
    """
    from interlock.types import CheckInput, Verdict

    ep, not_allowed, trip_step = Episode(seed), 0, -1
    obs, _ = env.reset(seed=seed)
    done = False
    while not done:
        flat = np.asarray(obs, dtype=np.float32).reshape(-1)
        proposed = int(np.argmax(agent.q(flat[None]), axis=1)[0])
        t0 = time.perf_counter()
        [d] = guard.check([CheckInput(AGENT_ID, flat, np.int64(proposed), f"eval-{seed}", ep.steps)])
        ep.model_seconds += time.perf_counter() - t0
        if d.action is None:
            raise RuntimeError(f"seed {seed} step {ep.steps}: HALT without an action: {d.reasons}")
        action = int(d.action)
        not_allowed += d.verdict is not Verdict.ALLOW
        ep.interventions += action != proposed
        tripped = {n: t for n, _, _, t in d.signals}
        ep.no_safe_action += bool(tripped.get("shield.best_margin"))
        if trip_step < 0 and tripped.get("dense.shifted"):
            trip_step = ep.steps
        obs, reward, terminated, truncated, info = env.step(action)
        ep.ret += float(reward)
        ep.steps += 1
        ep.crashed = ep.crashed or bool(info.get("crashed"))
        done = terminated or truncated
    return ep, not_allowed, trip_step


def _plugins(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every monitor and fallback of a config's agents."""
    plugins = [m for a in data["agents"] for m in a.get("monitors", [])]
    return plugins + [f for a in data["agents"] for f in a.get("fallbacks", {}).values()]


def _rewritten(path: Path, data: dict[str, Any]) -> Path:
    """A temporary copy of the config at ``path`` (same file name) holding ``data``."""
    import tempfile

    import yaml

    tmp = Path(tempfile.mkdtemp(prefix="highway_cfg_")) / path.name
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp


def with_critic_overrides(path: Path, overrides: dict[str, Any]) -> Path:
    """``path``, or a temporary copy whose ``critic:`` python plugins have ``overrides`` in their kwargs."""
    if not overrides:
        return path
    import yaml

    data = yaml.safe_load(path.read_text())
    hit = 0
    for plugin in _plugins(data):
        if plugin.get("kind") == "python" and str(plugin.get("callable", "")).startswith("critic:"):
            plugin.setdefault("kwargs", {}).update(overrides)
            hit += 1
    if not hit:
        raise SystemExit(f"{path.name} has no critic plugin to override")
    return _rewritten(path, data)


def with_dense_threshold(path: Path, threshold: float | None) -> Path:
    """``path``, or a temporary copy whose dense-traffic detector trips at ``threshold`` metres
    (``handover_calibrate.set_dense_threshold``)."""
    if threshold is None:
        return path
    import yaml
    from handover_calibrate import set_dense_threshold

    try:
        return _rewritten(path, set_dense_threshold(yaml.safe_load(path.read_text()), threshold))
    except ValueError as e:
        raise SystemExit(f"{path.name}: {e}") from None


def compare(mine: dict[str, Any], study: dict[str, Any]) -> dict[str, Any]:
    """Differences between this run's summary and the study's for the same cell and seeds."""
    return {
        "same_crashed_seeds": mine["crashed_seeds"] == study["crashed_seeds"],
        "collisions": [mine["collisions"], study["collisions"]],
        "mean_return": [mine["mean_return"], study["mean_return"]],
        "intervention_rate": [mine["intervention_rate"], study["intervention_rate"]],
        "steps": [mine["steps"], study["steps"]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=100, help="Episodes per cell (the study: 100).")
    p.add_argument("--speeds", default="stock,cpss")
    p.add_argument("--densities", default="nominal,dense")
    p.add_argument("--seeds", choices=sorted(SEEDS), default="eval",
                   help="Seed ranges of shield_study.SEEDS: eval (400000+k / 410000+k, the first "
                        "evaluation), eval2 (420000+k / 430000+k, the round-4 design's), dev, "
                        "handover_eval, handover_agent2 (HANDOVER_RULE.md).")
    p.add_argument("--design", choices=sorted(DESIGNS), default="shield",
                   help="Which configs decide: shield (interlock*.yaml), or the handover designs "
                        "(HANDOVER_RULE.md) handover (A), shield_handover (B), shielded_handover (C), "
                        "shielded_handover_r2 (C2, round 2).")
    p.add_argument("--unguarded", action="store_true",
                   help="Also run the agent unguarded on the same seeds (paired).")
    p.add_argument("--variant", default=VARIANT, help="Name of the design the configs implement.")
    p.add_argument("--agent", type=Path, default=HERE / "agent.onnx",
                   help="The driving agent's ONNX (the configs' fallback still ranks by agent.onnx's Q).")
    p.add_argument("--critic-set", action="append", default=[], metavar="KEY=VALUE",
                   help="Override a kwarg of every `critic:` python plugin (VALUE is JSON), e.g. "
                        "threshold=0.6 or critic=/tmp/c.onnx; the config is rewritten to a temporary file.")
    p.add_argument("--handover-thresholds", type=Path, default=None,
                   help="A handover_calibrate.py --per-speed output: the dense detector's threshold of "
                        "each speed setting is taken from it instead of the config (round 8).")
    p.add_argument("--study", type=Path, default=HERE / "shield_study.json")
    p.add_argument("--json", type=Path, help="Write the result here.")
    args = p.parse_args()

    import gymnasium as gym
    import highway_env  # noqa: F401  (registers the environments)

    from interlock.config import load_config
    from interlock.engine import Guard

    study = json.loads(args.study.read_text()).get(args.seeds, {}).get("cells", {})
    if args.agent.name != "agent.onnx":
        study = {}  # the study drove agent.onnx: nothing to compare another agent with
    agent = Agent(args.agent)
    if args.design != "shield":
        study = {}  # the study ran the shield only
    out: dict[str, Any] = {"agent": args.agent.name, "design": args.design, "variant": args.variant,
                           "seeds": args.seeds,
                           "episodes_per_cell": args.episodes, "cells": {}}
    overrides = {}
    for item in args.critic_set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    out["critic_set"] = overrides
    dense_thresholds: dict[str, float] = {}
    if args.handover_thresholds is not None:
        dense_thresholds = json.loads(args.handover_thresholds.read_text())["threshold_m"]
        if not isinstance(dense_thresholds, dict):
            raise SystemExit(f"{args.handover_thresholds}: needs one threshold per speed (--per-speed)")
        out["handover_thresholds"] = {"file": args.handover_thresholds.name, **dense_thresholds}
    for speed in args.speeds.split(","):
        config_path = with_critic_overrides(DESIGNS[args.design][speed], overrides)
        config_path = with_dense_threshold(config_path, dense_thresholds.get(speed))
        guard = Guard(load_config(config_path)).load()
        for density in args.densities.split(","):
            config = {**BASE, "vehicles_density": DENSITIES[density],
                      "action": {"type": "DiscreteMetaAction", "target_speeds": list(SPEEDS[speed])}}
            env = gym.make(ENV_ID, config=config)
            seeds = [SEEDS[args.seeds][density] + k for k in range(args.episodes)]
            t0 = time.process_time()
            runs = [run_episode(env, agent, guard, s) for s in seeds]
            cell = summarise([e for e, _, _ in runs])
            cell["not_allow_rate"] = sum(n for _, n, _ in runs) / max(cell["steps"], 1)
            trips = [t for _, _, t in runs]
            cell["trip_steps"] = trips
            cell["tripped_episodes"] = sum(t >= 0 for t in trips)
            cell["median_trip_step"] = (float(np.median([t for t in trips if t >= 0]))
                                        if any(t >= 0 for t in trips) else None)
            cell["cpu_seconds"] = time.process_time() - t0
            if args.unguarded:
                cell["unguarded"] = summarise([run_unguarded(env, agent, s, None, 0.0) for s in seeds])
            env.close()
            ref = study.get(f"{speed}/{density}", {}).get(args.variant)
            if ref is not None and args.episodes == ref["episodes"]:
                cell["vs_study"] = compare(cell, ref)
            out["cells"][f"{speed}/{density}"] = cell
            unguarded = cell.get("unguarded") or (study.get(f"{speed}/{density}") or {}).get("unguarded")
            print(f"{args.seeds} {speed}/{density}: {cell['collisions']}/{cell['episodes']} crashes "
                  f"(unguarded {unguarded['collisions'] if unguarded else '?'}), "
                  f"return {cell['mean_return']:.3f} (unguarded "
                  f"{unguarded['mean_return'] if unguarded else float('nan'):.3f}), interventions "
                  f"{100 * cell['intervention_rate']:.2f}%, non-ALLOW {100 * cell['not_allow_rate']:.2f}%, "
                  f"tripped {cell['tripped_episodes']}/{cell['episodes']} "
                  f"(median step {cell['median_trip_step']}), "
                  f"cpu {cell['cpu_seconds']:.0f} s", flush=True)
            if args.json:  # after every cell, so a long run leaves its finished cells behind
                args.json.write_text(json.dumps(out, indent=1) + "\n")
        guard.unload()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
