"""Fallbacks that work with a monitor's model find it by name here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from interlock.errors import ConfigError
from interlock.fallbacks.base import Fallback


def find_monitor(monitors: Mapping[str, object], name: str, cls: type, what: str, where: str):
    """The monitor called ``name``, checked to be a ``cls``; ConfigError naming the choices otherwise."""
    monitor = monitors.get(name)
    if monitor is None:
        have = ", ".join(sorted(monitors)) or "none"
        raise ConfigError(
            f"{where}.monitor names '{name}', which is not one of the agent's monitors ({have})"
        )
    if not isinstance(monitor, cls):
        raise ConfigError(f"{where}.monitor '{name}' must be {what}; it is a {type(monitor).__name__}")
    return monitor


class MonitorBoundFallback(Fallback):
    """A fallback that uses the model or tables of one of the agent's monitors (``monitor:`` in config).

    Subclasses set :attr:`monitor_class` and :attr:`monitor_what`; the engine calls
    :meth:`bind` with the agent's monitors before :meth:`load`.
    """

    monitor_class: ClassVar[type] = object
    monitor_what: ClassVar[str] = "a monitor"

    def __init__(self, name, spaces, runtime, monitor: str, where: str = "fallback") -> None:
        super().__init__(name, spaces, runtime)
        self.monitor_name = monitor
        self.where = where
        self.monitor: Any = None

    def bind(self, monitors) -> None:
        self.monitor = find_monitor(
            monitors, self.monitor_name, self.monitor_class, self.monitor_what, self.where
        )

    def require_bound(self) -> None:
        """Raise ConfigError unless :meth:`bind` found the monitor."""
        if self.monitor is None:
            raise ConfigError(f"{self.where}: not bound to a monitor")

    def load(self) -> None:
        self.require_bound()
        self.ready = True
