"""CartPole pieces shared by ``train.py`` and the evidence: physics shifts, a vectorised simulator, agents.

The simulator integrates exactly the equations of gymnasium's ``CartPoleEnv``
(explicit Euler, tau 0.02) for many states at once; training the linear
policies uses it for speed. Everything evaluated in the evidence runs in the
real ``CartPole-v1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THETA_LIMIT = 12 * 2 * np.pi / 360  # CartPole-v1 terminates beyond these
X_LIMIT = 2.4


@dataclass(frozen=True)
class Physics:
    """CartPole's physical parameters (defaults: gymnasium's)."""

    gravity: float = 9.8
    masscart: float = 1.0
    masspole: float = 0.1
    length: float = 0.5  # half the pole's length
    force_mag: float = 10.0
    tau: float = 0.02

    def apply(self, env) -> None:
        """Set these parameters on a ``CartPoleEnv`` (and the totals it derives from them)."""
        u = env.unwrapped
        for k, v in self.__dict__.items():
            setattr(u, k, v)
        u.total_mass = self.masspole + self.masscart
        u.polemass_length = self.masspole * self.length


NOMINAL = Physics()
#: The shift of the evidence: a shorter, heavier pole and a weaker motor.
SHIFTED = Physics(masspole=0.3, length=0.3, force_mag=7.0)


def step(states: np.ndarray, actions: np.ndarray, p: Physics) -> np.ndarray:
    """``[N, 4]`` states, ``[N]`` actions in {0, 1} -> ``[N, 4]`` next states (CartPoleEnv's Euler step)."""
    x, x_dot, theta, theta_dot = states.T
    force = np.where(actions == 1, p.force_mag, -p.force_mag)
    cos, sin = np.cos(theta), np.sin(theta)
    total = p.masspole + p.masscart
    pml = p.masspole * p.length
    temp = (force + pml * theta_dot**2 * sin) / total
    theta_acc = (p.gravity * sin - cos * temp) / (p.length * (4.0 / 3.0 - p.masspole * cos**2 / total))
    x_acc = temp - pml * theta_acc * cos / total
    return np.stack(
        [x + p.tau * x_dot, x_dot + p.tau * x_acc, theta + p.tau * theta_dot, theta_dot + p.tau * theta_acc],
        axis=1,
    )


def failed(states: np.ndarray) -> np.ndarray:
    return (np.abs(states[:, 0]) > X_LIMIT) | (np.abs(states[:, 2]) > THETA_LIMIT)


class LinearPolicy:
    """``logits = obs @ [-k, k] + [0, c]``: push right when ``k . obs + c > 0``."""

    def __init__(self, k: np.ndarray, c: float = 0.0) -> None:
        self.k = np.asarray(k, dtype=np.float64)
        self.c = float(c)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(obs) @ self.k + self.c > 0).astype(np.int64)

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([-self.k, self.k], axis=1), np.array([0.0, self.c])


class NoisyAgent:
    """Acts with a policy, but uniformly at random with probability ``epsilon`` (per row)."""

    def __init__(self, policy: LinearPolicy, epsilon: float, rng: np.random.Generator) -> None:
        self.policy = policy
        self.epsilon = epsilon
        self.rng = rng

    def act(self, obs: np.ndarray) -> np.ndarray:
        a = self.policy.act(obs)
        explore = self.rng.random(len(a)) < self.epsilon
        return np.where(explore, self.rng.integers(0, 2, len(a)), a)
