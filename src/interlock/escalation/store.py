"""Durable storage of escalations: the interface and the SQL helpers its implementations share.

The manager (:mod:`interlock.escalation.manager`) keeps the live state in memory and
writes every change here *before* it is acknowledged: an escalation id is only
returned to an agent, and a resolution only confirmed to an operator, once the
store has committed it. Stores take and return :class:`~interlock.escalation.model.Escalation`
records; on disk the body column is the serialized ``interlock.v1.Escalation`` (the wire
schema is versioned and stable, so it doubles as the storage schema, see
:mod:`interlock.escalation.convert`), with the columns needed for queries beside it.

Implementations: :mod:`interlock.escalation.sqlite`, :mod:`interlock.escalation.postgres`;
:func:`interlock.escalation.factory.open_store` picks one from the config. This module
imports neither.

Replicas (and ``--workers`` processes) share one store, so a store also carries a
*change feed*: every committed create and finish is announced as a :class:`Change`
to the other processes on the same store (PostgreSQL ``LISTEN/NOTIFY``; SQLite a
change table polled through ``PRAGMA data_version``), so the replica holding a
blocked Check wakes as soon as another one answers, and every replica's watchers
see every change.
"""

from __future__ import annotations

import builtins
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from interlock.errors import InterlockError
from interlock.escalation.convert import to_bytes
from interlock.escalation.model import Escalation, EscalationState

PENDING = int(EscalationState.PENDING)
EXPIRED = int(EscalationState.EXPIRED)


def insert_row(e: Escalation) -> tuple[object, ...]:
    """The escalations table row of a new escalation (resolved_time NULL, the message as the body)."""
    return (e.escalation_id, e.agent_id, int(e.state), e.created_time, e.deadline_time, None, to_bytes(e))


def finish_args(e: Escalation) -> tuple[object, ...]:
    """``(state, resolved_time, body, escalation_id, PENDING)`` for ``finish()``'s compare-and-set UPDATE."""
    return (int(e.state), e.resolved_time, to_bytes(e), e.escalation_id, PENDING)


def list_filter(
    placeholder: str, state: int, agent_id: str, resolved: bool
) -> tuple[str, tuple[object, ...]]:
    """The WHERE clause and parameters of ``list()``, for a driver's placeholder (``?`` or ``%s``)."""
    clauses: list[str] = []
    params: list[object] = []
    if resolved:
        clauses.append(f"state != {placeholder}")
        params.append(PENDING)
    if state:
        clauses.append(f"state = {placeholder}")
        params.append(int(state))
    if agent_id:
        clauses.append(f"agent_id = {placeholder}")
        params.append(agent_id)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(params)


#: Change kinds in the feed.
CREATED = "created"
FINISHED = "finished"


@dataclass(frozen=True)
class Change:
    """One committed write another process made: ``kind`` is CREATED or FINISHED."""

    origin: str
    kind: str
    escalation_id: str


#: ``on_changes(changes)``: committed writes of other processes, oldest first; ``None`` means some
#: may have been missed (the feed reconnected), so re-read whatever you hold.
OnChanges = Callable[[list[Change] | None], None]


def new_origin() -> str:
    """A random id for one store instance, so that a process can skip its own writes in the feed."""
    return os.urandom(6).hex()


class StoreError(InterlockError):
    """The escalation store cannot be read or written (disk full, locked, corrupt)."""

    status_code = grpc.StatusCode.UNAVAILABLE
    reason = "escalation_store"


class EscalationStore(ABC):
    """Where escalations live. Every write is durable when its coroutine returns.

    Implementations must make :meth:`finish` a compare-and-set on the PENDING
    state, so that an operator's answer and an expiry can never both win, and
    announce every committed :meth:`create` and winning :meth:`finish` in the change
    feed (in the same transaction, so a change is announced if and only if it committed).
    """

    #: This instance's id in the change feed (see :func:`new_origin`).
    origin: str = ""

    @abstractmethod
    async def listen(self, on_changes: OnChanges) -> None:
        """Start delivering other processes' changes to ``on_changes`` on the running loop.

        Called once, after :meth:`open`; :meth:`close` stops it. Delivery starts with
        ``on_changes(None)`` once the feed is connected (and again after every reconnect), so
        the caller re-reads what it holds and nothing written before listening is missed.
        A store no other process can open (``:memory:``) may do nothing.
        """

    @abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if needed; raises ConfigError naming the path."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections (idempotent)."""

    @abstractmethod
    async def create(self, escalations: Sequence[Escalation]) -> None:
        """Insert new PENDING escalations in one transaction."""

    @abstractmethod
    async def finish(self, escalation: Escalation) -> bool:
        """Write the final record if the stored one is still PENDING; False if another answer won."""

    @abstractmethod
    async def get(self, escalation_id: str) -> Escalation | None:
        """One escalation, or None."""

    @abstractmethod
    async def list(
        self, state: int = 0, agent_id: str = "", limit: int = 100, resolved: bool = False
    ) -> list[Escalation]:
        """Newest first; ``state`` 0 and ``agent_id`` "" match everything; ``resolved`` skips PENDING."""

    @abstractmethod
    async def pending(self) -> builtins.list[Escalation]:
        """Every PENDING escalation, oldest first (used to recover after a restart)."""

    @abstractmethod
    async def resolved_since(self, since: float) -> builtins.list[Escalation]:
        """Escalations resolved (not expired) at or after ``since`` (Unix seconds), oldest first."""
