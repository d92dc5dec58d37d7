"""The agent side: clients of the Guard and Operator services, and Gymnasium wrappers.

Imports the wire types (``interlock.v1``), :mod:`interlock.tensors`, :mod:`interlock.types` and
numpy only, so an agent process never loads the server's engine, config, rules or models.
The Gymnasium wrappers (and gymnasium itself) load on first use.

Example:
    >>> from interlock.client import GuardClient
    >>> client = GuardClient("127.0.0.1:50051", agent_id="cartpole")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interlock.client.guard import AsyncGuardClient, CheckResult, GuardClient, make_request
from interlock.client.operator import OPERATOR_TOKEN_ENV, OperatorClient

__all__ = [
    "OPERATOR_TOKEN_ENV",
    "AsyncGuardClient",
    "CheckResult",
    "GuardClient",
    "InterlockHalted",
    "InterlockVectorWrapper",
    "InterlockWrapper",
    "OperatorClient",
    "make_request",
]

_GYM = ("InterlockHalted", "InterlockVectorWrapper", "InterlockWrapper")

if TYPE_CHECKING:
    from interlock.client.gym import InterlockHalted, InterlockVectorWrapper, InterlockWrapper


def __getattr__(name: str) -> Any:
    # Lazy: gymnasium is only imported by agents that use the wrappers.
    if name in _GYM:
        from interlock.client import gym

        return getattr(gym, name)
    raise AttributeError(f"module 'interlock.client' has no attribute {name!r}")
