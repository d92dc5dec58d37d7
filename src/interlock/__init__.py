"""Interlock: the runtime safety layer that deployed reinforcement-learning agents run behind.

Public API::

    from interlock import GuardClient, AsyncGuardClient, InterlockWrapper, Verdict, load_config
    from interlock import InterlockVectorWrapper, OperatorClient
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
    "InterlockVectorWrapper",
    "InterlockWrapper",
    "OperatorClient",
    "Verdict",
    "__version__",
    "load_config",
]

_LAZY = {
    "GuardClient": "interlock.client.guard",
    "AsyncGuardClient": "interlock.client.guard",
    "OperatorClient": "interlock.client.operator",
    "InterlockWrapper": "interlock.client.gym",
    "InterlockVectorWrapper": "interlock.client.gym",
    "Guard": "interlock.engine",
    "CheckInput": "interlock.types",
    "Decision": "interlock.types",
    "Verdict": "interlock.types",
    "load_config": "interlock.config",
}

if TYPE_CHECKING:
    from interlock.client.guard import AsyncGuardClient, GuardClient
    from interlock.client.gym import InterlockVectorWrapper, InterlockWrapper
    from interlock.client.operator import OperatorClient
    from interlock.config import load_config
    from interlock.engine import Guard
    from interlock.types import CheckInput, Decision, Verdict


def __getattr__(name: str) -> Any:
    # Lazy so that `import interlock` stays cheap and gymnasium is optional at import time.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'interlock' has no attribute {name!r}")
