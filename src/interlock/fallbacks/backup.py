"""The ``backup`` fallback: the backup policy of a recoverability monitor (the Simplex switch)."""

from __future__ import annotations

import numpy as np

from interlock.fallbacks.binding import MonitorBoundFallback
from interlock.monitors.reachability import RecoverabilityMonitor


class BackupFallback(MonitorBoundFallback):
    """Returns the backup policy's action for each row's observation (one ONNX call per batch)."""

    kind = "backup"
    monitor_class = RecoverabilityMonitor
    monitor_what = "a reachability monitor with a dynamics_ensemble model"

    def propose(self, batch, signals) -> np.ndarray:
        engine = self.monitor.engine
        if engine is None:
            raise RuntimeError(f"{self.where}: monitor '{self.monitor_name}' is not loaded")
        obs = np.asarray(batch.observations).reshape(len(batch), -1)
        return engine.backup.act(obs)
