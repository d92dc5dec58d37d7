"""The ``constant`` fallback: the same action every time (a no-op, brake, hold)."""

from __future__ import annotations

import numpy as np

from interlock.errors import ConfigError
from interlock.fallbacks.base import Fallback


class ConstantFallback(Fallback):
    """Returns a configured action, checked against the action space at load."""

    kind = "constant"

    def __init__(self, name, spaces, runtime, action, where: str = "fallback") -> None:
        super().__init__(name, spaces, runtime)
        space = spaces.action
        arr = np.asarray(action, dtype=space.dtype)
        if arr.shape != space.shape:
            if arr.size == int(np.prod(space.shape)):
                arr = arr.reshape(space.shape)
            else:
                raise ConfigError(
                    f"{where}.action has shape {list(arr.shape)}; the action space is {list(space.shape)}"
                )
        if space.invalid(arr[None])[0]:
            raise ConfigError(f"{where}.action {arr.tolist()} is outside the action space")
        self.action = arr

    def propose(self, batch, signals) -> np.ndarray:
        return np.broadcast_to(self.action, (len(batch), *self.action.shape)).copy()
