"""A model-predictive shield over all five meta-actions of highway-fast-v0, unguarded vs shielded.

The DQN of this directory drives; before each decision the shield asks
:class:`kinematic_model.KinematicModel` for the safety margin (smallest predicted bumper gap, m)
of every meta-action and keeps the agent's action if its margin is at least ``threshold``, else
takes the safe action with the highest Q, else the action with the largest margin
(:func:`kinematic_model.shield_choice`).

Cells: traffic ``nominal`` (vehicles_density 1, the training traffic) and ``dense``
(vehicles_density 2, the shift), each with two action settings: ``stock`` target speeds
(highway-env's default 20, 25, 30 m/s) and ``cpss`` (0, 5, ..., 30 m/s, the setting of the CPSS
runtime-shield paper, where braking can avoid a jam). Everything else is the benchmark's nominal
traffic (``benchmarks/safety/highway.py``: highway-fast-v0, 20-step episodes, 15 vehicles).

Seeds (see README.md): development and evaluation seeds are disjoint ranges; the designs
(``VARIANTS``) and their thresholds are chosen on development seeds only, then the chosen one
runs once on the evaluation seeds. Episode ``k`` of a cell uses the same seed unguarded and
shielded (paired), for every variant and both speed settings.

Collisions are ``info["crashed"]``; intervals are Wilson 95%.

Run::

    SDL_VIDEODRIVER=dummy python examples/highway/shield_study.py --phase dev --episodes 40 \\
        --variants h2_t2,h2_t5 --out /tmp/dev_part.json
    python examples/highway/shield_study.py --merge /tmp/dev_part.json ... --json shield_study.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from kinematic_model import (  # noqa: E402
    KinematicModel,
    estimate_accel,
    shield_choice,
    shield_choice_ranked,
    trapped_margins,
)

ENV_ID = "highway-fast-v0"
BASE = {"duration": 20, "vehicles_count": 15}  # benchmarks/safety/highway.py NOMINAL traffic
DENSITIES = {"nominal": 1.0, "dense": 2.0}
SPEEDS = {
    "stock": (20.0, 25.0, 30.0),  # highway-env's MDPVehicle.DEFAULT_TARGET_SPEEDS
    "cpss": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0),
}
#: Seed of episode k in a cell: SEEDS[phase][density] + k (same for both speed settings).
SEEDS = {
    "dev": {"nominal": 300_000, "dense": 310_000},
    "eval": {"nominal": 400_000, "dense": 410_000},
    # Fresh evaluation seeds for the round-4 design (issue 11 follow-up), never used before it.
    "eval2": {"nominal": 420_000, "dense": 430_000},
    # The evaluation-only second agent (train_agent.py --seed 1), with the round-4 design.
    "eval_agent2": {"nominal": 440_000, "dense": 450_000},
    # The Simplex handover (HANDOVER_RULE.md): its one evaluation, and the second agent's.
    "handover_eval": {"nominal": 460_000, "dense": 470_000},
    "handover_agent2": {"nominal": 480_000, "dense": 490_000},
    # Fresh development seeds for the learned-critic exploration's one confirmation (CRITIC.md,
    # HANDOVER_RULE.md round 3), never used before it.
    "dev2": {"nominal": 330_000, "dense": 340_000},
    # A larger validation set for the critic exploration, inside the critic's training-seed range
    # (600000 + k) but disjoint from its data episodes (critic_data.py uses k < 100000 from 0 up;
    # these are k = 60000.. and 70000..): more episodes than dev's 40 to compare designs.
    "critic_val": {"nominal": 660_000, "dense": 670_000},
    # HANDOVER_RULE.md round 4's one evaluation (the live handover, C2 beside it), never used before it.
    "eval_r4": {"nominal": 500_000, "dense": 510_000},
    # HANDOVER_RULE.md round 5's one evaluation, if its rule chooses a candidate; never used before it.
    "eval_r5": {"nominal": 520_000, "dense": 530_000},
    # HANDOVER_RULE.md round 7 (a record, no choice): the shipped designs once more on fresh seeds,
    # agent.onnx, then the evaluation-only agent_seed1.onnx; never used before it.
    "eval_r7": {"nominal": 540_000, "dense": 550_000},
    "eval_r7_agent2": {"nominal": 560_000, "dense": 570_000},
    # Round 7b: a third, evaluation-only agent (agent_seed12.onnx), trained after round 7 was written.
    "eval_r7_agent3": {"nominal": 580_000, "dense": 590_000},
    # Round 7c: a fourth, evaluation-only agent trained four times longer (agent_seed13_40k.onnx).
    "eval_r7_agent4": {"nominal": 740_000, "dense": 750_000},
    # Round 8: agent_seed13_40k.onnx with its own detector thresholds (calibrated on 760000 + k).
    "eval_r8_agent4": {"nominal": 770_000, "dense": 780_000},
}


@dataclass(frozen=True)
class Variant:
    """A shield design: the model's settings (target speeds come from the cell) and a threshold."""

    horizon: int = 2
    followups: tuple[str, ...] = ("hold", "brake")
    lead_decel: float = 0.0
    lateral_clearance: float = 2.0
    threshold: float = 2.0  # metres
    tie_tolerance: float = 0.0  # metres; see kinematic_model.shield_choice
    #: Others keep the acceleration observed over the episode's last decision
    #: (kinematic_model.estimate_accel from the previous observation); False: constant velocity.
    accel: bool = False
    #: > 0: a substitute is ranked by a second model of this horizon with lane-change follow-ups
    #: (kinematic_model.shield_choice_ranked); the proposal is still judged at ``horizon``.
    rank_horizon: int = 0
    #: With rank_horizon: an action whose ranking margin is below this (m) counts as unsafe
    #: (kinematic_model.trapped_margins); None: off.
    trap_threshold: float | None = None
    #: The others' model in both looks: "constant" or "idm" (kinematic_model.KinematicModel).
    others_model: str = "constant"


