"""SQLite escalation store: one file in WAL mode, every commit fsynced."""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from interlock.errors import ConfigError
from interlock.escalation.convert import from_bytes
from interlock.escalation.model import Escalation
from interlock.escalation.store import (
    EXPIRED,
    PENDING,
    EscalationStore,
    StoreError,
    finish_args,
    insert_row,
    list_filter,
)
from interlock.storage.sqlite import connect_wal

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
_T = TypeVar("_T")


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

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
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
        conn = connect_wal(self.path, synchronous="full", timeout=10.0)
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

    async def create(self, escalations: Sequence[Escalation]) -> None:
        rows = [insert_row(e) for e in escalations]
        await self._run(self._insert, rows)

    def _insert(self, rows: list[tuple[object, ...]]) -> None:
        conn = self._conn
        assert conn is not None
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO escalations VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    async def finish(self, escalation: Escalation) -> bool:
        return await self._run(self._update, finish_args(escalation))

    def _update(self, args: tuple[object, ...]) -> bool:
        conn = self._conn
        assert conn is not None
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(
                "UPDATE escalations SET state = ?, resolved_time = ?, body = ? "
                "WHERE escalation_id = ? AND state = ?",
                args,
            )
            return cur.rowcount == 1

    # ------------------------------------------------------------------ reads

    def _select(
        self, where: str, params: tuple[object, ...], order: str, limit: int | None = None
    ) -> list[Escalation]:
        conn = self._conn
        assert conn is not None
        sql = f"SELECT body FROM escalations {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [from_bytes(row[0]) for row in conn.execute(sql, params)]

    async def get(self, escalation_id: str) -> Escalation | None:
        rows = await self._run(self._select, "WHERE escalation_id = ?", (escalation_id,), "created_time")
        return rows[0] if rows else None

    async def list(
        self, state: int = 0, agent_id: str = "", limit: int = 100, resolved: bool = False
    ) -> list[Escalation]:
        where, params = list_filter("?", state, agent_id, resolved)
        return await self._run(self._select, where, params, "created_time DESC", limit)

    async def pending(self) -> builtins.list[Escalation]:
        return await self._run(self._select, "WHERE state = ?", (PENDING,), "created_time")

    async def resolved_since(self, since: float) -> builtins.list[Escalation]:
        return await self._run(
            self._select,
            "WHERE resolved_time >= ? AND state != ?",
            (since, EXPIRED),
            "resolved_time",
        )
