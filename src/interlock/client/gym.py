"""Gymnasium wrappers that check every action through an Interlock server.

Example:
    >>> import gymnasium as gym
    >>> from interlock import InterlockWrapper
    >>> env = gym.make("CartPole-v1")
    >>> env = InterlockWrapper(env, "127.0.0.1:50051", agent_id="cartpole")  # doctest: +SKIP
    >>> obs, info = env.reset(seed=0)  # doctest: +SKIP
    >>> obs, reward, terminated, truncated, info = env.step(1)  # doctest: +SKIP
    >>> info["interlock"]["verdict"]  # doctest: +SKIP
    'ALLOW'

A ``gymnasium.vector.VectorEnv`` takes :class:`InterlockVectorWrapper` (Gymnasium keeps
vector wrappers apart), which checks all sub-environments in one ``CheckColumns`` call per step.
"""

from __future__ import annotations

import uuid
from typing import Any, SupportsFloat

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from interlock.client.guard import CheckResult, GuardClient
from interlock.types import Verdict

__all__ = ["InterlockHalted", "InterlockVectorWrapper", "InterlockWrapper"]


class InterlockHalted(RuntimeError):
    """Interlock answered HALT and gave no safe action to execute."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__("Interlock halted the agent: " + "; ".join(result.reasons))
        self.result = result


def _to_env_action(space: gymnasium.Space[Any], action: np.ndarray) -> Any:
    """The decision's action in the form ``space`` expects (an int for Discrete)."""
    if isinstance(space, spaces.Discrete):
        return int(np.asarray(action).reshape(()))
    if isinstance(space, spaces.Box):
        return np.asarray(action, dtype=space.dtype).reshape(space.shape)
    return action


def _check_space(space: gymnasium.Space[Any], what: str) -> None:
    if not isinstance(space, spaces.Discrete | spaces.Box):
        raise TypeError(
            f"InterlockWrapper supports Discrete and Box {what} spaces, got {type(space).__name__}; "
            "flatten it first (gymnasium.wrappers.FlattenObservation) or use GuardClient directly"
        )


def _connect(
    target: str, agent_id: str, client: GuardClient | None, timeout: float
) -> tuple[GuardClient, str]:
    """The client to check through and the agent id to check as (the client's default if not given)."""
    if not agent_id and client is None:
        raise ValueError("agent_id is required: the id of this agent in the Interlock config")
    client = client or GuardClient(target, agent_id=agent_id, timeout=timeout)
    return client, agent_id or client.agent_id


