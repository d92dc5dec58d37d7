"""The ``python`` monitor: an operator's detector as a Python callable (see :mod:`interlock.plugins`).

Interface, one call per batch::

    detector(observations, actions, batch) -> {signal_name: values}

* ``observations``: ``[batch, *obs_shape]`` in the observation space's dtype;
* ``actions``: ``[batch]`` int (discrete) or ``[batch, *action_shape]`` float (box);
* ``batch``: the :class:`~interlock.batch.Batch` itself (``agent_id``, ``episode_ids``
  ``[batch]`` str, ``steps`` ``[batch]`` int64, ``labels``) for detectors that keep
  per-episode state;
* returns a mapping with every signal named under ``signals:`` in the config, each a
  ``[batch]`` array of floats (extra keys are an error: a typo would hide a signal).

Each signal trips beyond its configured ``threshold`` (``direction: above`` or ``below``);
NaN trips (fail closed). An exception fails the rows closed, like any monitor failure.
A probe call on two zero rows at load checks the returned keys and shapes.

If the loaded object also defines ``residual_bias(batch) -> [batch, obs_dim]``, the monitor
is a residual source for a reachability monitor's ``correction:``
(:mod:`interlock.reachability.correction`).

Example::

    monitors:
      - kind: python
        name: wind
        callable: "my_detectors.wind:WindDetector"     # a class: built once with kwargs
        kwargs: {window: 20}
        signals:
          gust: {threshold: 0.8}
          calm: {threshold: 0.1, direction: below}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from interlock.batch import Batch, SignalBatch
from interlock.config import PythonMonitorConfig
from interlock.errors import ConfigError
from interlock.monitors.base import Monitor
from interlock.plugins import load_callable


def probe_batch(spaces, agent_id: str = "probe", n: int = 2) -> Batch:
    """``n`` zero rows of the agent's spaces (the lowest valid action), for probe calls at load."""
    obs = np.zeros((n, *spaces.observation.shape), dtype=spaces.observation.dtype)
    a = spaces.action
    if a.discrete:
        act = np.zeros(n, dtype=a.dtype)
    else:
        lo = np.nan_to_num(np.asarray(a.low, np.float64), neginf=0.0, posinf=0.0)
        act = np.broadcast_to(np.clip(0.0, lo, np.nan_to_num(a.high, posinf=0.0)), (n, *a.shape))
        act = np.ascontiguousarray(act, dtype=a.dtype)
    return Batch(agent_id, obs, act, np.zeros(n, np.int64), [f"probe-{i}" for i in range(n)], [{}] * n)


class PythonMonitor(Monitor):
    """Signals from an operator's callable; see the module docstring for the interface."""

    kind = "python"

    def __init__(self, cfg: PythonMonitorConfig, spaces, runtime, where: str) -> None:
        super().__init__(cfg.name, spaces, runtime)
        self.cfg = cfg
        self.where = where
        self.fn: Any = None

    @property
    def signal_names(self) -> list[str]:
        return list(self.cfg.signals)

    def load(self) -> None:
        self.fn = load_callable(self.cfg.callable, self.cfg.kwargs, self.where)
        try:
            self._call(probe_batch(self.spaces))
        except Exception as e:
            raise ConfigError(
                f"{self.where}: the probe call of {self.cfg.callable} on 2 zero rows failed: "
                f"{type(e).__name__}: {e}"
            ) from None
        self.ready = True

    def _call(self, batch: Batch) -> dict[str, np.ndarray]:
        out = self.fn(batch.observations, batch.actions, batch)
        if not isinstance(out, dict):
            raise TypeError(f"it returned a {type(out).__name__}; expected a dict of signal -> [batch] array")
        want = set(self.cfg.signals)
        if set(out) != want:
            missing, extra = sorted(want - set(out)), sorted(set(out) - want)
            raise ValueError(
                f"it returned signals {sorted(out)}; config declares {sorted(want)}"
                + (f" (missing {missing})" if missing else "")
                + (f" (undeclared {extra})" if extra else "")
            )
        n = len(batch)
        values = {}
        for k, v in out.items():
            arr = np.asarray(v, dtype=np.float64)
            if arr.shape != (n,):
                raise ValueError(f"signal '{k}' has shape {list(arr.shape)}; expected [{n}]")
            values[k] = arr
        return values

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        if self.fn is None:
            raise RuntimeError(f"{self.where}: the monitor is not loaded")
        values = self._call(batch)
        out = {}
        for k, spec in self.cfg.signals.items():
            v = values[k]
            if spec.direction == "above":
                out[k] = SignalBatch.above(v, spec.threshold)
            else:
                out[k] = SignalBatch(v, spec.threshold, ~(v >= spec.threshold))
        return out

    @property
    def provides_residual_bias(self) -> bool:
        """Whether the loaded object defines ``residual_bias`` (False before load)."""
        return callable(getattr(self.fn, "residual_bias", None))

    def residual_bias(self, batch: Batch) -> np.ndarray:
        """The loaded object's ``residual_bias(batch)``; AttributeError when it has none."""
        fn = getattr(self.fn, "residual_bias", None)
        if fn is None:
            raise AttributeError(f"{self.cfg.callable} defines no residual_bias")
        return np.asarray(fn(batch))