#: Every design tried, by name (development seeds first; see README.md for the record).
VARIANTS: dict[str, Variant] = {
    "h2_t2": Variant(horizon=2, threshold=2.0),
    "h2_t5": Variant(horizon=2, threshold=5.0),
    "h3_t2": Variant(horizon=3, threshold=2.0),
    "h2_t2_dec3": Variant(horizon=2, threshold=2.0, lead_decel=3.0),
    "h2_t2_hold": Variant(horizon=2, threshold=2.0, followups=("hold",)),
    "h1_t2": Variant(horizon=1, threshold=2.0),
    # Round 2 (after round 1's dense crashes: leaders braking at up to 6 m/s^2 in jams, and
    # FASTER picked on margin ties when nothing was safe).
    "h2_t2_tie": Variant(horizon=2, threshold=2.0, tie_tolerance=1.0),
    "h2_t2_dec6_tie": Variant(horizon=2, threshold=2.0, lead_decel=6.0, tie_tolerance=1.0),
    "h2_t0_dec6_tie": Variant(horizon=2, threshold=0.0, lead_decel=6.0, tie_tolerance=1.0),
    "h3_t2_dec6_tie": Variant(horizon=3, threshold=2.0, lead_decel=6.0, tie_tolerance=1.0),
    # Round 3 (round 2: the Q tie-break helped, worst-case braking leaders did not; h1_t2 was
    # the only design within 2% interventions in both nominal cells).
    "h1_t2_tie": Variant(horizon=1, threshold=2.0, tie_tolerance=1.0),
    "h1_t3_tie": Variant(horizon=1, threshold=3.0, tie_tolerance=1.0),
    # Round 4 (issue 11 follow-up, after the oracle.py bound; selection rule unchanged, README.md):
    # the others' accelerations observed in the episode, and lane-change follow-ups at horizon 2.
    "h1_t3_tie_acc": Variant(horizon=1, threshold=3.0, tie_tolerance=1.0, accel=True),
    "h2_t3_tie_acc": Variant(horizon=2, threshold=3.0, tie_tolerance=1.0, accel=True),
    "h2_t3_tie_lr": Variant(horizon=2, threshold=3.0, tie_tolerance=1.0,
                            followups=("hold", "brake", "left", "right")),
    "h2_t3_tie_lr_acc": Variant(horizon=2, threshold=3.0, tie_tolerance=1.0,
                                followups=("hold", "brake", "left", "right"), accel=True),
    # Round 5 (written after round 4 -- nothing beat h1_t3_tie in stock dense -- and a per-step
    # look at oracle.py's choices on two dev seeds the shield crashed on: when nothing is safe
    # the Q tie-break picked a doomed lane change that a 2-decision look had ranked lower, and
    # "safe" lanes led into a jam a second later). The proposal is still judged at horizon 1; the
    # substitute is ranked by a horizon-2 model with lane-change follow-ups.
    "h1_t3_tie_rank2": Variant(horizon=1, threshold=3.0, tie_tolerance=1.0, rank_horizon=2),
    "h1_t3_tie_acc_rank2": Variant(horizon=1, threshold=3.0, tie_tolerance=1.0, accel=True, rank_horizon=2),
    # Round 5b: the same two after a fix. In round 5's first run the ranking applied only when
    # some action was safe, not when none was (the case the oracle look had shown); it changed no
    # dev episode (results identical to h1_t3_tie / h1_t3_tie_acc). Now the least bad actions are
    # ranked too (kinematic_model.shield_choice_ranked).
    "h1_t3_tie_rank2b": Variant(horizon=1, threshold=3.0, tie_tolerance=1.0, rank_horizon=2),
    "h1_t3_tie_acc_rank2b": Variant(horizon=1, threshold=3.0, tie_tolerance=1.0, accel=True, rank_horizon=2),
    # Round 6 (after round 5b: ranking substitutes helped by one stock dense crash; the oracle look
    # also showed a lane safe for 1 s that is a trap a second later): also an action whose
    # horizon-2 margin with every follow-up (hold, brake, left, right) is a predicted collision
    # (< 0 m) counts as unsafe.
    "h1_t3_tie_rank2b_trap0": Variant(horizon=1, threshold=3.0, tie_tolerance=1.0, rank_horizon=2,
                                      trap_threshold=0.0),
    # Round 7 (after rounds 5b and 6: ranking substitutes by horizon 2 is the only gain, -1 stock
    # dense crash; judging traps cost nominal interventions): rank substitutes over 3 decisions.
    "h1_t3_tie_rank3b": Variant(horizon=1, threshold=3.0, tie_tolerance=1.0, rank_horizon=3),
    # Round 8 (written while round 7 ran; the oracle's edge is knowing how the others react): the
    # observed vehicles follow highway-env's IDM behind the nearest observed vehicle (or the ego)
    # ahead in their lane, in both looks.
    "h1_t3_tie_idm_rank2b": Variant(horizon=1, threshold=3.0, tie_tolerance=1.0, rank_horizon=2,
                                    others_model="idm"),
    "h2_t3_tie_lr_idm": Variant(horizon=2, threshold=3.0, tie_tolerance=1.0,
                                followups=("hold", "brake", "left", "right"), others_model="idm"),
}


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


