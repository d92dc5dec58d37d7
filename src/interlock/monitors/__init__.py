"""Monitors: signals from a batch of observations and actions.

To add a monitor kind: subclass :class:`Monitor`, add its config model to
``interlock.config.MonitorConfig``, and a builder to :data:`BUILDERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from interlock.batch import Batch, SignalBatch
from interlock.monitors.action_space import ActionSpaceMonitor
from interlock.monitors.base import Monitor
from interlock.monitors.rules import RulesMonitor

if TYPE_CHECKING:
    from interlock.monitors.uncertainty import UncertaintyMonitor

__all__ = [
    "BUILDERS",
    "ActionSpaceMonitor",
    "Batch",
    "Monitor",
    "RulesMonitor",
    "SignalBatch",
    "build_monitor",
    "uncertainty_monitor",
]


def _action_space(cfg: Any, spaces: Any, runtime: Any, where: str) -> Monitor:
    return ActionSpaceMonitor(cfg.name, spaces, runtime)


def _rules(cfg: Any, spaces: Any, runtime: Any, where: str) -> Monitor:
    return RulesMonitor(cfg.name, spaces, runtime, cfg.constraints, where=where)


def _reachability(cfg: Any, spaces: Any, runtime: Any, where: str) -> Monitor:
    from interlock.monitors.reachability import build_reachability

    return build_reachability(cfg, spaces, runtime, where)


def uncertainty_monitor(
    cfg: Any, spaces: Any, runtime: Any, where: str, calibrating: bool = False
) -> UncertaintyMonitor:
    """The ``uncertainty`` monitor ``cfg`` describes; ``calibrating``: without thresholds (it is
    being calibrated), so none are read or required."""
    from interlock.monitors.uncertainty import UncertaintyMonitor

    return UncertaintyMonitor(
        cfg.name,
        spaces,
        runtime,
        cfg.model,
        cfg.ensemble,
        output_name=cfg.output_name,
        policy_output=cfg.policy_output,
        state_scale=cfg.state_scale,
        thresholds=None if calibrating else cfg.thresholds,
        thresholds_file=None if calibrating else cfg.thresholds_file,
        require_thresholds=not calibrating,
        where=where,
    )


def _uncertainty(cfg: Any, spaces: Any, runtime: Any, where: str) -> Monitor:
    return uncertainty_monitor(cfg, spaces, runtime, where)


def _transition(cfg: Any, spaces: Any, runtime: Any, where: str) -> Monitor:
    from interlock.monitors.transition import TransitionMonitor

    return TransitionMonitor(cfg, spaces, runtime, where)


def _python(cfg: Any, spaces: Any, runtime: Any, where: str) -> Monitor:
    from interlock.monitors.python import PythonMonitor

    return PythonMonitor(cfg, spaces, runtime, where)


#: config ``kind`` -> builder(config, spaces, runtime, where) -> Monitor
BUILDERS: dict[str, Callable[..., Monitor]] = {
    "action_space": _action_space,
    "rules": _rules,
    "reachability": _reachability,
    "uncertainty": _uncertainty,
    "transition": _transition,
    "python": _python,
}


def build_monitor(cfg: Any, spaces: Any, runtime: Any, where: str) -> Monitor:
    """Construct (not load) the monitor that ``cfg.kind`` names."""
    return BUILDERS[cfg.kind](cfg, spaces, runtime, where)
