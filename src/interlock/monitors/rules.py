"""The ``rules`` monitor: operator-written constraints in CEL, one signal each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from interlock.batch import Batch, SignalBatch
from interlock.monitors.base import Monitor
from interlock.policies.cel import CelEvalError, CelPredicate, make_env
from interlock.policies.vectorized import Row, batch_columns, batch_row, compile_vectorized


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
        #: Every constraint's scalar form, for one-row batches (None: some constraint has none).
        scalar = [(key, v.scalar if v is not None else None) for key, v in self._vectorized.items()]
        self._scalar: list[tuple[str, Callable[[Row], Any]]] | None = (
            [(key, f) for key, f in scalar if f is not None] if all(f for _, f in scalar) else None
        )

    def check_row(self, batch: Batch) -> list[tuple[float, float, bool]] | None:
        """A one-row batch through the constraints' scalar forms (same answers as :meth:`check`);
        None when some constraint has none."""
        if self._scalar is None or len(batch) != 1:
            return None
        row = batch_row(batch)
        out = []
        for _, holds in self._scalar:
            if holds(row):
                out.append((0.0, 0.5, False))
            else:
                out.append((1.0, 0.5, True))
        return out

    @property
    def signal_names(self) -> list[str]:
        return list(self._constraints)

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        if len(batch) == 1 and self._scalar is not None:
            return {
                key: SignalBatch(np.array([value]), threshold, np.array([tripped]))
                for (key, _), (value, threshold, tripped) in zip(
                    self._scalar, self.check_row(batch) or (), strict=True
                )
            }
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
