"""Fallbacks that work with a monitor's model find it by name here."""

from __future__ import annotations

from collections.abc import Mapping

from interlock.errors import ConfigError


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