class InterlockWrapper(gymnasium.Wrapper):
    """Checks each ``step(action)`` with Interlock and executes the action it returns.

    The decision is in ``info["interlock"]`` (see :meth:`CheckResult.as_dict`). On
    HALT the wrapped environment executes the fail-safe action if the server gave
    one, else it is not stepped; either way the episode ends as truncated.

    Args:
        env: The environment to guard.
        target: ``host:port`` of the Interlock server (ignored when ``client`` is given).
        agent_id: The agent's id in the Interlock config.
        client: An existing :class:`GuardClient` to share.
        timeout: Per-call deadline in seconds.
    """

    def __init__(
        self,
        env: gymnasium.Env,
        target: str = "127.0.0.1:50051",
        agent_id: str = "",
        client: GuardClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        if isinstance(env, VectorEnv):
            raise TypeError(
                f"InterlockWrapper wraps one environment, got the vector environment {type(env).__name__}; "
                "use InterlockVectorWrapper(env, ...) instead (one CheckColumns call per step)"
            )
        super().__init__(env)
        _check_space(env.action_space, "action")
        self.client, self.agent_id = _connect(target, agent_id, client, timeout)
        self._obs: Any = None
        self._episode = ""
        self._step = 0
        #: Counts of verdicts over the wrapper's lifetime, e.g. {"ALLOW": 480, "SUBSTITUTE": 3}.
        self.verdict_counts: dict[str, int] = {}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs, self._episode, self._step = obs, uuid.uuid4().hex, 0
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._obs is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        result = self.client.check(
            self._obs, action, agent_id=self.agent_id, episode_id=self._episode, step=self._step
        )
        name = result.verdict.name
        self.verdict_counts[name] = self.verdict_counts.get(name, 0) + 1
        self._step += 1
        if result.verdict is Verdict.HALT:
            if result.action is None:
                return self._obs, 0.0, False, True, {"interlock": result.as_dict()}
            obs, reward, terminated, _, info = self.env.step(_to_env_action(self.action_space, result.action))
            self._obs = obs
            return obs, reward, terminated, True, {**info, "interlock": result.as_dict()}
        if result.action is None:  # only a HALT may come without an action; never act on none
            raise InterlockHalted(result)
        obs, reward, terminated, truncated, info = self.env.step(
            _to_env_action(self.action_space, result.action)
        )
        self._obs = obs
        return obs, reward, terminated, truncated, {**info, "interlock": result.as_dict()}

    def close(self) -> None:
        super().close()
        self.client.close()


class InterlockVectorWrapper(VectorWrapper):
    """Checks the actions of every sub-environment in one ``CheckColumns`` call per step.

    ``infos["interlock"]`` holds one decision dict per sub-environment. A HALT
    with a fail-safe action executes that action (see the verdict in ``infos``);
    a HALT without one raises :class:`InterlockHalted`, because a vector
    environment cannot skip one of its members.

    Autoreset: in Gymnasium's default ``NEXT_STEP`` mode a sub-environment that ended is
    reset by the following ``step()``, which ignores its action. That row is not checked
    (its ``infos["interlock"]`` entry is None): checking it would ask about an action that is
    never executed, and would show the transition monitor a jump from the last observation of
    one episode to the first of the next. The new episode (a new ``episode_id``, step 0) starts
    with the observation that reset returns. In ``SAME_STEP`` mode it starts at once.

    Example:
        >>> import gymnasium as gym
        >>> from interlock import InterlockVectorWrapper
        >>> venv = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
        >>> venv = InterlockVectorWrapper(venv, "127.0.0.1:50051", agent_id="cartpole")  # doctest: +SKIP
    """

    def __init__(
        self,
        env: VectorEnv,
        target: str = "127.0.0.1:50051",
        agent_id: str = "",
        client: GuardClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(env)
        _check_space(env.single_action_space, "action")
        self.client, self.agent_id = _connect(target, agent_id, client, timeout)
        self._obs: Any = None
        self._episodes: list[str] = []
        self._steps = np.zeros(env.num_envs, dtype=np.int64)
        # [num_envs] bool: sub-environments the next step() resets (NEXT_STEP autoreset)
        self._resetting = np.zeros(env.num_envs, dtype=bool)
        self._next_step_autoreset = (
            env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) == AutoresetMode.NEXT_STEP
        )
        self.verdict_counts: dict[str, int] = {}

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        # VectorEnv.reset is annotated `int | None`, yet its implementations take one seed per sub-env.
        obs, info = self.env.reset(seed=seed, options=options)  # type: ignore[arg-type]
        self._obs = obs
        self._episodes = [uuid.uuid4().hex for _ in range(self.num_envs)]
        self._steps[:] = 0
        self._resetting[:] = False
        return obs, info

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        if self._obs is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        actions = np.asarray(actions)
        space = self.single_action_space
        executed = [_to_env_action(space, a) for a in actions]
        results: list[dict[str, Any] | None] = [None] * self.num_envs
        live = np.flatnonzero(~self._resetting)  # rows whose action the env will execute
        if len(live):
            cols = self.client.check_columns(
                np.asarray(self._obs)[live],
                actions[live],
                agent_id=self.agent_id,
                episode_ids=[self._episodes[i] for i in live],
                steps=self._steps[live],
            )
            for v, k in zip(*np.unique(cols.verdicts, return_counts=True), strict=True):
                name = Verdict(int(v)).name
                self.verdict_counts[name] = self.verdict_counts.get(name, 0) + int(k)
            if not cols.has_action.all():
                raise InterlockHalted(cols.result(int(np.flatnonzero(~cols.has_action)[0])))
            for j, i in enumerate(live):
                executed[i] = _to_env_action(space, cols.actions[j])
                results[i] = cols.result(j).as_dict()
        obs, rewards, terminations, truncations, infos = self.env.step(
            np.stack([np.asarray(a) for a in executed])
        )
        self._obs = obs
        self._steps[live] += 1
        for i in np.flatnonzero(self._resetting):  # reset by this step: obs[i] is step 0 of a new episode
            self._episodes[i] = uuid.uuid4().hex
            self._steps[i] = 0
        ended = np.asarray(terminations) | np.asarray(truncations)
        if self._next_step_autoreset:
            self._resetting = ended
        else:
            for i in np.flatnonzero(ended):
                self._episodes[i] = uuid.uuid4().hex
                self._steps[i] = 0
        infos = dict(infos)
        infos["interlock"] = results
        return obs, rewards, terminations, truncations, infos

    def close(self, **kwargs: Any) -> None:
        super().close(**kwargs)
        self.client.close()
