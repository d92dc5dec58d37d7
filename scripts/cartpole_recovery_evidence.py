"""The learned half of the reachability evidence: CartPole-v1 under a physics shift.

    python scripts/reachability_evidence.py learned     # (this module is its learned part)

The agent is ``examples/cartpole_recovery/agent.onnx`` acting epsilon-greedy (a
random action with probability epsilon, a stand-in for a policy meeting states it
was not trained on); the environment is the real ``CartPole-v1``, with nominal and
with shifted physics (a shorter, heavier pole and a weaker motor). Guarded runs
go through :class:`interlock.engine.Guard` with the example's config: the
``backup`` fallback (Simplex switch) and the ``recover`` fallback (best
worst-case recoverability among both actions). All seeds run in lockstep, one
batched Guard call per step.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cartpole_recovery"
sys.path.insert(0, str(EXAMPLE))

from cartpole_physics import NOMINAL, SHIFTED, Physics  # noqa: E402

from interlock.config import LoadedConfig, load_config  # noqa: E402
from interlock.engine import Guard  # noqa: E402
from interlock.types import CheckInput, Verdict  # noqa: E402


def with_fallback(loaded: LoadedConfig, fallback: str) -> LoadedConfig:
    """The example config with the 'irreversible' rule pointing at another fallback."""
    cfg = loaded.config.model_dump()
    for rule in cfg["agents"][0]["policy"]["rules"]:
        rule["fallback"] = fallback
    from interlock.config import parse_config

    return LoadedConfig(parse_config(cfg), loaded.base_dir, f"{loaded.version}-{fallback}", loaded.source)


def run(
    physics: Physics, guard: Guard | None, epsilon: float, seeds: int, episodes: int, max_steps: int = 500
) -> dict[str, Any]:
    import gymnasium as gym
    import onnxruntime as ort

    agent = ort.InferenceSession(str(EXAMPLE / "agent.onnx"), providers=["CPUExecutionProvider"])
    envs = []
    for _ in range(seeds):
        env = gym.make("CartPole-v1", max_episode_steps=max_steps)
        physics.apply(env)
        envs.append(env)
    rngs = [np.random.default_rng(500 + i) for i in range(seeds)]
    obs = [env.reset(seed=7_000 * i)[0] for i, env in enumerate(envs)]
    returns, fails, causes = [], [], {"pole": 0, "track": 0}
    steps = interventions = halts = 0
    ep_ret = [0.0] * seeds
    done_eps = [0] * seeds
    active = list(range(seeds))
    check_seconds = 0.0
    while active:
        batch = np.stack([obs[i] for i in active]).astype(np.float32)
        (logits,) = agent.run(None, {"obs": batch})
        proposed = logits.argmax(axis=1)
        for j, i in enumerate(active):
            if rngs[i].random() < epsilon:
                proposed[j] = rngs[i].integers(2)
        actions = proposed
        if guard is not None:
            t0 = time.perf_counter()
            decisions = guard.check(
                [CheckInput("cartpole-recovery", batch[j], np.int64(proposed[j])) for j in range(len(active))]
            )
            check_seconds += time.perf_counter() - t0
            actions = []
            for d in decisions:
                interventions += d.verdict is not Verdict.ALLOW
                halts += d.verdict is Verdict.HALT
                if d.action is None:
                    raise RuntimeError(f"HALT without an action: {d.reasons}")
                actions.append(int(d.action))
        still = []
        for j, i in enumerate(active):
            o, r, term, trunc, _ = envs[i].step(int(actions[j]))
            steps += 1
            ep_ret[i] += float(r)
            obs[i] = o
            if term or trunc:
                returns.append(ep_ret[i])
                fails.append(bool(term))
                if term:
                    causes["track" if abs(o[0]) > 2.4 else "pole"] += 1
                ep_ret[i] = 0.0
                done_eps[i] += 1
                if done_eps[i] < episodes:
                    obs[i] = envs[i].reset()[0]
                    still.append(i)
            else:
                still.append(i)
        active = still
    for env in envs:
        env.close()
    r = np.asarray(returns)
    return {
        "episodes": len(r),
        "failures": int(np.sum(fails)),
        "failure_rate": float(np.mean(fails)),
        "failure_causes": causes,
        "return_mean": float(r.mean()),
        "return_std": float(r.std()),
        "intervention_rate": interventions / max(steps, 1),
        "halts": halts,
        "check_ms_per_call": 1e3 * check_seconds / max(steps / seeds, 1) if guard else 0.0,
    }


def learned_evidence(seeds: int = 8, episodes: int = 5, epsilon: float = 0.3) -> dict[str, Any]:
    base = load_config(EXAMPLE / "interlock.yaml")
    rows = []
    for pname, physics in (("nominal", NOMINAL), ("shifted", SHIFTED)):
        for mode in ("unguarded", "backup", "recover"):
            guard = None if mode == "unguarded" else Guard(with_fallback(base, mode)).load()
            start = time.perf_counter()
            res = run(physics, guard, epsilon, seeds, episodes)
            res.update(
                physics=pname,
                mode=mode if mode == "unguarded" else f"guarded, {mode} fallback",
                seconds=time.perf_counter() - start,
            )
            rows.append(res)
            print(
                f"CartPole {pname:8s} {res['mode']:26s} failures {res['failures']:3d}/{res['episodes']}  "
                f"return {res['return_mean']:7.1f}  interventions {res['intervention_rate']:.3f}",
                flush=True,
            )
    return {
        "seeds": seeds,
        "episodes_per_seed": episodes,
        "epsilon": epsilon,
        "shift": {k: v for k, v in SHIFTED.__dict__.items() if NOMINAL.__dict__[k] != v},
        "rows": rows,
    }


def learned_table(result: dict[str, Any]) -> str:
    shift = ", ".join(f"{k} {NOMINAL.__dict__[k]} -> {v}" for k, v in result["shift"].items())
    out = [
        f"{result['seeds']} seeds x {result['episodes_per_seed']} episodes per row, agent epsilon "
        f"{result['epsilon']}; shift: {shift}.",
        "",
        "| physics | mode | failures (pole down / cart out) | return (mean ± sd) | intervention rate |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        out.append(
            f"| {r['physics']} | {r['mode']} | {r['failures']}/{r['episodes']} ({r['failure_rate']:.0%}) "
            f"| {r['return_mean']:.1f} ± {r['return_std']:.1f} | {r['intervention_rate']:.1%} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    print(learned_table(learned_evidence()))