class Agent:
    """The greedy DQN from ONNX: obs [batch, 25] -> Q [batch, 5]."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def q(self, obs: np.ndarray) -> np.ndarray:
        """[batch, 25] -> [batch, 5]."""
        return self.session.run(None, {self.input: obs.astype(np.float32)})[0]


@dataclass
class Episode:
    seed: int
    ret: float = 0.0
    crashed: bool = False
    steps: int = 0
    interventions: int = 0
    no_safe_action: int = 0  # steps on which no meta-action reached the threshold
    model_seconds: float = 0.0


def run_episode(env, agent: Agent, seed: int, model: KinematicModel | None,
                threshold: float, tie_tolerance: float = 0.0, accel: bool = False,
                rank_model: KinematicModel | None = None, trap_threshold: float | None = None) -> Episode:
    """One episode; ``model`` None = unguarded."""
    ep = Episode(seed)
    obs, _ = env.reset(seed=seed)
    done = False
    previous = None
    while not done:
        flat = np.asarray(obs, dtype=np.float32).reshape(1, -1)
        q = agent.q(flat)
        proposed = np.argmax(q, axis=1)
        action = int(proposed[0])
        if model is not None:
            t0 = time.perf_counter()
            others_accel = estimate_accel(previous, flat) if accel and previous is not None else None
            margins = model.margins_all(flat, others_accel)
            ranking = None
            if rank_model is not None and trap_threshold is not None:
                ranking = rank_model.margins_all(flat, others_accel)
                margins = trapped_margins(margins, ranking, trap_threshold)
            if rank_model is not None and margins[0, action] < threshold:
                if ranking is None:
                    ranking = rank_model.margins_all(flat, others_accel)
                action = int(shield_choice_ranked(margins, ranking, q, proposed, threshold, tie_tolerance)[0])
            else:
                action = int(shield_choice(margins, q, proposed, threshold, tie_tolerance)[0])
            ep.model_seconds += time.perf_counter() - t0
            ep.interventions += action != int(proposed[0])
            ep.no_safe_action += not bool((margins >= threshold).any())
        previous = flat
        obs, reward, terminated, truncated, info = env.step(action)
        ep.ret += float(reward)
        ep.steps += 1
        ep.crashed = ep.crashed or bool(info.get("crashed"))
        done = terminated or truncated
    return ep


def summarise(eps: list[Episode]) -> dict[str, Any]:
    n = len(eps)
    k = sum(e.crashed for e in eps)
    steps = max(sum(e.steps for e in eps), 1)
    lo, hi = wilson(k, n)
    return {
        "episodes": n,
        "collisions": k,
        "collision_rate": k / n if n else 0.0,
        "collision_wilson95": [lo, hi],
        "mean_return": float(np.mean([e.ret for e in eps])) if eps else 0.0,
        "steps": int(sum(e.steps for e in eps)),
        "intervention_rate": sum(e.interventions for e in eps) / steps,
        "no_safe_action_rate": sum(e.no_safe_action for e in eps) / steps,
        "model_ms_per_step": 1000 * sum(e.model_seconds for e in eps) / steps,
        "crashed_seeds": [e.seed for e in eps if e.crashed],
    }


def run(phase: str, episodes: int, speeds: list[str], variants: list[str], agents: dict[str, Path],
        unguarded: bool, densities: list[str] | None = None) -> dict[str, Any]:
    """All cells of ``phase`` for the given speed settings and variants."""
    import gymnasium as gym
    import highway_env  # noqa: F401  (registers the environments)

    out: dict[str, Any] = {"phase": phase, "episodes_per_cell": episodes, "cells": {}}
    for speed in speeds:
        agent = Agent(agents[speed])
        for density in densities or list(DENSITIES):
            dens = DENSITIES[density]
            config = {**BASE, "vehicles_density": dens,
                      "action": {"type": "DiscreteMetaAction", "target_speeds": list(SPEEDS[speed])}}
            env = gym.make(ENV_ID, config=config)
            seeds = [SEEDS[phase][density] + k for k in range(episodes)]
            cell: dict[str, Any] = {"agent": agents[speed].name, "seeds": [seeds[0], seeds[-1]]}
            t0 = time.perf_counter()
            if unguarded:
                cell["unguarded"] = summarise([run_episode(env, agent, s, None, 0.0) for s in seeds])
            for name in variants:
                v = VARIANTS[name]
                model = KinematicModel(target_speeds=SPEEDS[speed], horizon=v.horizon,
                                       followups=v.followups, lead_decel=v.lead_decel,
                                       lateral_clearance=v.lateral_clearance, others_model=v.others_model)
                rank_model = None if not v.rank_horizon else KinematicModel(
                    target_speeds=SPEEDS[speed], horizon=v.rank_horizon,
                    followups=("hold", "brake", "left", "right"), lead_decel=v.lead_decel,
                    lateral_clearance=v.lateral_clearance, others_model=v.others_model)
                cell[name] = summarise([run_episode(env, agent, s, model, v.threshold, v.tie_tolerance,
                                                    v.accel, rank_model, v.trap_threshold) for s in seeds])
                cell[name]["variant"] = asdict(v)
            env.close()
            cell["seconds"] = time.perf_counter() - t0
            out["cells"][f"{speed}/{density}"] = cell
            print(f"{phase} {speed}/{density}: " + ", ".join(
                f"{k}: {c['collisions']}/{c['episodes']} crashes, return {c['mean_return']:.2f}, "
                f"interv {100 * c['intervention_rate']:.1f}%"
                for k, c in cell.items() if isinstance(c, dict)), flush=True)
    return out


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge part files: {phase: {cell: {run: summary}}}."""
    merged: dict[str, Any] = {}
    for part in parts:
        phase = merged.setdefault(part["phase"], {"episodes_per_cell": part["episodes_per_cell"],
                                                  "cells": {}})
        if phase["episodes_per_cell"] != part["episodes_per_cell"]:
            raise ValueError(f"parts of phase {part['phase']} differ in episodes per cell")
        for name, cell in part["cells"].items():
            phase["cells"].setdefault(name, {}).update(cell)
    return merged


