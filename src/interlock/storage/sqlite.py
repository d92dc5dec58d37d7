"""SQLite in WAL mode, as the decision log and the escalation store both open it."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_wal(path: str | Path, synchronous: str = "full", timeout: float = 5.0) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL journal, ``synchronous`` set.

    Args:
        path: The database file (its folder is created) or ``":memory:"`` (tests: WAL is not possible).
        synchronous: "full" fsyncs the WAL at every commit (survives power loss); "normal" survives
            process crashes only.
        timeout: Seconds to wait for another writer's lock.

    Raises:
        sqlite3.OperationalError: the file cannot be opened or switched to WAL mode.
    """
    memory = str(path) == ":memory:"
    if not memory:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=timeout)
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if not memory and str(mode).lower() != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode (got {mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    return conn
