"""The fallback interface: a batch in, one substitute action per row out.

The engine checks every fallback action against the action space; an action
outside it (or an exception) turns the decision into HALT, never ALLOW.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping

    from interlock.batch import Batch, SignalBatch
    from interlock.monitors.base import Monitor
    from interlock.runtime import ModelRuntime
    from interlock.spaces import AgentSpaces


class Fallback(ABC):
    """Base class of substitute-action providers.

    Args:
        name: The key under ``fallbacks:`` in the config.
        spaces: The agent's spaces (fallback actions must lie in ``spaces.action``).
        runtime: Shared ONNX sessions.
    """

    kind: str = ""

    def __init__(self, name: str, spaces: AgentSpaces, runtime: ModelRuntime) -> None:
        self.name = name
        self.spaces = spaces
        self.runtime = runtime
        self.ready = False

    def bind(self, monitors: Mapping[str, Monitor]) -> None:  # noqa: B027 - optional hook
        """Called once after construction with the agent's monitors by name, for fallbacks that use one."""

    def load(self) -> None:
        self.ready = True

    @abstractmethod
    def propose(self, batch: Batch, signals: dict[str, SignalBatch]) -> np.ndarray:
        """Actions for every row: ``[batch, *action_shape]`` (``[batch]`` for discrete).

        ``signals`` maps "<monitor>.<signal>" to the batch's signals, for fallbacks
        that weigh them.
        """

    def unload(self) -> None:
        self.ready = False