def markdown(merged: dict[str, Any]) -> str:
    """A table per phase: collisions with Wilson intervals, return vs unguarded, interventions."""
    lines = ["# highway-fast-v0: five-action kinematic shield, unguarded vs shielded", "",
             "Generated by `shield_study.py --merge`; see README.md for seeds and the selection rule.",
             "Return % is of the unguarded run on the same seeds; interventions are steps whose action",
             "the shield changed; 'none safe' is steps on which no action reached the threshold.",
             "'model ms/step' is wall clock per decision on a shared 2-core machine at load 5-17",
             "(preemption included); README.md gives the model's CPU time.", ""]
    for phase, data in merged.items():
        lines += [f"## {phase} ({data['episodes_per_cell']} episodes per cell)", "",
                  "| speeds / traffic | run | collisions | rate [Wilson 95%] | return (% unguarded) "
                  "| interventions | none safe | model ms/step |",
                  "|---|---|---|---|---|---|---|---|"]
        for cell_name, cell in data["cells"].items():
            base = cell.get("unguarded", {}).get("mean_return")
            for run_name, r in cell.items():
                if not isinstance(r, dict):
                    continue
                lo, hi = r["collision_wilson95"]
                pct = f" ({100 * r['mean_return'] / base:.0f}%)" if base else ""
                lines.append(
                    f"| {cell_name} | {run_name} | {r['collisions']}/{r['episodes']} | "
                    f"{100 * r['collision_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] | "
                    f"{r['mean_return']:.2f}{pct} | {100 * r['intervention_rate']:.1f}% | "
                    f"{100 * r['no_safe_action_rate']:.1f}% | {r['model_ms_per_step']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=sorted(SEEDS), default="dev")
    p.add_argument("--episodes", type=int, default=40, help="Episodes per cell.")
    p.add_argument("--speeds", default="stock,cpss", help="Comma list of SPEEDS keys.")
    p.add_argument("--densities", default=",".join(DENSITIES), help="Comma list of DENSITIES keys.")
    p.add_argument("--variants", default=",".join(VARIANTS), help="Comma list of VARIANTS keys.")
    p.add_argument("--no-unguarded", action="store_true", help="Skip the unguarded runs.")
    p.add_argument("--agent", type=Path, default=HERE / "agent.onnx", help="Agent for stock speeds.")
    p.add_argument("--agent-cpss", type=Path, default=HERE / "agent.onnx", help="Agent for cpss speeds.")
    p.add_argument("--out", type=Path, help="Write this run's part file here.")
    p.add_argument("--merge", type=Path, nargs="+", help="Merge part files instead of running.")
    p.add_argument("--json", type=Path, default=HERE / "shield_study.json", help="Merged output.")
    args = p.parse_args()
    if args.merge:
        merged = merge([json.loads(f.read_text()) for f in args.merge])
        args.json.write_text(json.dumps(merged, indent=1) + "\n")
        args.json.with_suffix(".md").write_text(markdown(merged))
        print(f"wrote {args.json} and {args.json.with_suffix('.md')}")
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    res = run(args.phase, args.episodes, args.speeds.split(","), variants,
              {"stock": args.agent, "cpss": args.agent_cpss}, not args.no_unguarded,
              args.densities.split(","))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
