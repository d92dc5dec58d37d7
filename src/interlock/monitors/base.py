"""The monitor interface: a batch of observations and actions in, named signals out.

:class:`~interlock.batch.Batch` and :class:`~interlock.batch.SignalBatch` live in
:mod:`interlock.batch` (fallbacks, policies and calibration use them too).

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
from typing import TYPE_CHECKING

import numpy as np

from interlock.batch import Batch, SignalBatch

__all__ = ["Batch", "Monitor", "SignalBatch"]

if TYPE_CHECKING:
    from collections.abc import Mapping

    from interlock.runtime import ModelRuntime
    from interlock.spaces import AgentSpaces


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

    def bind(self, monitors: Mapping[str, Monitor]) -> None:  # noqa: B027 - optional hook
        """Called once after construction with the agent's monitors by name, for monitors that read another
        (a reachability monitor's ``correction:`` source)."""

    def load(self) -> None:
        """Open models and precompute tables; must leave the monitor ``ready`` or raise."""
        self.ready = True

    @abstractmethod
    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        """Signals for every row of ``batch``, keyed by the names in :attr:`signal_names`."""

    def check_row(self, batch: Batch) -> list[tuple[float, float, bool]] | None:
        """:meth:`check` of a one-row ``batch`` as plain Python values, or None: the engine then calls
        :meth:`check`.

        Returns one ``(value, threshold, tripped)`` per name in :attr:`signal_names`, in that
        order, equal to what :meth:`check` gives for the row (the engine's one-row path calls it,
        where building and reading ``[1]`` arrays would cost more than the arithmetic). Raises as
        :meth:`check` would. The default is None: a monitor overrides it only where it is cheaper.
        """
        return None

    def after_decide(  # noqa: B027 (a hook: optional, no-op by default)
        self, batch: Batch, executed_actions: np.ndarray, valid: np.ndarray
    ) -> None:
        """Told once per decided batch what each row executes; default: nothing.

        Called by the engine after the policy, fallbacks and shadow mode, with the same ``batch``
        ``check`` saw (every row, also rows this monitor did not run on). Monitors that keep
        per-episode state (``transition``) record the executed action here. An exception is
        logged and does not change the decisions.

        Args:
            batch: The decided batch.
            executed_actions: ``[batch, *action_shape]``: each decision's action, or the proposed
                action where the decision has none (HALT without a fail-safe action).
            valid: ``[batch]`` bool, False where that action is outside the action space.
        """

    def unload(self) -> None:
        self.ready = False
