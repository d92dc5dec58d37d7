"""SQLite audit backend: WAL mode, one writer connection, ``synchronous`` from the config."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from interlock.audit.backend import SqlAuditBackend
from interlock.audit.record import TABLE, AuditRecord
from interlock.storage.sqlite import connect_wal

log = logging.getLogger(__name__)


class SqliteAuditBackend(SqlAuditBackend):
    """The log in one SQLite file (created with its folder when missing).

    Args:
        path: The database file.
        synchronous: "full" fsyncs the WAL at every commit (survives power loss);
            "normal" survives process crashes only.
        busy_timeout_ms: How long to wait for another writer's lock.
    """

    name = "sqlite"
    placeholder = "?"
    dialect = 0
    insert_verb = "INSERT OR IGNORE INTO"
    insert_suffix = ""

    def __init__(self, path: Path, synchronous: str = "full", busy_timeout_ms: int = 5000) -> None:
        super().__init__()
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = busy_timeout_ms

    def where(self) -> str:
        return str(self.path)

    def connect(self) -> Any:
        conn = connect_wal(self.path, self.synchronous, timeout=self.busy_timeout_ms / 1000)
        for stmt in self.schema_sql():
            conn.execute(stmt)
        return conn

    def open(self) -> None:
        super().open()
        self._inode = self._identity()

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def write(self, records: Sequence[AuditRecord]) -> None:
        if self.conn is not None and self._identity() != self._inode:
            # The file was deleted or replaced under us (rotation gone wrong): SQLite would keep
            # writing into the unlinked file and the records would be lost. Start a new file.
            log.error("audit database %s was deleted or replaced; reopening it", self.path)
            self.close()
        if self.conn is None:
            self.open()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(self.insert_sql(), [r.to_row() for r in records])
            conn.execute("COMMIT")
        except BaseException:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            finally:
                self.close()  # reopen on the next write: the file may have been moved or remounted
            raise

    def _execute_deletes(self, stmts: list[tuple[str, list[Any]]]) -> int:
        conn = self.conn
        total = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in stmts:
                total += conn.execute(sql, args).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return total

    def size_bytes(self) -> int:
        """Database plus WAL size on disk."""
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())


__all__ = ["TABLE", "SqliteAuditBackend"]
