"""Round 18: calibrate an agent's transition monitors on its calm episodes flown with the probe.

The trip thresholds of rounds 12-17 were calibrated on the agent flying alone; with a probe the guard
changes what the monitors see (four more main-engine transitions early in an episode). Here the agent's
calm episodes run through Interlock with the config's ``probe`` rule only (no handover, so the
trajectories are the agent's plus the probe's substitutions, what a calm episode looks like under the
guard before any trip), in lockstep, and ``interlock calibrate`` then sets the three thresholds
together on them (``--joint``, as round 12).

    python examples/lunarlander/simplex_dev/probe_calibration_data.py --agent dqn_dev \\
        --config CONFIG --thresholds simplex_dev/r12_thresholds/dev/thresholds_dqn_dev.json \\
        --out-dir simplex_dev/r18_thresholds/dev

``--thresholds``: the file the monitors read while the episodes run (only ``episode.shifted`` in the
probe's condition depends on it); the agent's own round-12 file, the closest to what will run.
Writes ``<out-dir>/thresholds_<agent>.json`` (and the episodes, ``data/probe_<agent>.npz``, not
committed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from interlock.config import LoadedConfig, TransitionMonitorConfig, load_config
from interlock.engine import Guard
from interlock.monitors.calibrate import calibrate, guarded_act
from interlock.monitors.calibrate_transition import rollout_episodes
from interlock.spaces import AgentSpaces

HERE = Path(__file__).resolve().parents[1]
AGENT_ID = "lunarlander"


def probe_only_guard(config: Path, thresholds: Path) -> Guard:
    """The config's monitors (reading ``thresholds``) and its ``probe`` rule alone."""
    loaded = load_config(config)
    agent = loaded.config.agents[0]
    rules = [r for r in agent.policy.rules if r.name == "probe"]
    if not rules:
        raise SystemExit(f"{config} has no rule named 'probe'")
    own = {"thresholds_file": str(thresholds.resolve())}
    monitors = [
        m.model_copy(update=own) if isinstance(m, TransitionMonitorConfig) else m for m in agent.monitors
    ]
    agent = agent.model_copy(
        update={"monitors": monitors, "policy": agent.policy.model_copy(update={"rules": rules})}
    )
    config_ = loaded.config.model_copy(update={"agents": [agent]})
    return Guard(LoadedConfig(config_, loaded.base_dir, loaded.version, loaded.source)).load()


def probe_episodes(agent: str, guard: Guard, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """``episodes`` calm episodes of ``agent`` (greedy) under ``guard``, reset seeds ``seed + e``, all in
    lockstep: ``obs [N, 8]``, ``action [N]`` (executed), ``next_obs [N, 8]``, ``episode [N]``, every
    transition (the terminal one too), as ``interlock calibrate --under-rule`` rolls them out."""
    (runtime,) = guard.agents
    data = rollout_episodes(
        "LunarLander-v3",
        str(HERE / f"{agent}_agent.onnx"),
        AgentSpaces.from_config(runtime.config),
        episodes,
        seed=seed,
        act=guarded_act(guard, AGENT_ID, (8,)),
        lockstep=episodes,
    )
    return {"obs": data.obs, "action": data.action, "next_obs": data.next_obs, "episode": data.episode}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", required=True, help="<agent>_agent.onnx in examples/lunarlander")
    p.add_argument("--config", type=Path, required=True, help="a config with a rule named 'probe'")
    p.add_argument("--thresholds", type=Path, required=True, help="what the monitors read meanwhile")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=500)
    p.add_argument("--seed", type=int, default=20_000, help="calibration reset seeds (development)")
    p.add_argument("--episode-false-alarm-rate", type=float, default=0.02)
    p.add_argument("--intervention-budget", type=float, default=0.01)
    args = p.parse_args()
    if args.seed + args.episodes > 100_000:
        raise SystemExit("calibration seeds must stay below 100000 (the evaluation range)")
    guard = probe_only_guard(args.config, args.thresholds)
    data = probe_episodes(args.agent, guard, args.episodes, args.seed)
    (HERE / "data").mkdir(exist_ok=True)
    np.savez_compressed(HERE / "data" / f"probe_{args.agent}.npz", **data)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"thresholds_{args.agent}.json"
    out.unlink(missing_ok=True)
    calibrate(
        args.config,
        AGENT_ID,
        data,
        episode_rate=args.episode_false_alarm_rate,
        output=out,
        intervention_budget=args.intervention_budget,
        joint=True,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
