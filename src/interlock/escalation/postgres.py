"""PostgreSQL escalation store: several Guard replicas share one durable queue.

Implements :class:`interlock.escalation.store.EscalationStore` (the
escalation feature's interface). Records are ``interlock.v1.Escalation``
messages kept beside the columns queries need, as in the SQLite store.
:meth:`finish` is a compare-and-set on the PENDING state: under PostgreSQL's
row locking two replicas racing to resolve (or expire) the same escalation
cannot both win. A lost connection is re-established once per call and the
statement retried (inserts and the compare-and-set are safe to repeat).

Change feed: ``create`` and a winning ``finish`` call ``pg_notify`` on the channel
``interlock_escalations`` inside their transaction (PostgreSQL delivers it at commit,
and never for a rolled-back one) with the payload ``"<origin> <kind> <escalation_id>"``.
:meth:`listen` keeps one extra autocommit connection per replica that ``LISTEN``s on
the event loop (psycopg's ``AsyncConnection.notifies``) and reconnects with backoff
when it drops; after each (re)connect it reports ``None`` so the manager re-reads the
escalations it holds, covering notifications sent while it was away.

Requires ``pip install 'interlock[postgres]'``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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
from interlock.storage.postgres import SCHEMA_LOCK, psycopg, redact

log = logging.getLogger(__name__)
_T = TypeVar("_T")

TABLE = "interlock_escalations"
#: The NOTIFY channel of the change feed.
CHANNEL = "interlock_escalations"
#: Seconds between reconnect attempts of the listening connection (doubling up to the last).
_RECONNECT = (0.1, 0.2, 0.5, 1.0, 2.0)
_SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        escalation_id TEXT PRIMARY KEY,
        agent_id      TEXT NOT NULL,
        state         INTEGER NOT NULL,
        created_time  DOUBLE PRECISION NOT NULL,
        deadline_time DOUBLE PRECISION NOT NULL,
        resolved_time DOUBLE PRECISION,
        body          BYTEA NOT NULL)""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_state ON {TABLE} (state, created_time)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_agent ON {TABLE} (agent_id, created_time)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_resolved ON {TABLE} (resolved_time)",
]


class PostgresEscalationStore(EscalationStore):
    """Escalations in a PostgreSQL table; every call runs on one worker thread.

    Args:
        dsn: libpq connection string or URI.
        connect_timeout: Seconds before an unreachable server counts as down.
    """

    def __init__(self, dsn: str, connect_timeout: int = 5) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self._conn: Any = None  # a psycopg.Connection once open
        self._executor: ThreadPoolExecutor | None = None
        self.origin = new_origin()
        self._listener: asyncio.Task[None] | None = None

    def _connect(self) -> Any:
        conn = psycopg().connect(self.dsn, connect_timeout=self.connect_timeout, autocommit=False)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [SCHEMA_LOCK])
            for stmt in _SCHEMA:
                conn.execute(stmt)
        return conn

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="interlock-escalations-pg")
        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)
        except ConfigError:
            raise
        except Exception as e:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise ConfigError(f"cannot open the escalation store at {redact(self.dsn)}: {e}") from None

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        conn, executor = self._conn, self._executor
        self._conn, self._executor = None, None
        if executor is not None:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            executor.shutdown(wait=True)

    async def _run(self, work: Callable[[Any], _T]) -> _T:
        if self._executor is None:
            raise StoreError("the escalation store is not open")

        def call() -> _T:
            pg = psycopg()
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                try:
                    return work(self._conn)
                except pg.OperationalError:
                    self._conn.close()  # connection lost: reconnect once and retry
                    self._conn = self._connect()
                    return work(self._conn)
            except pg.Error as e:
                if self._conn is not None and not self._conn.closed:
                    self._conn.rollback()
                raise StoreError(f"escalation store {redact(self.dsn)}: {type(e).__name__}: {e}") from e

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    # ------------------------------------------------------------------ writes

    def _payload(self, kind: str, escalation_id: str) -> tuple[str, str]:
        return CHANNEL, f"{self.origin} {kind} {escalation_id}"

    async def create(self, escalations: Sequence[Escalation]) -> None:
        rows = [insert_row(e) for e in escalations]
        notes = [self._payload(CREATED, e.escalation_id) for e in escalations]

        def work(conn: Any) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (escalation_id) DO NOTHING",
                    rows,
                )
                cur.executemany("SELECT pg_notify(%s, %s)", notes)

        await self._run(work)

    async def finish(self, escalation: Escalation) -> bool:
        args = finish_args(escalation)
        note = self._payload(FINISHED, escalation.escalation_id)

        def work(conn: Any) -> bool:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    f"UPDATE {TABLE} SET state = %s, resolved_time = %s, body = %s "
                    "WHERE escalation_id = %s AND state = %s",
                    args,
                )
                won: bool = cur.rowcount == 1
                if won:
                    cur.execute("SELECT pg_notify(%s, %s)", note)
                return won

        return await self._run(work)

    # ------------------------------------------------------------------ change feed

    async def listen(self, on_changes: OnChanges) -> None:
        """LISTEN on a dedicated connection; waits for the first connect (or its failure) only."""
        connected = asyncio.Event()
        self._listener = asyncio.get_running_loop().create_task(
            self._listen(on_changes, connected), name="interlock-escalations-listen"
        )
        await connected.wait()

    async def _listen(self, on_changes: OnChanges, connected: asyncio.Event) -> None:
        pg = psycopg()
        failures = 0
        while True:
            try:
                async with await pg.AsyncConnection.connect(
                    self.dsn, connect_timeout=self.connect_timeout, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if failures:
                        log.warning("escalations: change feed reconnected to %s", redact(self.dsn))
                    failures = 0
                    connected.set()
                    on_changes(None)  # re-read: notifications sent while not listening are lost
                    async for note in conn.notifies():
                        change = self._parse(note.payload)
                        if change is not None and change.origin != self.origin:
                            on_changes([change])
            except asyncio.CancelledError:
                raise
            except Exception as e:
                delay = _RECONNECT[min(failures, len(_RECONNECT) - 1)]
                if failures == 0:
                    log.warning(
                        "escalations: change feed %s lost (%s: %s); other replicas' answers reach "
                        "blocked Checks at their deadline until it reconnects (retrying every %.1f-%.0f s)",
                        redact(self.dsn),
                        type(e).__name__,
                        e,
                        _RECONNECT[0],
                        _RECONNECT[-1],
                    )
                failures += 1
                connected.set()
                await asyncio.sleep(delay)

    @staticmethod
    def _parse(payload: str) -> Change | None:
        parts = payload.split(" ")
        if len(parts) != 3 or parts[1] not in (CREATED, FINISHED):
            log.debug("escalations: ignoring notification %r", payload)
            return None
        return Change(*parts)

    # ------------------------------------------------------------------ reads

    async def _select(
        self, where: str, params: tuple[object, ...], order: str, limit: int | None = None
    ) -> builtins.list[Escalation]:
        sql = f"SELECT body FROM {TABLE} {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"

        def work(conn: Any) -> builtins.list[Escalation]:
            with conn.transaction():
                return [from_bytes(bytes(r[0])) for r in conn.execute(sql, params)]

        return await self._run(work)

    async def get(self, escalation_id: str) -> Escalation | None:
        rows = await self._select("WHERE escalation_id = %s", (escalation_id,), "created_time")
        return rows[0] if rows else None

    async def list(
        self, state: int = 0, agent_id: str = "", limit: int = 100, resolved: bool = False
    ) -> list[Escalation]:
        where, params = list_filter("%s", state, agent_id, resolved)
        return await self._select(where, params, "created_time DESC", limit)

    async def pending(self) -> builtins.list[Escalation]:
        return await self._select("WHERE state = %s", (PENDING,), "created_time")

    async def resolved_since(self, since: float) -> builtins.list[Escalation]:
        return await self._select(
            "WHERE resolved_time >= %s AND state != %s", (since, EXPIRED), "resolved_time"
        )
