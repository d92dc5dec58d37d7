"""PostgreSQL audit backend (``pip install 'interlock[postgres]'``): many replicas share one log.

A lost connection (server restart, failover, ``pg_terminate_backend``) is
re-established once per write and the transaction retried; inserts skip
already-present ids, so a retry after an ambiguous commit cannot duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from interlock.audit.backend import SqlAuditBackend
from interlock.audit.record import AuditRecord
from interlock.storage.postgres import SCHEMA_LOCK, psycopg, redact

_T = TypeVar("_T")


class PostgresAuditBackend(SqlAuditBackend):
    """The log in a PostgreSQL table.

    Args:
        dsn: libpq connection string or URI.
        connect_timeout: Seconds before an unreachable server counts as down.
    """

    name = "postgres"
    placeholder = "%s"
    dialect = 1

    def __init__(self, dsn: str, connect_timeout: int = 5) -> None:
        super().__init__()
        self.dsn = dsn
        self.connect_timeout = connect_timeout

    def where(self) -> str:
        return redact(self.dsn)

    def connect(self) -> Any:
        pg = psycopg()
        conn = pg.connect(self.dsn, connect_timeout=self.connect_timeout, autocommit=False)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [SCHEMA_LOCK])
            for stmt in self.schema_sql():
                conn.execute(stmt)
        return conn

    def _ensure(self) -> None:
        if self.conn is None or self.conn.closed:
            self.close()
            self.open()

    def _retrying(self, work: Callable[[Any], _T]) -> _T:
        pg = psycopg()
        self._ensure()
        try:
            return work(self.conn)
        except pg.OperationalError:
            self.close()  # the connection is gone: reconnect once and retry
            self.open()
            return work(self.conn)

    def write(self, records: Sequence[AuditRecord]) -> None:
        rows = [r.to_row() for r in records]
        sql = self.insert_sql()

        def work(conn: Any) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows)

        self._retrying(work)

    def _read_cursor(self) -> Any:
        # A server-side cursor: exporting millions of records streams them instead of loading all.
        self._ensure()
        return self.conn.cursor(name="interlock_audit_read")

    def _end_read(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.rollback()

    def _execute_deletes(self, stmts: list[tuple[str, list[Any]]]) -> int:
        def work(conn: Any) -> int:
            total = 0
            with conn.transaction(), conn.cursor() as cur:
                for sql, args in stmts:
                    cur.execute(sql, args)
                    total += max(cur.rowcount, 0)
            return total

        return self._retrying(work)


__all__ = ["PostgresAuditBackend"]
