"""Candidate actions for the model-predictive shield and the ``recover`` fallback.

Discrete spaces: every action. Box spaces: ``samples`` points drawn uniformly in the box once
(so the same candidates on every call), plus per row the proposed action clipped to the box
and the backup policy's action when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from interlock.errors import ConfigError
from interlock.spaces import ActionSpace


@dataclass(frozen=True)
class Candidates:
    """Per row, the candidate actions and which of them are special.

    Attributes:
        actions: ``[batch, C]`` (discrete) or ``[batch, C, *action_shape]``.
        proposed: ``[batch]`` int, the column of the proposed action.
        backup: ``[batch, C]`` bool, the backup policy's action (all False without one).
    """

    actions: np.ndarray
    proposed: np.ndarray
    backup: np.ndarray

    @property
    def count(self) -> int:
        return int(self.actions.shape[1])


class CandidateSet:
    """Builds :class:`Candidates` for batches of one action space.

    Args:
        space: The agent's action space.
        samples: Box spaces: how many uniform samples.
        seed: Seed of the sampler.
        where: Config location for messages.
    """

    def __init__(
        self, space: ActionSpace, samples: int = 16, seed: int = 0, where: str = "candidates"
    ) -> None:
        self.space = space
        if space.discrete:
            self.fixed = np.arange(space.n, dtype=space.dtype)
        else:
            lo, hi = space.bounds()
            if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
                raise ConfigError(f"{where}: sampling candidates needs finite action bounds")
            rng = np.random.default_rng(seed)
            self.fixed = (lo + (hi - lo) * rng.random((samples, *space.shape))).astype(space.dtype)

    def build(self, proposed: np.ndarray, backup: np.ndarray | None) -> Candidates:
        """Candidates for ``proposed`` ``[batch, ...]`` actions; ``backup`` ``[batch, ...]`` or None."""
        space = self.space
        n = len(proposed)
        if space.discrete:
            acts = np.broadcast_to(self.fixed, (n, len(self.fixed)))
            prop = np.asarray(proposed).reshape(n).astype(np.int64)
            is_backup = (
                acts == np.asarray(backup).reshape(n, 1) if backup is not None else np.zeros(acts.shape, bool)
            )
            return Candidates(acts, prop, is_backup)
        clipped = np.clip(np.nan_to_num(np.asarray(proposed), nan=0.0), space.low, space.high)
        parts = [clipped[:, None]]
        if backup is not None:
            parts.append(np.asarray(backup)[:, None])
        parts.append(np.broadcast_to(self.fixed, (n, *self.fixed.shape)))
        acts = np.concatenate(parts, axis=1).astype(space.dtype)
        is_backup = np.zeros(acts.shape[:2], bool)
        if backup is not None:
            is_backup[:, 1] = True
        return Candidates(acts, np.zeros(n, np.int64), is_backup)
