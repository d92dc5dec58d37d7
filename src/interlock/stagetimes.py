"""Wall-clock times of the engine's stages for one decided batch, recorded only when tracing is on.

The engine fills a :class:`StageTimes` (validation, each monitor, the policy, each
fallback) when its caller passes one, and attaches it to the decisions it made;
``interlock.server.tracing`` turns it into spans after the answer is known. With
tracing off nobody passes one and the engine's only cost is an ``is not None`` test
per stage. Standard library only: the engine imports it, and so may the agent side.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import time_ns
from typing import Any

__all__ = ["StageTimes", "time_ns"]


class StageTimes:
    """The stages of one batch as ``(name, start_ns, end_ns, rows)``; ``rows`` None means every row.

    Names: ``validate``, ``monitor:<name>``, ``policy``, ``fallback:<name>``, ``after_decide``. Times are
    ``time.time_ns()`` (epoch nanoseconds, what OpenTelemetry spans take).
    """

    __slots__ = ("row_of", "stages")

    def __init__(self, stages: list[tuple[str, int, int, Sequence[int] | None]] | None = None) -> None:
        self.stages: list[tuple[str, int, int, Sequence[int] | None]] = [] if stages is None else stages
        #: decision id -> its row in the batch (set by :meth:`attach`).
        self.row_of: dict[str, int] = {}

    def add(self, name: str, start_ns: int, rows: Sequence[int] | None = None) -> None:
        """Record stage ``name`` from ``start_ns`` to now, over ``rows`` (indices into the batch) or all."""
        self.stages.append((name, start_ns, time_ns(), rows))

    def fork(self) -> StageTimes:
        """A copy holding the stages so far (validation), for one agent's group of a mixed batch."""
        return StageTimes(list(self.stages))

    def attach(self, decisions: Sequence[Any]) -> None:
        """Hand these times to ``decisions`` (row ``i`` is ``decisions[i]``)."""
        for i, d in enumerate(decisions):
            d.stage_times = self
            self.row_of[d.decision_id] = i

    def for_decision(self, decision_id: str) -> list[tuple[str, int, int]]:
        """The stages that decision ``decision_id`` went through, as ``(name, start_ns, end_ns)``."""
        row = self.row_of.get(decision_id)
        return [(name, s, e) for name, s, e, rows in self.stages if rows is None or row in rows]

    @property
    def batch_size(self) -> int:
        """Rows that shared these stages."""
        return len(self.row_of)
