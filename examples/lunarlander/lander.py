"""Shared pieces of the LunarLander-v3 shift study: worlds, behaviour policies, episode runs.

Observation (8 float32): ``x, y, vx, vy, angle, angular_velocity, left_leg_contact,
right_leg_contact``; the last two are 0/1 flags. Actions: 0 noop, 1 left engine, 2 main engine,
3 right engine.

Worlds (:data:`WORLDS`):

* ``nominal``: LunarLander-v3 as made, no wind, main engine power 13.0.
* ``wind``: ``enable_wind=True, wind_power=15, turbulence_power=1.5`` (the issue's shift). The wind
  is applied only while neither leg touches the ground.
* ``weak_main``: main engine power x0.6 (13.0 -> 7.8). Gymnasium reads the power from the module
  constant ``gymnasium.envs.box2d.lunar_lander.MAIN_ENGINE_POWER`` at every step (it is not an env
  attribute), so :func:`main_engine_power` sets that constant for the duration of a ``with`` block
  (process-wide: run shifted and nominal episodes in separate blocks, never interleaved).

Crash (used by every script here): the episode terminates with reward exactly -100, which Gymnasium
gives when ``game_over`` (the hull touched the ground) or ``abs(x) >= 1`` (flew off screen). A
landing ends with ``lander.awake`` false and the normal shaping reward (+100 bonus), never -100.
Episodes cut by the 1000-step time limit are neither.

Seeds: see README.md. Every episode here is ``env.reset(seed=s)`` with an explicit seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime as ort
from gymnasium.envs.box2d import lunar_lander

from interlock.bench.safety import lunarlander as lunar_bench

HERE = Path(__file__).resolve().parent
ENV_ID = "LunarLander-v3"
OBS_DIM = 8
N_ACTIONS = 4
# The worlds and the engine-power switch are the benchmark's (one definition for the studies and
# `interlock bench safety`).
WORLDS = lunar_bench.WORLDS
NOMINAL_MAIN_ENGINE_POWER = lunar_bench.NOMINAL_MAIN_ENGINE_POWER
main_engine_power = lunar_bench.main_engine_power
engine_power = lunar_bench.engine_power


def make_env(world: str) -> gym.Env:
    """A LunarLander-v3 env of ``world`` (engine power is set by :func:`engine_power`)."""
    return gym.make(ENV_ID, **WORLDS[world]["kwargs"])


def session(path: str | Path) -> ort.InferenceSession:
    """A single-threaded onnxruntime session (the machine is shared)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxAgent:
    """A discrete agent exported as ``obs [B, 8] -> scores [B, 4]`` (logits or Q); greedy = argmax."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sess = session(path)
        self.input = self.sess.get_inputs()[0].name

    def scores(self, obs: np.ndarray) -> np.ndarray:
        """``obs [B, 8]`` -> ``[B, 4]`` logits or Q-values."""
        return self.sess.run(None, {self.input: np.asarray(obs, np.float32).reshape(-1, OBS_DIM)})[0]

    def act(self, obs: np.ndarray) -> np.ndarray:
        """``obs [B, 8]`` -> greedy actions ``[B]`` int64."""
        return self.scores(obs).argmax(1)


def heuristic_policy(env: gym.Env) -> Callable[[np.ndarray], int]:
    """Gymnasium's hand-written lander controller for ``env`` (one observation -> action)."""
    un = env.unwrapped
    return lambda o: int(lunar_lander.heuristic(un, o))


@dataclass
class Episode:
    """One episode: ``obs [T, 8]``, ``action [T]``, ``next_obs [T, 8]``, ``reward [T]`` and how it ended."""

    seed: int
    world: str
    obs: np.ndarray
    action: np.ndarray
    next_obs: np.ndarray
    reward: np.ndarray
    terminated: bool
    truncated: bool
    extra: dict = field(default_factory=dict)

    @property
    def ret(self) -> float:
        return float(self.reward.sum())

    @property
    def crashed(self) -> bool:
        """Terminal step with reward -100 (hull contact or off screen); see the module docstring."""
        return bool(self.terminated and self.reward[-1] == -100)

    @property
    def landed(self) -> bool:
        return bool(self.terminated and not self.crashed)


def run_episode(
    world: str,
    seed: int,
    choose: Callable[[gym.Env, np.ndarray, np.random.Generator], int],
    rng_seed: int | None = None,
) -> Episode:
    """Run one episode of ``world`` from ``env.reset(seed=seed)``.

    Args:
        world: a key of :data:`WORLDS`.
        seed: reset seed.
        choose: ``(env, obs [8], rng) -> action`` (the env is given for the heuristic controller).
        rng_seed: seed of the generator handed to ``choose`` (default: ``seed``).
    """
    env = make_env(world)
    rng = np.random.default_rng(seed if rng_seed is None else rng_seed)
    obs_l, act_l, nxt_l, rew_l = [], [], [], []
    with engine_power(WORLDS[world]):
        o, _ = env.reset(seed=int(seed))
        term = trunc = False
        while not (term or trunc):
            a = int(choose(env, o, rng))
            n, r, term, trunc, _ = env.step(a)
            obs_l.append(o)
            act_l.append(a)
            nxt_l.append(n)
            rew_l.append(r)
            o = n
    env.close()
    return Episode(
        int(seed), world, np.asarray(obs_l, np.float32), np.asarray(act_l, np.int64),
        np.asarray(nxt_l, np.float32), np.asarray(rew_l, np.float64), bool(term), bool(trunc),
    )


def agent_chooser(agent: OnnxAgent, epsilon: float = 0.0):
    """``choose`` for :func:`run_episode`: the agent's greedy action, random with prob ``epsilon``."""

    def choose(env, o, rng):
        if epsilon > 0 and rng.random() < epsilon:
            return int(rng.integers(N_ACTIONS))
        return int(agent.act(o[None])[0])

    return choose


def heuristic_chooser(epsilon: float = 0.0):
    """``choose`` for :func:`run_episode`: Gymnasium's heuristic, random with prob ``epsilon``."""

    def choose(env, o, rng):
        if epsilon > 0 and rng.random() < epsilon:
            return int(rng.integers(N_ACTIONS))
        return int(lunar_lander.heuristic(env.unwrapped, o))

    return choose


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))
