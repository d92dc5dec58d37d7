"""The ``backup`` fallback: the backup policy of a recoverability monitor (the Simplex switch)."""

from __future__ import annotations

import numpy as np

from interlock.errors import ConfigError
from interlock.fallbacks.binding import MonitorBoundFallback
from interlock.monitors.reachability import RecoverabilityMonitor


class BackupFallback(MonitorBoundFallback):
    """Returns the backup policy's action for each row's observation (one ONNX call per batch)."""

    kind = "backup"
    monitor_class = RecoverabilityMonitor
    monitor_what = "a reachability monitor with a dynamics_ensemble model"

    def bind(self, monitors) -> None:
        super().bind(monitors)
        if self.monitor.cfg.backup_policy is None:
            raise ConfigError(
                f"{self.where}: monitor '{self.monitor_name}' has no backup_policy for this fallback to "
                "follow; give it one, or use a shield_choice fallback"
            )

    def propose(self, batch, signals) -> np.ndarray:
        engine = self.monitor.engine
        if engine is None:
            raise RuntimeError(f"{self.where}: monitor '{self.monitor_name}' is not loaded")
        obs = np.asarray(batch.observations).reshape(len(batch), -1)
        assert engine.backup is not None  # bind checked it
        return engine.backup.act(obs)
