"""SQLite escalation store: one file in WAL mode, every commit fsynced.

Change feed between processes on one machine (``interlock serve --workers N``, or two
servers on one file): every create and winning finish also appends a row to the table
``escalation_changes`` in the same transaction. :meth:`SqliteEscalationStore.listen`
runs one thread per process that polls ``PRAGMA data_version`` on its own connection
every ``poll_seconds`` (20 ms): SQLite changes that number when another connection
has committed, and in WAL mode reading it touches only the shared-memory WAL index,
not the file, so an idle poll costs a few microseconds. Only when it changes does the
thread read the new change rows and hand them to the event loop.

Why polling and not a socket between the workers: it needs no discovery of peers, no
socket files to clean up after a kill -9, works for any process that opens the file
(two ``interlock serve`` on one file as well as workers), and cannot lose a change
(the rows are in the database; a socket datagram to a busy or restarting peer can be
lost). The price is up to ``poll_seconds`` of extra latency, well inside the 100 ms target.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from interlock.errors import ConfigError
from interlock.escalation.convert import from_bytes
from interlock.escalation.model import Escalation
from interlock.escalation.store import (
    CREATED,
    EXPIRED,
    FINISHED,
    PENDING,
    Change,
    EscalationStore,
    OnChanges,
    StoreError,
    finish_args,
    insert_row,
    list_filter,
    new_origin,
)
from interlock.storage.sqlite import connect_wal

log = logging.getLogger(__name__)

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
CREATE TABLE IF NOT EXISTS escalation_changes (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    origin        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    escalation_id TEXT NOT NULL
);
"""
#: The change table was added without a version bump: older servers ignore it (they only miss wake-ups).
_SCHEMA_VERSION = 1
_T = TypeVar("_T")

#: Change rows kept; older ones are pruned on insert (a poller more than this far behind resyncs).
_CHANGES_KEPT = 10_000


class SqliteEscalationStore(EscalationStore):
    """SQLite in WAL mode with ``synchronous=FULL``: a commit survives a crash and a power cut.

    All calls run on one dedicated thread (SQLite connections are thread-bound),
    so the asyncio event loop never blocks on disk.

    Args:
        path: Database file; its folder is created if needed. ``":memory:"`` for a
            throw-away store (tests only: nothing survives a restart).
    """

    def __init__(self, path: str | Path, poll_seconds: float = 0.02) -> None:
        self.path = str(path)
        self.poll_seconds = poll_seconds
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.origin = new_origin()
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()

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
        if self._poller is not None:
            self._stop_polling.set()
            await asyncio.to_thread(self._poller.join)
            self._poller = None
        conn, executor = self._conn, self._executor
        self._conn, self._executor = None, None
        if executor is not None:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            executor.shutdown(wait=True)

    # ------------------------------------------------------------------ writes

    async def create(self, escalations: Sequence[Escalation]) -> None:
        rows = [insert_row(e) for e in escalations]
        changes = [(self.origin, CREATED, e.escalation_id) for e in escalations]
        await self._run(self._insert, rows, changes)

    def _insert(self, rows: list[tuple[object, ...]], changes: list[tuple[object, ...]]) -> None:
        conn = self._conn
        assert conn is not None
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO escalations VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._announce(conn, changes)
            conn.execute(
                "DELETE FROM escalation_changes WHERE seq <= (SELECT max(seq) FROM escalation_changes) - ?",
                (_CHANGES_KEPT,),
            )

    @staticmethod
    def _announce(conn: sqlite3.Connection, changes: list[tuple[object, ...]]) -> None:
        conn.executemany(
            "INSERT INTO escalation_changes (origin, kind, escalation_id) VALUES (?, ?, ?)", changes
        )

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
            won = cur.rowcount == 1
            if won:
                self._announce(conn, [(self.origin, FINISHED, args[3])])
            return won

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

    # ------------------------------------------------------------------ change feed

    async def listen(self, on_changes: OnChanges) -> None:
        """Poll for other processes' changes on a thread; a ``:memory:`` store has none to poll."""
        if self.path == ":memory:" or self._poller is not None:
            return
        loop = asyncio.get_running_loop()
        conn = await asyncio.to_thread(connect_wal, self.path, "normal", 1.0)
        last = conn.execute("SELECT coalesce(max(seq), 0) FROM escalation_changes").fetchone()[0]
        self._stop_polling.clear()
        self._poller = threading.Thread(
            target=self._poll,
            args=(conn, last, loop, on_changes),
            name="interlock-escalations-feed",
            daemon=True,
        )
        self._poller.start()
        on_changes(None)

    def _poll(
        self, conn: sqlite3.Connection, last: int, loop: asyncio.AbstractEventLoop, on_changes: OnChanges
    ) -> None:
        version = None
        try:
            while not self._stop_polling.wait(self.poll_seconds):
                try:
                    now = conn.execute("PRAGMA data_version").fetchone()[0]
                    if now == version:
                        continue
                    version = now
                    rows = conn.execute(
                        "SELECT seq, origin, kind, escalation_id FROM escalation_changes "
                        "WHERE seq > ? ORDER BY seq",
                        (last,),
                    ).fetchall()
                except sqlite3.Error as e:  # locked or busy: try again at the next tick
                    log.debug("escalations: change feed poll of %s failed: %s", self.path, e)
                    version = None
                    continue
                if not rows:
                    continue
                missed = rows[0][0] > last + 1 and last > 0  # pruned past us: re-read everything
                last = rows[-1][0]
                changes = [Change(o, k, i) for _, o, k, i in rows if o != self.origin]
                with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                    if missed:
                        loop.call_soon_threadsafe(on_changes, None)
                    if changes:
                        loop.call_soon_threadsafe(on_changes, changes)
        finally:
            conn.close()
