"""Tabular models of Gymnasium's toy-text environments, built from their own transition tables.

* CliffWalking: stepping into the cliff does not end the episode (the agent goes
  back to the start with reward -100), so such moves are redirected to one extra
  absorbing unsafe state, index 48 (state 49 of the model). The cliff cells
  themselves (37-46, never observed) are marked unsafe too. The goal (47) is terminal.
* FrozenLake: holes are unsafe (and terminal), the goal is terminal.

Example:
    >>> m = cliffwalking_model()
    >>> m.n_states, m.n_actions, int(m.unsafe.sum())
    (49, 4, 11)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from interlock.reachability.tabular import TabularModel

#: CliffWalking's reward for stepping into the cliff.
CLIFF_REWARD = -100


def cliffwalking_model(is_slippery: bool = False) -> TabularModel:
    """The model of ``CliffWalking-v1`` (``is_slippery`` as the env's own option)."""
    import gymnasium as gym

    # Any: the toy-text attributes (P, shape, desc) are not on gymnasium.Env.
    env: Any = gym.make("CliffWalking-v1", is_slippery=is_slippery).unwrapped
    S, A = int(env.observation_space.n), int(env.action_space.n)
    rows, cols = env.shape  # the cliff: the bottom row between the start and the goal
    cliff = [(rows - 1) * cols + c for c in range(1, cols - 1)]
    goal = [S - 1]
    try:
        return TabularModel.from_toy_text(
            env.P,
            S,
            A,
            unsafe=cliff,
            goal=goal,
            unsafe_transition=lambda s, a, p, s2, r, done: r <= CLIFF_REWARD,
            source="CliffWalking-v1 env.unwrapped.P",
        )
    finally:
        env.close()


def frozenlake_model(
    map_name: str = "4x4", is_slippery: bool = True, desc: list[str] | None = None
) -> TabularModel:
    """The model of ``FrozenLake-v1`` (holes unsafe, goal terminal)."""
    import gymnasium as gym

    kwargs = {"desc": desc} if desc is not None else {"map_name": map_name}
    env: Any = gym.make("FrozenLake-v1", is_slippery=is_slippery, **kwargs).unwrapped
    S, A = int(env.observation_space.n), int(env.action_space.n)
    cells = env.desc.reshape(-1)
    holes = np.flatnonzero(cells == b"H").tolist()
    goal = np.flatnonzero(cells == b"G").tolist()
    try:
        return TabularModel.from_toy_text(
            env.P, S, A, unsafe=holes, goal=goal, source="FrozenLake-v1 env.unwrapped.P"
        )
    finally:
        env.close()
