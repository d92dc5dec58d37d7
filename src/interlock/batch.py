"""What monitors, the policy and fallbacks work on: a :class:`Batch` of requests and its signals.

Monitors see whole batches (``[batch, *obs_shape]`` observations and
``[batch, *action_shape]`` actions, ``[batch]`` for discrete) so that model-based
monitors run each ensemble once per batch. Each signal is a :class:`SignalBatch`:
a ``[batch]`` float64 array with one threshold; ``tripped`` says where the value crosses it.

:func:`cel_activation` is the one definition of what a CEL expression sees for one
row: :meth:`Batch.rows`, the engine's per-row policy evaluation and the policy's
load-time probe all build their activations through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Batch", "SignalBatch", "cel_activation"]


def cel_activation(
    *,
    obs: list[float],
    action: int | list[float],
    labels: Mapping[str, str],
    step: int,
    agent_id: str,
    episode_id: str,
    signal_names: Sequence[str] | None = None,
    values: Sequence[float] = (),
    tripped: Sequence[bool] = (),
    episode: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The CEL activation of one row.

    Args:
        obs: The flattened observation, ``[obs_size]`` floats.
        action: The action: an int for discrete spaces, ``[action_size]`` floats otherwise.
        labels: The request's labels.
        step: The request's step number.
        agent_id: The agent's id as sent.
        episode_id: The request's episode id.
        signal_names: "<monitor>.<signal>" names; given, the activation also holds
            ``signals.<monitor>.<signal>`` (from ``values``) and ``tripped.<monitor>.<signal>``
            (from ``tripped``), as the decision policy's rules read them. ``None``: no signal maps
            (monitor rules are evaluated before any signal exists).
        values: One value per name in ``signal_names``.
        tripped: One flag per name in ``signal_names``.
        episode: The row's episode facts (``shifted`` bool, ``steps_since_shift`` int, ``steps``
            int; :mod:`interlock.episodes`), read by rules as ``episode.<field>``; None when the
            agent keeps no episode state.
    """
    activation: dict[str, Any] = {
        "obs": obs,
        "action": action,
        "labels": labels,
        "step": step,
        "agent_id": agent_id,
        "episode_id": episode_id,
    }
    if signal_names is not None:
        signal_map: dict[str, dict[str, float]] = {}
        tripped_map: dict[str, dict[str, bool]] = {}
        for name, value, trip in zip(signal_names, values, tripped, strict=True):
            monitor, _, signal = name.partition(".")
            signal_map.setdefault(monitor, {})[signal] = value
            tripped_map.setdefault(monitor, {})[signal] = trip
        activation["signals"] = signal_map
        activation["tripped"] = tripped_map
    if episode is not None:
        for key, value in episode.items():
            activation[f"episode.{key}"] = value
    return activation


@dataclass
class Batch:
    """The requests of one agent that are decided together.

    Attributes:
        agent_id: The agent's id as sent (not the glob it matched).
        observations: ``[batch, *obs_shape]`` in the observation space's dtype.
        actions: ``[batch, *action_shape]`` (``[batch]`` int for discrete).
        steps: ``[batch]`` int64 step numbers.
        episode_ids: One episode id per row.
        labels: One label mapping per row.
    """

    agent_id: str
    observations: np.ndarray
    actions: np.ndarray
    steps: np.ndarray
    episode_ids: Sequence[str] = field(default_factory=list)
    labels: Sequence[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.observations)

    def rows(self) -> list[dict[str, Any]]:
        """Plain-Python view of each row (``obs``, ``action``, ``labels``, ``step``, ids), as CEL sees it.

        Computed once per batch and shared by every rule that reads it.
        """
        cached = self.__dict__.get("_rows")
        if cached is None:
            n = len(self)
            obs = self.observations.reshape(n, -1).astype(np.float64).tolist()
            acts = self.actions
            actions = (
                acts.astype(np.int64).tolist()
                if acts.ndim == 1 and acts.dtype.kind in "iu"
                else (acts.reshape(n, -1).astype(np.float64).tolist())
            )
            steps = self.steps.tolist()
            cached = [
                cel_activation(
                    obs=obs[i],
                    action=actions[i],
                    labels=self.labels[i] if self.labels else {},
                    step=steps[i],
                    agent_id=self.agent_id,
                    episode_id=self.episode_ids[i] if self.episode_ids else "",
                )
                for i in range(n)
            ]
            self.__dict__["_rows"] = cached
        return cached

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as CEL sees it (:func:`cel_activation` without signals), built for that row alone.

        The per-row policy path calls this only for rows that a rule the vectoriser could not
        compile has to see; :meth:`rows` builds every row at once (the ``rules`` monitor).
        """
        cached: list[dict[str, Any]] | None = self.__dict__.get("_rows")
        if cached is not None:
            return cached[i]
        act = self.actions[i]
        action = (
            int(act)
            if self.actions.ndim == 1 and self.actions.dtype.kind in "iu"
            else np.asarray(act).reshape(-1).astype(np.float64).tolist()
        )
        return cel_activation(
            obs=np.asarray(self.observations[i]).reshape(-1).astype(np.float64).tolist(),
            action=action,
            labels=self.labels[i] if self.labels else {},
            step=int(self.steps[i]),
            agent_id=self.agent_id,
            episode_id=self.episode_ids[i] if self.episode_ids else "",
        )

    def take(self, rows: np.ndarray | Sequence[int]) -> Batch:
        """The sub-batch of the given row indices."""
        idx = np.asarray(rows, dtype=np.int64)
        return Batch(
            agent_id=self.agent_id,
            observations=self.observations[idx],
            actions=self.actions[idx],
            steps=self.steps[idx],
            episode_ids=[self.episode_ids[i] for i in idx] if self.episode_ids else [],
            labels=[self.labels[i] for i in idx] if self.labels else [],
        )


class SignalBatch(NamedTuple):
    """One signal over a batch. ``values`` and ``tripped`` have shape ``[batch]``."""

    values: np.ndarray
    threshold: float
    tripped: np.ndarray

    @classmethod
    def above(cls, values: np.ndarray, threshold: float) -> SignalBatch:
        """Tripped where ``values > threshold`` (NaN counts as tripped: fail closed)."""
        v = np.asarray(values, dtype=np.float64)
        t = float(threshold)
        if v.shape == (1,):  # one row: one Python comparison instead of two ufunc calls
            return cls(v, t, np.array([not v[0] <= t]))
        return cls(v, t, ~(v <= t))
