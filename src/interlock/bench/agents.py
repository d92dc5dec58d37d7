"""Reference agents for the toy-text evidence: Q-values by value iteration on the environment's own model.

An epsilon-greedy agent over these Q-values stands in for a trained tabular agent
(it acts optimally for the return, exploring with probability epsilon); the same
Q-values are the ``scores`` a shield fallback can follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def q_values(
    P: Mapping[int, Mapping[int, Sequence[tuple]]],
    n_states: int,
    n_actions: int,
    gamma: float = 0.99,
    tol: float = 1e-10,
    max_iter: int = 100_000,
) -> np.ndarray:
    """``[S, A]`` optimal discounted Q-values of a toy-text model (``P[s][a] = [(p, s', r, done)]``)."""
    rows = [
        (s, a, p, s2, r, done) for s, by_a in P.items() for a, outs in by_a.items() for p, s2, r, done in outs
    ]
    arr = np.array(rows, dtype=np.float64)
    s, a, p, s2, r, done = (arr[:, i] for i in range(6))
    s, a, s2 = s.astype(np.int64), a.astype(np.int64), s2.astype(np.int64)
    idx = s * n_actions + a
    v = np.zeros(n_states)
    q: np.ndarray = np.zeros((n_states, n_actions))
    for _ in range(max_iter):
        target = p * (r + gamma * (1.0 - done) * v[s2])
        q = np.bincount(idx, weights=target, minlength=n_states * n_actions).reshape(n_states, n_actions)
        v_new = q.max(axis=1)
        if np.max(np.abs(v_new - v)) < tol:
            break
        v = v_new
    return q


class EpsilonGreedy:
    """Greedy in ``q`` (ties at random), uniformly random with probability ``epsilon``."""

    def __init__(self, q: np.ndarray, epsilon: float, rng: np.random.Generator) -> None:
        self.q = q
        self.epsilon = epsilon
        self.rng = rng

    def act(self, state: int) -> int:
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.q.shape[1]))
        row = self.q[state]
        best = np.flatnonzero(row >= row.max() - 1e-12)
        return int(self.rng.choice(best))


class RandomAgent:
    """Uniformly random actions."""

    def __init__(self, n_actions: int, rng: np.random.Generator) -> None:
        self.n = n_actions
        self.rng = rng

    def act(self, state: int) -> int:
        return int(self.rng.integers(self.n))
