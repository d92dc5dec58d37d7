"""The ``backup`` fallback: the backup policy of a recoverability monitor (the Simplex switch)."""

from __future__ import annotations

import numpy as np

from interlock.errors import ConfigError
from interlock.fallbacks.base import Fallback
from interlock.fallbacks.binding import find_monitor
from interlock.monitors.reachability import RecoverabilityMonitor


class BackupFallback(Fallback):
    """Returns the backup policy's action for each row's observation (one ONNX call per batch)."""

    kind = "backup"

    def __init__(self, name, spaces, runtime, monitor: str, where: str = "fallback") -> None:
        super().__init__(name, spaces, runtime)
        self.monitor_name = monitor
        self.where = where
        self.monitor: RecoverabilityMonitor | None = None

    def bind(self, monitors) -> None:
        self.monitor = find_monitor(
            monitors,
            self.monitor_name,
            RecoverabilityMonitor,
            "a reachability monitor with a dynamics_ensemble model",
            self.where,
        )

    def load(self) -> None:
        if self.monitor is None:
            raise ConfigError(f"{self.where}: not bound to a monitor")
        self.ready = True

    def propose(self, batch, signals) -> np.ndarray:
        engine = self.monitor.engine
        if engine is None:
            raise RuntimeError(f"{self.where}: monitor '{self.monitor_name}' is not loaded")
        obs = np.asarray(batch.observations).reshape(len(batch), -1)
        return engine.backup.act(obs)
