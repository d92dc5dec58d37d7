"""The ``rules`` monitor: operator-written constraints in CEL, one signal each."""

from __future__ import annotations

import numpy as np

from interlock.batch import Batch, SignalBatch
from interlock.monitors.base import Monitor
from interlock.policies.cel import CelEvalError, CelPredicate, make_env
from interlock.policies.vectorized import batch_columns, compile_vectorized


class RulesMonitor(Monitor):
    """Each constraint is a CEL expression that must hold; its signal is 1.0 (tripped) when it does not.

    A constraint that cannot be evaluated for a row (an index out of range, say)
    counts as violated for that row: fail closed.

    Example config::

        - kind: rules
          constraints:
            cart_in_track: "math.abs(obs[0]) < 2.0"
    """

    kind = "rules"

    def __init__(self, name, spaces, runtime, constraints: dict[str, str], where: str = "rules") -> None:
        super().__init__(name, spaces, runtime)
        env = make_env(spaces.action.discrete, with_signals=False)
        self._constraints = {
            key: CelPredicate(env, expr, f"{where}.constraints.{key}") for key, expr in constraints.items()
        }
        obs_size = int(np.prod(spaces.observation.shape))
        self._vectorized = {
            key: compile_vectorized(p.source, p, obs_size, spaces.action.discrete, None)
            for key, p in self._constraints.items()
        }

    @property
    def signal_names(self) -> list[str]:
        return list(self._constraints)

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        out: dict[str, SignalBatch] = {}
        cols = batch_columns(batch)
        with np.errstate(all="ignore"):  # entered once for every vectorized constraint
            for key, predicate in self._constraints.items():
                fast = self._vectorized[key]
                if fast is not None:  # the whole batch at once (same results as CEL row by row)
                    holds = fast.unguarded(cols)
                    # SignalBatch.above(values, 0.5) of 0.0 / 1.0 values: tripped exactly where it fails
                    out[key] = SignalBatch(np.where(holds, 0.0, 1.0), 0.5, ~holds)
                    continue
                rows = batch.rows()
                violated = np.empty(len(rows), dtype=np.float64)
                for i, row in enumerate(rows):
                    try:
                        violated[i] = 0.0 if predicate(row) else 1.0
                    except CelEvalError:
                        violated[i] = 1.0
                out[key] = SignalBatch.above(violated, 0.5)
        return out
