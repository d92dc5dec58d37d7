"""The ``robust`` fallback: the action whose Q is best in the worst case over ensemble members.

For each row it takes ``argmax_a LCB(s, a)`` where the lower confidence bound over
the K members is either the minimum (``bound: min``, the maximin rule for acting
under model uncertainty) or ``mean - k * std`` (``bound: mean_minus_std``). One
session run per batch.

Example config::

    fallbacks:
      cautious:
        kind: robust
        model: q_ensemble.onnx
        bound: mean_minus_std
        k: 2.0
"""

from __future__ import annotations

import numpy as np

from interlock.ensembles.model import EnsembleModel
from interlock.ensembles.scores import lower_bound
from interlock.errors import ConfigError
from interlock.fallbacks.base import Fallback


class RobustFallback(Fallback):
    """Maximin action of a Q-ensemble ``obs [batch, obs_dim] -> Q [K, batch, n_actions]``."""

    kind = "robust"

    def __init__(
        self,
        name,
        spaces,
        runtime,
        model: str,
        output_name: str | None = None,
        bound: str = "min",
        k: float = 1.0,
        where: str = "fallback",
    ) -> None:
        super().__init__(name, spaces, runtime)
        if not spaces.action.discrete:
            raise ConfigError(
                f"{where}: the robust fallback ranks discrete actions by a Q-ensemble; this agent's actions "
                "are a box"
            )
        if bound not in ("min", "mean_minus_std"):
            raise ConfigError(f"{where}.bound must be min or mean_minus_std, not '{bound}'")
        self.bound = bound
        self.k = float(k)
        self.where = where
        self.model = EnsembleModel(runtime, model, where, output_name)

    def load(self) -> None:
        self.model.load()
        self.model.require_q_values(self.spaces.action.n)
        self.ready = True

    def lower_bounds(self, observations: np.ndarray) -> np.ndarray:
        """``[batch, n_actions]`` lower confidence bound of Q."""
        return lower_bound(self.model.run(observations), self.bound, self.k)

    def propose(self, batch, signals) -> np.ndarray:
        lcb = self.lower_bounds(batch.observations)
        if not np.isfinite(lcb).all():
            raise ValueError("the Q-ensemble returned NaN or Inf")
        return lcb.argmax(axis=1).astype(self.spaces.action.dtype)
