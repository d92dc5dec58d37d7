"""Durable storage of escalations: a small interface and its SQLite implementation.

The manager (``interlock.server.escalation``) keeps the live state in memory and
writes every change here *before* it is acknowledged: an escalation id is only
returned to an agent, and a resolution only confirmed to an operator, once the
store has committed it. Records are ``interlock.v1.Escalation`` messages (the
wire schema is versioned and stable, so it doubles as the storage schema), with
the columns needed for queries kept beside the serialized message.

Another backend (PostgreSQL, for several replicas) implements
:class:`EscalationStore`; :func:`open_store` picks one from the config.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from interlock.config import LoadedConfig
from interlock.errors import ConfigError, InterlockError
from interlock.v1 import interlock_pb2 as pb

log = logging.getLogger(__name__)

PENDING = pb.ESCALATION_STATE_PENDING



def insert_row(e: pb.Escalation) -> tuple:
    """The escalations table row of a new escalation (resolved_time NULL, the message as the body)."""
    body = e.SerializeToString()
    return (e.escalation_id, e.agent_id, e.state, e.created_time, e.deadline_time, None, body)


def list_filter(placeholder: str, state: int, agent_id: str, resolved: bool) -> tuple[str, tuple]:
    """The WHERE clause and parameters of ``list()``, for a driver's placeholder (``?`` or ``%s``)."""
    clauses: list[str] = []
    params: list[object] = []
    if resolved:
        clauses.append(f"state != {placeholder}")
        params.append(PENDING)
    if state:
        clauses.append(f"state = {placeholder}")
        params.append(state)
    if agent_id:
        clauses.append(f"agent_id = {placeholder}")
        params.append(agent_id)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(params)

class StoreError(InterlockError):
    """The escalation store cannot be read or written (disk full, locked, corrupt)."""

    status_code = grpc.StatusCode.UNAVAILABLE
    reason = "escalation_store"


class EscalationStore(ABC):
    """Where escalations live. Every write is durable when its coroutine returns.

    Implementations must make :meth:`finish` a compare-and-set on the PENDING
    state, so that an operator's answer and an expiry can never both win.
    """

    @abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if needed; raises ConfigError naming the path."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections (idempotent)."""

    @abstractmethod
    async def create(self, escalations: Sequence[pb.Escalation]) -> None:
        """Insert new PENDING escalations in one transaction."""

    @abstractmethod
    async def finish(self, escalation: pb.Escalation) -> bool:
        """Write the final record if the stored one is still PENDING; False if another answer won."""

    @abstractmethod
    async def get(self, escalation_id: str) -> pb.Escalation | None:
        """One escalation, or None."""

    @abstractmethod
    async def list(
        self, state: int = 0, agent_id: str = "", limit: int = 100, resolved: bool = False
    ) -> list[pb.Escalation]:
        """Newest first; ``state`` 0 and ``agent_id`` "" match everything; ``resolved`` skips PENDING."""

    @abstractmethod
    async def pending(self) -> list[pb.Escalation]:
        """Every PENDING escalation, oldest first (used to recover after a restart)."""

    @abstractmethod
    async def resolved_since(self, since: float) -> list[pb.Escalation]:
        """Escalations resolved (not expired) at or after ``since`` (Unix seconds), oldest first."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS escalations (
    escalation_id TEXT PRIMARY KEY,
    agent_id      TEXT NOT NULL,
    state         INTEGER NOT NULL,
    created_time  REAL NOT NULL,
    deadline_time REAL NOT NULL,
    resolved_time REAL,
    body          BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS escalations_by_state ON escalations (state, created_time);
CREATE INDEX IF NOT EXISTS escalations_by_agent ON escalations (agent_id, created_time);
CREATE INDEX IF NOT EXISTS escalations_by_resolved ON escalations (resolved_time);
"""
_SCHEMA_VERSION = 1


