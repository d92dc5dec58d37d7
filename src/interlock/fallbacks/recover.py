"""The ``recover`` fallback: the candidate action with the best worst-case recoverability."""

from __future__ import annotations

import numpy as np

from interlock.errors import ConfigError
from interlock.fallbacks.binding import MonitorBoundFallback
from interlock.monitors.reachability import RecoverabilityMonitor


class RecoverFallback(MonitorBoundFallback):
    """Scores candidate actions with the monitor's rollout check, all rows and candidates in one batch.

    Candidates: every action (discrete); for box actions, ``candidates`` points drawn
    uniformly in the box once at load, plus per row the backup policy's action and the
    proposed action clipped to the box. Ranking, lexicographic: fewest failing members,
    then the largest worst-case margin, then the backup policy's action (the proposed
    one was flagged), then closeness to the proposed action.
    """

    kind = "recover"
    monitor_class = RecoverabilityMonitor
    monitor_what = "a reachability monitor with a dynamics_ensemble model"

    def __init__(
        self,
        name,
        spaces,
        runtime,
        monitor: str,
        candidates: int = 16,
        seed: int = 0,
        where: str = "fallback",
    ) -> None:
        super().__init__(name, spaces, runtime, monitor, where)
        space = spaces.action
        if space.discrete:
            self._fixed = np.arange(space.n, dtype=space.dtype)
        else:
            rng = np.random.default_rng(seed)
            lo, hi = space.low, space.high
            if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
                raise ConfigError(f"{where}: sampling candidates needs finite action bounds")
            self._fixed = (lo + (hi - lo) * rng.random((candidates, *space.shape))).astype(space.dtype)

    def propose(self, batch, signals) -> np.ndarray:
        mon = self.monitor
        if mon.engine is None:
            raise RuntimeError(f"{self.where}: monitor '{self.monitor_name}' is not loaded")
        space = self.spaces.action
        n = len(batch)
        obs = np.asarray(batch.observations).reshape(n, -1)
        backup = mon.engine.backup.act(obs)
        proposed = np.asarray(batch.actions)
        if space.discrete:
            cands = np.broadcast_to(self._fixed, (n, len(self._fixed)))
            closeness = (cands != proposed.reshape(n, 1)).astype(np.float64)
        else:
            clipped = np.clip(np.nan_to_num(proposed, nan=0.0), space.low, space.high)
            fixed = np.broadcast_to(self._fixed, (n, *self._fixed.shape))
            cands = np.concatenate([clipped[:, None], backup[:, None], fixed], axis=1)
            span = np.where(space.high > space.low, space.high - space.low, 1.0).reshape(-1)
            diff = (cands - np.nan_to_num(proposed, nan=0.0)[:, None]).reshape(n, cands.shape[1], -1) / span
            closeness = np.sqrt((diff**2).sum(axis=2))
        C = cands.shape[1]
        flat_obs = np.repeat(obs, C, axis=0)
        flat_act = cands.reshape(n * C, *space.shape)
        result = mon.evaluate(flat_obs, flat_act)
        share = result.failing_share.reshape(n, C)
        margin = result.worst_margin.reshape(n, C)
        is_backup = np.zeros(cands.shape[:2], dtype=bool)
        if space.discrete:
            is_backup = cands == backup.reshape(n, 1)
        else:
            is_backup[:, 1] = True
        # Lexicographic: fewest failing members, largest worst-case margin, the backup's own action
        # (the proposed one was flagged), then the candidate closest to the proposed action.
        best = np.array(
            [np.lexsort((closeness[i], ~is_backup[i], -margin[i], share[i]))[0] for i in range(n)],
            dtype=np.int64,
        )
        return cands[np.arange(n), best].astype(space.dtype)
