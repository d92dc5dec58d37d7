"""``interlock demo cartpole``: serve the CartPole example and drive a real agent through it.

The config and models ship with the package (:mod:`interlock.demo_assets`), so the demo runs
from any folder after ``pip install interlock``. The agent is the policy trained by
``examples/cartpole/train_policy.py`` (in the source checkout), made
unreliable on purpose: with probability ``--epsilon`` it proposes a random
action (a stand-in for a policy meeting states it was not trained on). The demo
runs the same seeded episodes unguarded and guarded and prints return and
interventions for both.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np

from interlock.cli.errors import UsageError

#: Demos whose config and models ship in interlock.demo_assets.
DEMOS = ("cartpole",)


@contextlib.contextmanager
def demo_config(name: str) -> Iterator[Path]:
    """The shipped ``interlock.yaml`` of demo ``name`` as a file path (models beside it)."""
    if name not in DEMOS:
        raise UsageError(f"no demo named '{name}' (available: {', '.join(DEMOS)})")
    with resources.as_file(resources.files("interlock.demo_assets") / name) as folder:
        yield Path(folder) / "interlock.yaml"


class NoisyOnnxAgent:
    """A policy in ONNX (observation -> logits) that acts randomly with probability epsilon."""

    def __init__(self, model: Path, epsilon: float, seed: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.epsilon = epsilon
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> int:
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(2))
        (logits,) = self.session.run(None, {self.input: np.asarray(obs, np.float32)[None]})
        return int(np.argmax(logits[0]))


def run_episodes(env, agent: NoisyOnnxAgent, episodes: int, seed: int, progress: bool = True) -> dict:
    from tqdm import tqdm

    returns, interventions, halts = [], 0, 0
    steps = 0
    for ep in tqdm(range(episodes), desc="episodes", disable=not progress, leave=False):
        obs, _ = env.reset(seed=seed + ep)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(agent.act(obs))
            total += float(reward)
            steps += 1
            verdict = info.get("interlock", {}).get("verdict", "ALLOW")
            interventions += verdict != "ALLOW"
            halts += verdict == "HALT"
            done = terminated or truncated
        returns.append(total)
    return {
        "mean_return": float(np.mean(returns)),
        "min_return": float(np.min(returns)),
        "interventions": interventions,
        "halts": halts,
        "steps": steps,
    }


def demo_cartpole(config: Path, episodes: int, epsilon: float, seed: int) -> dict:
    import gymnasium as gym

    from interlock.client.gym import InterlockWrapper
    from interlock.config import load_config
    from interlock.server.background import background_server

    loaded = load_config(config)
    policy = config.parent / "policy.onnx"
    print(f"agent: {policy.name} with epsilon={epsilon} random actions; {episodes} episodes, seeds {seed}..")
    unguarded = run_episodes(gym.make("CartPole-v1"), NoisyOnnxAgent(policy, epsilon, seed), episodes, seed)
    with background_server(loaded) as server:
        print(f"interlock: serving {config} (config {loaded.version}) on 127.0.0.1:{server.port}")
        env = InterlockWrapper(gym.make("CartPole-v1"), f"127.0.0.1:{server.port}", agent_id="cartpole")
        guarded = run_episodes(env, NoisyOnnxAgent(policy, epsilon, seed), episodes, seed)
        counts = dict(env.verdict_counts)
        env.close()
    print(f"{'':10s} {'mean return':>12s} {'min return':>11s} {'interventions':>14s} {'steps':>7s}")
    for name, r in (("unguarded", unguarded), ("guarded", guarded)):
        print(
            f"{name:10s} {r['mean_return']:12.1f} {r['min_return']:11.1f} {r['interventions']:14d} "
            f"{r['steps']:7d}"
        )
    print("verdicts (guarded):", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return {"unguarded": unguarded, "guarded": guarded, "verdicts": counts}


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.config:
        demo_cartpole(Path(args.config), args.episodes, args.epsilon, args.seed)
        return 0
    with demo_config(args.example) as config:
        demo_cartpole(config, args.episodes, args.epsilon, args.seed)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="serve an example and drive a real agent through it",
        description="Serve the example's config (shipped with the package; examples/<EXAMPLE>/interlock.yaml "
        "in the checkout) on a free loopback port, run seeded episodes of a deliberately noisy agent "
        "unguarded and then guarded, and print return and interventions.",
    )
    p.add_argument("example", nargs="?", default="cartpole", choices=list(DEMOS), help="which example")
    p.add_argument("--config", default=None, help="use this config instead of the example's")
    p.add_argument("--episodes", type=int, default=10, help="episodes per run (default 10)")
    p.add_argument("--epsilon", type=float, default=0.3, help="share of random actions the agent proposes")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
