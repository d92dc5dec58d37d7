"""The ``clip`` fallback: the nearest action inside the space (projection onto box bounds)."""

from __future__ import annotations

import numpy as np

from interlock.fallbacks.base import Fallback


class ClipFallback(Fallback):
    """Clips box actions to ``[low, high]`` (NaN to the midpoint); clamps discrete indices."""

    kind = "clip"

    def propose(self, batch, signals) -> np.ndarray:
        return self.spaces.action.project(batch.actions)
