"""Evidence for the reachability checks, reproducible by one command.

    python scripts/reachability_evidence.py            # exact shields and learned recoverability
    python scripts/reachability_evidence.py exact      # toy-text shields only (about a minute)
    python scripts/reachability_evidence.py learned    # CartPole recoverability only

Exact: CliffWalking-v1 (plain and slippery) and FrozenLake-v1 (4x4 and 8x8, slippery
and not), shields built from each environment's own model; a uniformly random
agent and an epsilon-greedy agent (optimal Q-values, epsilon 0.2), each unguarded
and guarded, over many seeds. Every guarded decision goes through
:class:`interlock.engine.Guard` with the same configs users write.

Learned: CartPole-v1 under a physics shift (see ``examples/cartpole-recovery``),
an epsilon-greedy agent, unguarded and guarded by the recoverability monitor with
the ``backup`` and ``recover`` fallbacks.

Writes ``docs/reachability-evidence.json`` and ``docs/reachability-evidence.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interlock.bench.agents import EpsilonGreedy, RandomAgent, q_values  # noqa: E402
from interlock.config import LoadedConfig, parse_config  # noqa: E402
from interlock.engine import Guard  # noqa: E402
from interlock.reachability.gym_models import cliffwalking_model, frozenlake_model  # noqa: E402
from interlock.types import CheckInput, Verdict  # noqa: E402

# ---------------------------------------------------------------------------- exact


@dataclass
class Case:
    """One toy-text environment and how to build its model and guarded config."""

    name: str
    env_id: str
    kwargs: dict[str, Any]
    max_steps: int
    risk: dict[str, Any] | None = None

    def make(self):
        import gymnasium as gym

        return gym.make(self.env_id, max_episode_steps=self.max_steps, **self.kwargs)

    def model(self):
        if self.env_id.startswith("CliffWalking"):
            return cliffwalking_model(**self.kwargs)
        return frozenlake_model(self.kwargs.get("map_name", "4x4"), self.kwargs.get("is_slippery", True))


CASES = [
    Case("CliffWalking", "CliffWalking-v1", {}, 200),
    Case("CliffWalking slippery", "CliffWalking-v1", {"is_slippery": True}, 200),
    Case("FrozenLake 4x4", "FrozenLake-v1", {"map_name": "4x4", "is_slippery": False}, 100),
    Case(
        "FrozenLake 4x4 slippery",
        "FrozenLake-v1",
        {"map_name": "4x4", "is_slippery": True},
        100,
        risk={"delta": 0.1, "horizon": 10},
    ),
    Case("FrozenLake 8x8", "FrozenLake-v1", {"map_name": "8x8", "is_slippery": False}, 200),
    Case("FrozenLake 8x8 slippery", "FrozenLake-v1", {"map_name": "8x8", "is_slippery": True}, 200),
]


def shield_config(transitions: Path, scores: Path | None, risk: dict | None, base: Path) -> LoadedConfig:
    """The same YAML a user writes (as a dict): a reachability monitor, one rule, the shield fallback."""
    monitor: dict[str, Any] = {
        "kind": "reachability",
        "name": "shield",
        "model": {"kind": "tabular", "transitions": str(transitions)},
    }
    if risk:
        monitor["risk"] = risk
    fallback: dict[str, Any] = {"kind": "shield", "monitor": "shield"}
    if scores is not None:
        fallback["scores"] = str(scores)
    cfg = parse_config(
        {
            "agents": [
                {
                    "id": "agent",
                    "observation": {"shape": [], "dtype": "int64"},
                    "action": {"type": "discrete", "n": 4},
                    "monitors": [monitor],
                    "policy": {
                        "rules": [
                            {
                                "name": "shield",
                                "when": "tripped.shield.unsafe",
                                "verdict": "substitute",
                                "fallback": "safe",
                            }
                        ]
                    },
                    "fallbacks": {"safe": fallback},
                    "fail_safe": "safe",
                }
            ]
        }
    )
    return LoadedConfig(cfg, base, "evidence", "evidence")


@dataclass
class Tally:
    returns: list[float] = field(default_factory=list)
    unsafe: list[int] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    steps: int = 0
    interventions: int = 0
    halts: int = 0

    def summary(self) -> dict[str, float]:
        r = np.asarray(self.returns)
        return {
            "episodes": len(r),
            "unsafe_total": int(np.sum(self.unsafe)),
            "unsafe_per_episode": float(np.mean(self.unsafe)),
            "episodes_with_unsafe": float(np.mean(np.asarray(self.unsafe) > 0)),
            "return_mean": float(r.mean()),
            "return_std": float(r.std()),
            "success_rate": float(np.mean(self.success)),
            "intervention_rate": self.interventions / max(self.steps, 1),
            "halts": self.halts,
        }


def run_toy(
    case: Case,
    agent_kind: str,
    guard: Guard | None,
    q: np.ndarray,
    unsafe_states: set[int],
    goal: int,
    seeds: int,
    episodes: int,
    epsilon: float,
) -> dict[str, float]:
    """``seeds`` environments in lockstep, ``episodes`` each; one batched Guard call per step."""
    envs = [case.make() for _ in range(seeds)]
    agents = [
        EpsilonGreedy(q, epsilon, np.random.default_rng(1000 + i))
        if agent_kind == "epsilon-greedy"
        else RandomAgent(q.shape[1], np.random.default_rng(1000 + i))
        for i in range(seeds)
    ]
    tally = Tally()
    obs = [env.reset(seed=10_000 * i)[0] for i, env in enumerate(envs)]
    done_eps = [0] * seeds
    ep_ret = [0.0] * seeds
    ep_unsafe = [0] * seeds
    active = list(range(seeds))
    while active:
        proposed = [agents[i].act(int(obs[i])) for i in active]
        if guard is None:
            actions = proposed
        else:
            decisions = guard.check(
                [
                    CheckInput("agent", np.int64(obs[i]), np.int64(a))
                    for i, a in zip(active, proposed, strict=True)
                ]
            )
            actions = []
            for d in decisions:
                tally.interventions += d.verdict is not Verdict.ALLOW
                tally.halts += d.verdict is Verdict.HALT
                if d.action is None:
                    raise RuntimeError(f"HALT without an action: {d.reasons}")
                actions.append(int(d.action))
        still = []
        for i, a in zip(active, actions, strict=True):
            o, r, term, trunc, _ = envs[i].step(a)
            tally.steps += 1
            ep_ret[i] += float(r)
            cliff = case.env_id.startswith("CliffWalking") and r <= -100
            hole = term and int(o) in unsafe_states
            ep_unsafe[i] += int(cliff or hole)
            obs[i] = o
            if term or trunc:
                tally.returns.append(ep_ret[i])
                tally.unsafe.append(ep_unsafe[i])
                tally.success.append(bool(term and int(o) == goal))
                done_eps[i] += 1
                ep_ret[i], ep_unsafe[i] = 0.0, 0
                if done_eps[i] < episodes:
                    obs[i] = envs[i].reset()[0]
                    still.append(i)
            else:
                still.append(i)
        active = still
    for env in envs:
        env.close()
    return tally.summary()


def exact_evidence(seeds: int, episodes: int, epsilon: float, workdir: Path) -> list[dict[str, Any]]:
    import gymnasium as gym

    rows = []
    for case in CASES:
        model = case.model()
        stem = case.name.lower().replace(" ", "_")
        transitions = workdir / f"{stem}.npz"
        model.save(transitions)
        raw = gym.make(case.env_id, **case.kwargs).unwrapped
        q = q_values(raw.P, raw.observation_space.n, raw.action_space.n)
        raw.close()
        scores = workdir / f"{stem}_q.npy"
        np.save(scores, q)
        unsafe_states = set(np.flatnonzero(model.unsafe).tolist())
        goal = int(np.flatnonzero(model.goal)[0])
        modes: list[tuple[str, dict | None]] = [("unguarded", None), ("exact shield", {})]
        if case.risk:
            modes.append((f"risk shield (delta {case.risk['delta']}, H {case.risk['horizon']})", case.risk))
        for agent_kind in ("random", "epsilon-greedy"):
            for mode, risk in modes:
                guard = None
                if risk is not None:
                    guard = Guard(
                        shield_config(
                            transitions, scores if agent_kind != "random" else None, risk or None, workdir
                        )
                    ).load()
                start = time.perf_counter()
                res = run_toy(case, agent_kind, guard, q, unsafe_states, goal, seeds, episodes, epsilon)
                res.update(env=case.name, agent=agent_kind, mode=mode, seconds=time.perf_counter() - start)
                rows.append(res)
                print(
                    f"{case.name:24s} {agent_kind:15s} {mode:32s} "
                    f"unsafe/ep {res['unsafe_per_episode']:7.3f}  "
                    f"return {res['return_mean']:8.2f}  success {res['success_rate']:.3f}  "
                    f"interventions {res['intervention_rate']:.3f}",
                    flush=True,
                )
    return rows


def exact_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| environment | agent | mode | unsafe steps / episode | episodes with a fall | return (mean ± sd) "
        "| success | intervention rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['env']} | {r['agent']} | {r['mode']} | {r['unsafe_per_episode']:.3f} "
            f"({r['unsafe_total']}) | {r['episodes_with_unsafe']:.1%} | {r['return_mean']:.2f} ± "
            f"{r['return_std']:.2f} | {r['success_rate']:.1%} | {r['intervention_rate']:.1%} |"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", nargs="?", choices=["all", "exact", "learned"], default="all")
    parser.add_argument("--seeds", type=int, default=20, help="exact: seeds (environments) per cell")
    parser.add_argument("--episodes", type=int, default=25, help="exact: episodes per seed")
    parser.add_argument("--epsilon", type=float, default=0.2, help="exploration of the epsilon-greedy agents")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where to write the results")
    args = parser.parse_args(argv)
    import tempfile

    results: dict[str, Any] = {}
    md: list[str] = [
        "# Reachability evidence",
        "",
        "Generated by `python scripts/reachability_evidence.py`.",
        "",
    ]
    if args.part in ("all", "exact"):
        with tempfile.TemporaryDirectory() as tmp:
            rows = exact_evidence(args.seeds, args.episodes, args.epsilon, Path(tmp))
        results["exact"] = {
            "seeds": args.seeds,
            "episodes_per_seed": args.episodes,
            "epsilon": args.epsilon,
            "rows": rows,
        }
        md += [
            f"## Exact shields ({args.seeds} seeds x {args.episodes} episodes per row, epsilon "
            f"{args.epsilon})",
            "",
            exact_table(rows),
            "",
        ]
    if args.part in ("all", "learned"):
        from scripts.cartpole_recovery_evidence import learned_evidence, learned_table

        learned = learned_evidence()
        results["learned"] = learned
        md += ["## Learned dynamics: CartPole-v1 under a shift", "", learned_table(learned), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.part == "all" else f"-{args.part}"
    (args.out / f"reachability-evidence{suffix}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"reachability-evidence{suffix}.md").write_text("\n".join(md))
    print(f"wrote {args.out}/reachability-evidence{suffix}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
