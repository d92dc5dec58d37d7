"""Interlock: the runtime safety layer that deployed reinforcement-learning agents run behind.

Public API::

    from interlock import GuardClient, AsyncGuardClient, InterlockWrapper, Verdict, load_config
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "AsyncGuardClient",
    "CheckInput",
    "Decision",
    "Guard",
    "GuardClient",
    "InterlockWrapper",
    "Verdict",
    "__version__",
    "load_config",
]

_LAZY = {
    "GuardClient": "interlock.client",
    "AsyncGuardClient": "interlock.client",
    "InterlockWrapper": "interlock.gym",
    "Guard": "interlock.engine",
    "CheckInput": "interlock.types",
    "Decision": "interlock.types",
    "Verdict": "interlock.types",
    "load_config": "interlock.config",
}

if TYPE_CHECKING:
    from interlock.client import AsyncGuardClient, GuardClient
    from interlock.config import load_config
    from interlock.engine import Guard
    from interlock.gym import InterlockWrapper
    from interlock.types import CheckInput, Decision, Verdict


def __getattr__(name: str) -> Any:
    # Lazy so that `import interlock` stays cheap and gymnasium is optional at import time.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'interlock' has no attribute {name!r}")
