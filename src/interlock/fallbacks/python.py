"""The ``python`` fallback: an operator's controller as a Python callable (see :mod:`interlock.plugins`).

Interface, one call per batch of rows that need a substitute::

    controller(observations, actions, batch) -> substitute_actions

* ``observations``: ``[batch, *obs_shape]``; ``actions``: the proposed actions, ``[batch]`` int
  (discrete) or ``[batch, *action_shape]`` float (box); ``batch``: the
  :class:`~interlock.batch.Batch` (episode ids, steps, labels);
* returns ``[batch]`` (discrete) or ``[batch, *action_shape]`` (box) actions.

The engine checks every returned action against the action space: a wrong shape, an action
outside the space or an exception HALTs the row (never ALLOW). A probe call on two zero rows at
load checks the shape.

Example::

    fallbacks:
      lqr: {kind: python, callable: "my_controllers.cartpole:lqr", kwargs: {gain: [1.0, 1.6, 18.0, 3.0]}}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from interlock.errors import ConfigError
from interlock.fallbacks.base import Fallback
from interlock.monitors.python import probe_batch
from interlock.plugins import load_callable


class PythonFallback(Fallback):
    """Substitute actions from an operator's callable; see the module docstring for the interface."""

    kind = "python"

    def __init__(self, name, spaces, runtime, callable_spec: str, kwargs: dict[str, Any], where: str) -> None:
        super().__init__(name, spaces, runtime)
        self.spec = callable_spec
        self.kwargs = kwargs
        self.where = where
        self.fn: Any = None

    def load(self) -> None:
        self.fn = load_callable(self.spec, self.kwargs, self.where)
        probe = probe_batch(self.spaces)
        try:
            out = np.asarray(self.fn(probe.observations, probe.actions, probe))
        except Exception as e:
            raise ConfigError(
                f"{self.where}: the probe call of {self.spec} on 2 zero rows failed: {type(e).__name__}: {e}"
            ) from None
        want = (2, *self.spaces.action.shape)
        if out.shape != want:
            raise ConfigError(
                f"{self.where}: {self.spec} returned shape {list(out.shape)} for 2 rows; "
                f"expected {list(want)}"
            )
        self.ready = True

    def propose(self, batch, signals) -> np.ndarray:
        if self.fn is None:
            raise RuntimeError(f"{self.where}: the fallback is not loaded")
        out = np.asarray(self.fn(batch.observations, batch.actions, batch))
        return out.astype(self.spaces.action.dtype) if out.dtype.kind in "iufb" else out
