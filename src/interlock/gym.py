"""Gymnasium wrappers (kept importable here; they live in :mod:`interlock.client.gym`)."""

from interlock.client.gym import InterlockHalted, InterlockVectorWrapper, InterlockWrapper

__all__ = ["InterlockHalted", "InterlockVectorWrapper", "InterlockWrapper"]
