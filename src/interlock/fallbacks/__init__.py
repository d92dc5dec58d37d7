"""Fallbacks: conservative substitute actions.

To add a kind: subclass :class:`Fallback`, add its config model to
``interlock.config.FallbackConfig`` and a builder to :data:`BUILDERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from interlock.fallbacks.base import Fallback
from interlock.fallbacks.clip import ClipFallback
from interlock.fallbacks.constant import ConstantFallback
from interlock.fallbacks.onnx_policy import OnnxPolicyFallback

__all__ = ["BUILDERS", "ClipFallback", "ConstantFallback", "Fallback", "OnnxPolicyFallback", "build_fallback"]


def _constant(name: str, cfg: Any, spaces: Any, runtime: Any, where: str) -> Fallback:
    return ConstantFallback(name, spaces, runtime, cfg.action, where=where)


def _onnx_policy(name: str, cfg: Any, spaces: Any, runtime: Any, where: str) -> Fallback:
    return OnnxPolicyFallback(
        name, spaces, runtime, cfg.model, cfg.output, cfg.input_name, cfg.output_name, where=where
    )


def _clip(name: str, cfg: Any, spaces: Any, runtime: Any, where: str) -> Fallback:
    return ClipFallback(name, spaces, runtime)


def _shield(name: str, cfg: Any, spaces: Any, runtime: Any, where: str) -> Fallback:
    from interlock.fallbacks.shield import ShieldFallback

    return ShieldFallback(name, spaces, runtime, cfg.monitor, cfg.scores, cfg.order, where=where)


def _backup(name: str, cfg: Any, spaces: Any, runtime: Any, where: str) -> Fallback:
    from interlock.fallbacks.backup import BackupFallback

    return BackupFallback(name, spaces, runtime, cfg.monitor, where=where)


def _recover(name: str, cfg: Any, spaces: Any, runtime: Any, where: str) -> Fallback:
    from interlock.fallbacks.recover import RecoverFallback

    return RecoverFallback(name, spaces, runtime, cfg.monitor, cfg.candidates, cfg.seed, where=where)


def _shield_choice(name: str, cfg: Any, spaces: Any, runtime: Any, where: str) -> Fallback:
    from interlock.fallbacks.recover import ShieldChoiceFallback

    return ShieldChoiceFallback(
        name, spaces, runtime, cfg.monitor, cfg.scores, cfg.candidates, cfg.seed, where=where
    )


def _python(name: str, cfg: Any, spaces: Any, runtime: Any, where: str) -> Fallback:
    from interlock.fallbacks.python import PythonFallback

    return PythonFallback(name, spaces, runtime, cfg.callable, cfg.kwargs, where=where)


def _robust(name: str, cfg: Any, spaces: Any, runtime: Any, where: str) -> Fallback:
    from interlock.fallbacks.robust import RobustFallback

    return RobustFallback(name, spaces, runtime, cfg.model, cfg.output_name, cfg.bound, cfg.k, where=where)


def _quantilizer(name: str, cfg: Any, spaces: Any, runtime: Any, where: str) -> Fallback:
    from interlock.fallbacks.quantilizer import QuantilizerFallback

    return QuantilizerFallback(
        name,
        spaces,
        runtime,
        cfg.model,
        cfg.q,
        cfg.reference,
        cfg.reference_output,
        cfg.seed,
        output_name=cfg.output_name,
        where=where,
    )


#: config ``kind`` -> builder(name, config, spaces, runtime, where) -> Fallback
BUILDERS: dict[str, Callable[..., Fallback]] = {
    "constant": _constant,
    "onnx_policy": _onnx_policy,
    "clip": _clip,
    "shield": _shield,
    "backup": _backup,
    "recover": _recover,
    "shield_choice": _shield_choice,
    "python": _python,
    "robust": _robust,
    "quantilizer": _quantilizer,
}


def build_fallback(name: str, cfg: Any, spaces: Any, runtime: Any, where: str) -> Fallback:
    """Construct (not load) the fallback that ``cfg.kind`` names."""
    return BUILDERS[cfg.kind](name, cfg, spaces, runtime, where)
