"""The in-memory index of live escalations: pending ones by id, agent and rule; remembered answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

from interlock.escalation.model import Escalation


@dataclass
class PendingEntry:
    """Index entry of one pending escalation; ``waiter`` resolves with the final record (blocking mode)."""

    escalation_id: str
    agent_id: str
    rule: str
    deadline: float
    mode: str
    waiter: asyncio.Future[Escalation] | None = None


@dataclass
class Remembered:
    escalation: Escalation
    until: float


class EscalationIndex:
    """What the request path consults without touching the store. Runs on the event loop only."""

    def __init__(self) -> None:
        self._pending: dict[str, PendingEntry] = {}
        self._by_agent: dict[str, set[str]] = {}
        self._open_by_key: dict[tuple[str, str], str] = {}
        self._remembered: dict[tuple[str, str], Remembered] = {}

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def empty(self) -> bool:
        """Nothing pending and nothing remembered: the request path has nothing to look up."""
        return not self._pending and not self._remembered

    def get(self, escalation_id: str) -> PendingEntry | None:
        return self._pending.get(escalation_id)

    def entries(self) -> Iterator[PendingEntry]:
        return iter(list(self._pending.values()))

    def count_for(self, agent_id: str) -> int:
        return len(self._by_agent.get(agent_id, ()))

    def held_by(self, agent_id: str) -> str | None:
        """The (first by id) pending escalation of ``agent_id``, or None."""
        return next(iter(sorted(self._by_agent.get(agent_id, ()))), None)

    def open_for(self, agent_id: str, rule: str) -> str | None:
        """The pending deferred escalation of this agent and rule, or None."""
        return self._open_by_key.get((agent_id, rule))

    def add(self, rec: Escalation) -> None:
        waiter = asyncio.get_running_loop().create_future() if rec.mode == "blocking" else None
        self._pending[rec.escalation_id] = PendingEntry(
            rec.escalation_id, rec.agent_id, rec.rule, rec.deadline_time, rec.mode, waiter
        )
        self._by_agent.setdefault(rec.agent_id, set()).add(rec.escalation_id)
        if rec.mode == "deferred":
            self._open_by_key.setdefault((rec.agent_id, rec.rule), rec.escalation_id)

    def remove(self, escalation_id: str) -> PendingEntry | None:
        entry = self._pending.pop(escalation_id, None)
        if entry is None:
            return None
        ids = self._by_agent.get(entry.agent_id)
        if ids is not None:
            ids.discard(escalation_id)
            if not ids:
                del self._by_agent[entry.agent_id]
        key = (entry.agent_id, entry.rule)
        if self._open_by_key.get(key) == escalation_id:
            del self._open_by_key[key]
        return entry

    def remember(self, rec: Escalation, until: float) -> None:
        """Apply ``rec``'s answer to its agent and rule until ``until`` (Unix seconds)."""
        self._remembered[(rec.agent_id, rec.rule)] = Remembered(rec, until)

    def remembered(self, agent_id: str, rule: str, now: float) -> Escalation | None:
        """The standing answer for this agent and rule, forgetting it once it has run out."""
        key = (agent_id, rule)
        known = self._remembered.get(key)
        if known is None:
            return None
        if known.until > now:
            return known.escalation
        del self._remembered[key]
        return None
