"""The ``action_space`` monitor: is the proposed action inside the declared space?"""

from __future__ import annotations

import numpy as np

from interlock.batch import Batch, SignalBatch
from interlock.monitors.base import Monitor


class ActionSpaceMonitor(Monitor):
    """Signals ``invalid`` (1.0 outside the space: bounds, index, NaN/Inf) and ``distance``.

    ``distance`` is the L-inf excess over the box bounds (inf for NaN/Inf or a bad
    discrete index, 0 inside).
    """

    kind = "action_space"
    accepts_invalid_actions = True

    @property
    def signal_names(self) -> list[str]:
        return ["invalid", "distance"]

    def check_row(self, batch: Batch) -> list[tuple[float, float, bool]] | None:
        """A discrete integer action in plain Python (None for other spaces: :meth:`check` does them)."""
        space = self.spaces.action
        acts = batch.actions
        if not (space.discrete and acts.size == 1 and acts.dtype.kind in "iu"):
            return None
        if 0 <= int(acts.reshape(-1)[0]) < space.n:
            return [(0.0, 0.5, False), (0.0, 0.0, False)]
        return [(1.0, 0.5, True), (np.inf, 0.0, True)]

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        space = self.spaces.action
        acts = batch.actions
        row = self.check_row(batch) if acts.size == 1 else None
        if row is not None:  # one row: in plain Python
            return {
                name: SignalBatch(np.array([value]), threshold, np.array([tripped]))
                for name, (value, threshold, tripped) in zip(self.signal_names, row, strict=True)
            }
        distance = space.distance(acts)
        invalid = (distance > 0).astype("float64")
        return {"invalid": SignalBatch.above(invalid, 0.5), "distance": SignalBatch.above(distance, 0.0)}
