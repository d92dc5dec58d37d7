"""The monitor interface: a batch of observations and actions in, named signals out.

Monitors see whole batches (``[batch, *obs_shape]`` observations and
``[batch, *action_shape]`` actions, ``[batch]`` for discrete) so that model-based
monitors run each ensemble once per batch. Each signal is a ``[batch]`` float64
array with one threshold; ``tripped`` says where the value crosses it.

Lifecycle (as MLServer's models): construct from config (cheap, no I/O),
``load()`` opens models and sets ``ready``, ``check(batch)`` runs on the request
path, ``unload()`` releases resources.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from interlock.runtime import ModelRuntime
    from interlock.spaces import AgentSpaces


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

    def rows(self) -> list[dict]:
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
                {
                    "obs": obs[i],
                    "action": actions[i],
                    "labels": self.labels[i] if self.labels else {},
                    "step": steps[i],
                    "agent_id": self.agent_id,
                    "episode_id": self.episode_ids[i] if self.episode_ids else "",
                }
                for i in range(n)
            ]
            self.__dict__["_rows"] = cached
        return cached

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
        return cls(v, float(threshold), ~(v <= threshold))


class Monitor(ABC):
    """Base class of all monitors.

    Args:
        name: Prefix of this monitor's signals ("<name>.<signal>").
        spaces: The agent's observation and action spaces.
        runtime: Shared ONNX sessions and path resolution.
    """

    #: The ``kind:`` this class implements in the config file.
    kind: str = ""
    #: Whether ``check`` is defined on actions outside the action space. Only such monitors
    #: (``action_space``) see those rows; for the others the engine leaves them out of the batch,
    #: their signals there are NaN (tripped) and the policy decides from the action_space signals.
    accepts_invalid_actions: bool = False

    def __init__(self, name: str, spaces: AgentSpaces, runtime: ModelRuntime) -> None:
        self.name = name
        self.spaces = spaces
        self.runtime = runtime
        self.ready = False

    @property
    @abstractmethod
    def signal_names(self) -> list[str]:
        """Names (without the monitor prefix) of every signal ``check`` returns; fixed at construction."""

    def load(self) -> None:
        """Open models and precompute tables; must leave the monitor ``ready`` or raise."""
        self.ready = True

    @abstractmethod
    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        """Signals for every row of ``batch``, keyed by the names in :attr:`signal_names`."""

    def unload(self) -> None:
        self.ready = False