class SqliteEscalationStore(EscalationStore):
    """SQLite in WAL mode with ``synchronous=FULL``: a commit survives a crash and a power cut.

    All calls run on one dedicated thread (SQLite connections are thread-bound),
    so the asyncio event loop never blocks on disk.

    Args:
        path: Database file; its folder is created if needed. ``":memory:"`` for a
            throw-away store (tests only: nothing survives a restart).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def _run(self, fn, *args):
        if self._executor is None or self._conn is None:
            raise StoreError("the escalation store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as e:
            raise StoreError(f"escalation store {self.path}: {type(e).__name__}: {e}") from e

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="interlock-escalations")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, self._connect)
        except (sqlite3.Error, OSError) as e:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise ConfigError(
                f"cannot open the escalation store {self.path}: {e}; check that the folder is writable "
                "(escalations.store.path in the config)"
            ) from e

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if self.path != ":memory:" and str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"could not switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"the database has schema version {version}, newer than this Interlock's "
                f"({_SCHEMA_VERSION}); upgrade Interlock or point escalations.store.path elsewhere"
            )
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        return conn

    async def close(self) -> None:
        conn, executor = self._conn, self._executor
        self._conn, self._executor = None, None
        if executor is not None:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            executor.shutdown(wait=True)

    # ------------------------------------------------------------------ writes

    async def create(self, escalations: Sequence[pb.Escalation]) -> None:
        rows = [insert_row(e) for e in escalations]
        await self._run(self._insert, rows)

    def _insert(self, rows: list[tuple]) -> None:
        conn = self._conn
        assert conn is not None
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO escalations VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    async def finish(self, escalation: pb.Escalation) -> bool:
        return await self._run(
            self._update,
            escalation.escalation_id,
            escalation.state,
            escalation.resolved_time,
            escalation.SerializeToString(),
        )

    def _update(self, escalation_id: str, state: int, resolved: float, body: bytes) -> bool:
        conn = self._conn
        assert conn is not None
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(
                "UPDATE escalations SET state = ?, resolved_time = ?, body = ? "
                "WHERE escalation_id = ? AND state = ?",
                (state, resolved, body, escalation_id, PENDING),
            )
            return cur.rowcount == 1

    # ------------------------------------------------------------------ reads

    def _select(self, where: str, params: tuple, order: str, limit: int | None = None) -> list[pb.Escalation]:
        conn = self._conn
        assert conn is not None
        sql = f"SELECT body FROM escalations {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [pb.Escalation.FromString(row[0]) for row in conn.execute(sql, params)]

    async def get(self, escalation_id: str) -> pb.Escalation | None:
        rows = await self._run(self._select, "WHERE escalation_id = ?", (escalation_id,), "created_time")
        return rows[0] if rows else None

    async def list(
        self, state: int = 0, agent_id: str = "", limit: int = 100, resolved: bool = False
    ) -> list[pb.Escalation]:
        where, params = list_filter("?", state, agent_id, resolved)
        return await self._run(self._select, where, params, "created_time DESC", limit)

    async def pending(self) -> list[pb.Escalation]:
        return await self._run(self._select, "WHERE state = ?", (PENDING,), "created_time")

    async def resolved_since(self, since: float) -> list[pb.Escalation]:
        return await self._run(
            self._select,
            "WHERE resolved_time >= ? AND state != ?",
            (since, pb.ESCALATION_STATE_EXPIRED),
            "resolved_time",
        )


def open_store(loaded: LoadedConfig) -> EscalationStore:
    """The store the config asks for (not yet opened): ``escalations.store``."""
    cfg = loaded.config.escalations.store
    if cfg.kind == "sqlite":
        path = cfg.path if cfg.path == ":memory:" else str(loaded.resolve(cfg.path))
        return SqliteEscalationStore(path)
    if cfg.kind == "postgres":
        from interlock.server.audit import expand_env
        from interlock.server.escalation_store_postgres import PostgresEscalationStore

        return PostgresEscalationStore(expand_env(cfg.dsn, "escalations.store.dsn"))
    raise ValueError(f"unknown escalation store kind {cfg.kind!r}")  # pragma: no cover - config forbids it
