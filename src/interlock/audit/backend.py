"""The decision log's storage interface: the SQL that SQLite and PostgreSQL share.

Implementations (:mod:`interlock.audit.sqlite`, :mod:`interlock.audit.postgres`) connect
and name their placeholder; :mod:`interlock.audit.factory` picks one. This module never
imports them.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

from interlock.audit.record import COLUMNS, TABLE, AuditQuery, AuditRecord


class SqlAuditBackend(ABC):
    """SQL shared by SQLite and PostgreSQL; subclasses connect and name their placeholder.

    Methods are called from one thread at a time (the writer thread, or the CLI).
    """

    name = "sql"
    placeholder = "?"
    dialect = 0  # index into COLUMNS' type tuples
    insert_verb = "INSERT INTO"
    insert_suffix = " ON CONFLICT (decision_id) DO NOTHING"

    def __init__(self) -> None:
        self.conn: Any = None

    # -- subclass hooks
    @abstractmethod
    def connect(self) -> Any:
        """Open the database connection."""

    def where(self) -> str:
        """Where the log lives, for messages."""
        return self.name

    # -- common SQL
    def schema_sql(self) -> list[str]:
        cols = ", ".join(f"{c} {types[self.dialect]}" for c, types in COLUMNS.items())
        return [
            f"CREATE TABLE IF NOT EXISTS {TABLE} ({cols})",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_time ON {TABLE} (time)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_agent ON {TABLE} (agent_id, time)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_episode ON {TABLE} (episode_id)",
        ]

    def open(self) -> None:
        self.conn = self.connect()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def insert_sql(self) -> str:
        marks = ", ".join([self.placeholder] * len(COLUMNS))
        return f"{self.insert_verb} {TABLE} ({', '.join(COLUMNS)}) VALUES ({marks}){self.insert_suffix}"

    @abstractmethod
    def write(self, records: Sequence[AuditRecord]) -> None:
        """Insert ``records`` in one transaction (already-present ids are skipped)."""

    def _filters(self, q: AuditQuery) -> tuple[str, list[Any]]:
        p = self.placeholder
        clauses: list[str] = []
        args: list[Any] = []
        for col, val in (("agent_id", q.agent_id), ("episode_id", q.episode_id)):
            if val is not None:
                clauses.append(f"{col} = {p}")
                args.append(val)
        if q.verdict is not None:
            clauses.append(f"(verdict = {p} OR shadow_verdict = {p})")
            args += [q.verdict, q.verdict]
        if q.since is not None:
            clauses.append(f"time >= {p}")
            args.append(q.since)
        if q.until is not None:
            clauses.append(f"time < {p}")
            args.append(q.until)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def query(self, q: AuditQuery, chunk: int = 1000) -> Iterator[AuditRecord]:
        """Records matching ``q``, oldest first unless ``q.newest_first``."""
        where, args = self._filters(q)
        order = "DESC" if q.newest_first else "ASC"
        sql = f"SELECT {', '.join(COLUMNS)} FROM {TABLE}{where} ORDER BY time {order}"
        if q.limit is not None:
            sql += f" LIMIT {int(q.limit)}"
        cur = self._read_cursor()
        cur.execute(sql, args)
        while rows := cur.fetchmany(chunk):
            for row in rows:
                yield AuditRecord.from_row(row)
        self._end_read()

    def _read_cursor(self) -> Any:
        """A cursor for streaming reads (backends override to avoid loading every row at once)."""
        return self.conn.cursor()

    def count(self, q: AuditQuery | None = None) -> int:
        where, args = self._filters(q or AuditQuery())
        cur = self.conn.cursor()
        cur.execute(f"SELECT COUNT(*) FROM {TABLE}{where}", args)
        (n,) = cur.fetchone()
        self._end_read()
        return int(n)

    def _end_read(self) -> None:  # noqa: B027 - an optional hook, a no-op for drivers without one
        """Hook: end the read transaction if the driver opened one."""

    def prune(self, max_age_seconds: float | None, max_rows: int | None, now: float | None = None) -> int:
        """Delete records older than ``max_age_seconds`` and beyond the newest ``max_rows``; returns n."""
        p = self.placeholder
        stmts: list[tuple[str, list[Any]]] = []
        if max_age_seconds is not None:
            stmts.append((f"DELETE FROM {TABLE} WHERE time < {p}", [(now or time.time()) - max_age_seconds]))
        if max_rows is not None:
            stmts.append(
                (
                    f"DELETE FROM {TABLE} WHERE decision_id IN (SELECT decision_id FROM {TABLE} "
                    f"ORDER BY time DESC LIMIT -1 OFFSET {p})"
                    if self.dialect == 0
                    else f"DELETE FROM {TABLE} WHERE decision_id IN (SELECT decision_id FROM {TABLE} "
                    f"ORDER BY time DESC OFFSET {p})",
                    [int(max_rows)],
                )
            )
        return self._execute_deletes(stmts)

    @abstractmethod
    def _execute_deletes(self, stmts: list[tuple[str, list[Any]]]) -> int:
        """Run the retention DELETEs in one transaction; returns the rows removed."""
