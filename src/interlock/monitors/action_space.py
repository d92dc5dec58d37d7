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

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        space = self.spaces.action
        acts = batch.actions
        if space.discrete and acts.size == 1 and acts.dtype.kind in "iu":  # one row: in plain Python
            inside = 0 <= int(acts.reshape(-1)[0]) < space.n
            return {
                "invalid": SignalBatch(np.array([0.0 if inside else 1.0]), 0.5, np.array([not inside])),
                "distance": SignalBatch(np.array([0.0 if inside else np.inf]), 0.0, np.array([not inside])),
            }
        distance = space.distance(acts)
        invalid = (distance > 0).astype("float64")
        return {"invalid": SignalBatch.above(invalid, 0.5), "distance": SignalBatch.above(distance, 0.0)}
