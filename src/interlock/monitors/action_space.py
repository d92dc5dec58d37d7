"""The ``action_space`` monitor: is the proposed action inside the declared space?"""

from __future__ import annotations

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

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        distance = self.spaces.action.distance(batch.actions)
        invalid = (distance > 0).astype("float64")
        return {"invalid": SignalBatch.above(invalid, 0.5), "distance": SignalBatch.above(distance, 0.0)}
