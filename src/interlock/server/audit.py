"""The durable decision log: records, group commit, and the storage interface.

Every decision other than a plain ALLOW (or every one, or a sampled share of
ALLOWs, see :class:`~interlock.config.AuditConfig`) is committed before its
answer is returned. Requests do not each pay for a transaction: one writer
thread takes everything queued while the previous commit ran and writes it in
the next transaction (group commit), so throughput grows with concurrency while
the event loop never blocks on the database.

Backends (:mod:`.audit_sqlite`, :mod:`.audit_postgres`) share the SQL in
:class:`SqlAuditBackend`; only connecting and placeholders differ.

Example:
    >>> log = AuditLog.from_config(cfg.server.audit, base_dir, metrics)  # doctest: +SKIP
    >>> await log.record(decisions)   # returns once they are committed  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import os
import queue
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from interlock.errors import ConfigError, DeadlineExceeded, Unavailable
from interlock.server.limits import time_remaining
from interlock.types import Decision, Verdict

if TYPE_CHECKING:
    from interlock.config import AuditConfig
    from interlock.server.metrics import Metrics

log = logging.getLogger(__name__)

TABLE = "interlock_audit"
#: Column name -> (SQLite type, PostgreSQL type), in insert order.
COLUMNS: dict[str, tuple[str, str]] = {
    "decision_id": ("TEXT PRIMARY KEY", "TEXT PRIMARY KEY"),
    "time": ("REAL NOT NULL", "DOUBLE PRECISION NOT NULL"),
    "agent_id": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "episode_id": ("TEXT", "TEXT"),
    "step": ("INTEGER", "BIGINT"),
    "verdict": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "shadow_verdict": ("TEXT", "TEXT"),
    "rule": ("TEXT", "TEXT"),
    "fallback": ("TEXT", "TEXT"),
    "config_version": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "escalation_id": ("TEXT", "TEXT"),
    "reasons": ("TEXT", "TEXT"),
    "signals": ("TEXT", "TEXT"),
    "labels": ("TEXT", "TEXT"),
    "errors": ("TEXT", "TEXT"),
    "obs_dtype": ("TEXT", "TEXT"),
    "obs_shape": ("TEXT", "TEXT"),
    "observation": ("BLOB", "BYTEA"),
    "action_dtype": ("TEXT", "TEXT"),
    "action_shape": ("TEXT", "TEXT"),
    "proposed_action": ("BLOB", "BYTEA"),
    "action": ("BLOB", "BYTEA"),
}


# --------------------------------------------------------------------------- records


@dataclass
class AuditRecord:
    """One decision as stored. Arrays are one observation / one action (no batch axis)."""

    decision_id: str
    time: float
    agent_id: str
    verdict: str
    config_version: str
    observation: np.ndarray
    proposed_action: np.ndarray
    action: np.ndarray | None
    episode_id: str = ""
    step: int = 0
    shadow_verdict: str = ""
    rule: str = ""
    fallback: str = ""
    escalation_id: str = ""
    reasons: list[str] = field(default_factory=list)
    signals: list[tuple[str, float, float, bool]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_decision(cls, d: Decision, now: float | None = None) -> AuditRecord:
        return cls(
            decision_id=d.decision_id,
            time=time.time() if now is None else now,
            agent_id=d.agent_id,
            verdict=d.verdict.label,
            config_version=d.config_version,
            observation=np.asarray(d.observation),
            proposed_action=np.asarray(d.proposed_action),
            action=None if d.action is None else np.asarray(d.action),
            episode_id=d.episode_id,
            step=int(d.step),
            shadow_verdict=d.shadow_verdict.label if d.shadow_verdict is not None else "",
            rule=d.rule,
            fallback=d.fallback,
            escalation_id=d.escalation_id,
            reasons=list(d.reasons),
            signals=[(n, float(v), float(t), bool(tr)) for n, v, t, tr in d.signals],
            labels=dict(d.labels),
            errors=list(d.errors),
        )

    @property
    def effective_verdict(self) -> str:
        """The verdict the policy reached (the would-be verdict for shadow-mode records)."""
        return self.shadow_verdict or self.verdict

    def to_row(self) -> tuple:
        """Values in :data:`COLUMNS` order."""
        act = self.proposed_action
        return (
            self.decision_id,
            self.time,
            self.agent_id,
            self.episode_id,
            self.step,
            self.verdict,
            self.shadow_verdict,
            self.rule,
            self.fallback,
            self.config_version,
            self.escalation_id,
            json.dumps(self.reasons),
            json.dumps(self.signals),
            json.dumps(self.labels),
            json.dumps(self.errors),
            self.observation.dtype.name,
            json.dumps(list(self.observation.shape)),
            np.ascontiguousarray(self.observation).tobytes(),
            act.dtype.name,
            json.dumps(list(act.shape)),
            np.ascontiguousarray(act).tobytes(),
            None if self.action is None else np.ascontiguousarray(self.action, dtype=act.dtype).tobytes(),
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> AuditRecord:
        v = dict(zip(COLUMNS, row, strict=True))
        obs_dtype, obs_shape = np.dtype(v["obs_dtype"]), json.loads(v["obs_shape"])
        act_dtype, act_shape = np.dtype(v["action_dtype"]), json.loads(v["action_shape"])

        def arr(blob, dtype, shape):
            return np.frombuffer(bytes(blob), dtype=dtype).reshape(shape)

        return cls(
            decision_id=v["decision_id"],
            time=float(v["time"]),
            agent_id=v["agent_id"],
            verdict=v["verdict"],
            config_version=v["config_version"],
            observation=arr(v["observation"], obs_dtype, obs_shape),
            proposed_action=arr(v["proposed_action"], act_dtype, act_shape),
            action=None if v["action"] is None else arr(v["action"], act_dtype, act_shape),
            episode_id=v["episode_id"] or "",
            step=int(v["step"] or 0),
            shadow_verdict=v["shadow_verdict"] or "",
            rule=v["rule"] or "",
            fallback=v["fallback"] or "",
            escalation_id=v["escalation_id"] or "",
            reasons=json.loads(v["reasons"] or "[]"),
            signals=[tuple(s) for s in json.loads(v["signals"] or "[]")],
            labels=json.loads(v["labels"] or "{}"),
            errors=json.loads(v["errors"] or "[]"),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite numbers become null), as ``interlock audit export`` prints it."""

        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        def arr(a: np.ndarray | None):
            return None if a is None else a.tolist()

        def clean(x):
            if isinstance(x, list):
                return [clean(i) for i in x]
            return num(x) if isinstance(x, float) else x

        return {
            "decision_id": self.decision_id,
            "time": dt.datetime.fromtimestamp(self.time, dt.timezone.utc).isoformat(),
            "timestamp": self.time,
            "agent_id": self.agent_id,
            "episode_id": self.episode_id,
            "step": self.step,
            "verdict": self.verdict,
            "shadow_verdict": self.shadow_verdict or None,
            "rule": self.rule,
            "fallback": self.fallback,
            "config_version": self.config_version,
            "escalation_id": self.escalation_id,
            "reasons": self.reasons,
            "signals": [
                {"name": n, "value": num(v), "threshold": num(t), "tripped": tr}
                for n, v, t, tr in self.signals
            ],
            "labels": self.labels,
            "errors": self.errors,
            "observation": clean(arr(self.observation)),
            "proposed_action": clean(arr(self.proposed_action)),
            "action": clean(arr(self.action)),
        }


@dataclass
class AuditQuery:
    """Filters for reading the log; ``None`` means any."""

    agent_id: str | None = None
    episode_id: str | None = None
    verdict: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int | None = None
    newest_first: bool = False


# --------------------------------------------------------------------------- backends


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
        clauses, args = [], []
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


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, where: str) -> str:
    """Replace ``${NAME}`` with the environment variable; raises ConfigError when it is unset."""

    def sub(m: re.Match) -> str:
        val = os.environ.get(m.group(1))
        if val is None:
            raise ConfigError(f"{where} reads the environment variable {m.group(1)}, which is not set")
        return val

    return _ENV.sub(sub, text)


def open_backend(spec: str) -> SqlAuditBackend:
    """A backend for a SQLite path or a ``postgresql://`` DSN (for the CLI and replay); not yet opened."""
    if spec.startswith(("postgresql://", "postgres://")) or "dbname=" in spec:
        from interlock.server.audit_postgres import PostgresAuditBackend

        return PostgresAuditBackend(spec)
    from interlock.server.audit_sqlite import SqliteAuditBackend

    return SqliteAuditBackend(Path(spec))


def backend_for_config(cfg: AuditConfig, base_dir: Path, where: str = "server.audit") -> SqlAuditBackend:
    """The backend ``server.audit`` describes; not yet opened."""
    if cfg.backend == "postgres":
        if not cfg.dsn:
            raise ConfigError(
                f"{where}.dsn is required with backend postgres, e.g. '${{INTERLOCK_AUDIT_DSN}}'"
            )
        from interlock.server.audit_postgres import PostgresAuditBackend

        return PostgresAuditBackend(expand_env(cfg.dsn, f"{where}.dsn"))
    from interlock.server.audit_sqlite import SqliteAuditBackend

    p = Path(cfg.path).expanduser()
    return SqliteAuditBackend(p if p.is_absolute() else base_dir / p, synchronous=cfg.synchronous)


# --------------------------------------------------------------------------- the log


@dataclass
class _Pending:
    records: list[AuditRecord]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


_STOP = object()


def _resolve(fut: asyncio.Future, error: BaseException | None) -> None:
    if fut.done():  # the caller gave up (deadline, cancellation)
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def error_kind(e: BaseException) -> str:
    """A short label for ``interlock_audit_errors_total{kind}``."""
    text = str(e).lower()
    if "full" in text or "no space" in text:
        return "disk_full"
    if "readonly" in text or "read-only" in text or "read only" in text:
        return "read_only"
    if "connect" in text or "terminat" in text or "closed" in text or "server" in text:
        return "unreachable"
    return type(e).__name__


class AuditLog:
    """Group-committing decision log in front of a backend.

    Args:
        cfg: ``server.audit``.
        backend: Where records go (opened here, on the writer thread).
        metrics: Counters for records, errors and commit sizes.
    """

    def __init__(self, cfg: AuditConfig, backend: SqlAuditBackend, metrics: Metrics) -> None:
        self.cfg = cfg
        self.backend = backend
        self.metrics = metrics
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._last_prune = 0.0
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="interlock-audit", daemon=True)

    @classmethod
    def from_config(cls, cfg: AuditConfig, base_dir: Path, metrics: Metrics) -> AuditLog:
        return cls(cfg, backend_for_config(cfg, base_dir), metrics)

    def start(self) -> AuditLog:
        """Open the backend on the writer thread; raises Unavailable when it cannot be opened."""
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            e = self._open_error
            raise Unavailable(
                f"cannot open the audit log at {self.backend.where()}: {type(e).__name__}: {e}; "
                "fix server.audit (path, permissions, dsn) or remove it",
                reason="audit_unavailable",
            ) from None
        return self

    def wants(self, d: Decision) -> bool:
        """Whether ``d`` is recorded: non-ALLOW, shadowed, failed or escalated always; else per config."""
        if self.cfg.record == "all":
            return True
        if d.verdict is not Verdict.ALLOW or d.errors or d.escalation_id:
            return True
        if d.shadow_verdict is not None and d.shadow_verdict is not Verdict.ALLOW:
            return True
        return self.cfg.sample_allow > 0 and random.random() < self.cfg.sample_allow

    async def record(self, decisions: Sequence[Decision]) -> None:
        """Commit the decisions this log wants; returns once they are durable.

        Raises:
            Unavailable: the write failed and ``fail_mode`` is closed.
            DeadlineExceeded: the caller's deadline passed first (the write may still land).
        """
        now = time.time()
        records = [AuditRecord.from_decision(d, now) for d in decisions if self.wants(d)]
        if not records:
            return
        if self._closed:
            raise Unavailable("the server is shutting down; the audit log is closed", reason="shutting_down")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put(_Pending(records, fut, loop))
        remaining = time_remaining()
        try:
            if remaining is None:
                await fut
            else:
                await asyncio.wait_for(asyncio.shield(fut), max(remaining, 0.0))
        except asyncio.TimeoutError:
            fut.add_done_callback(_consume)  # the write goes on; nobody will read its outcome
            self.metrics.reject("deadline_exceeded")
            raise DeadlineExceeded(
                "the caller's deadline passed while the decision was being written to the audit log"
            ) from None
        except Exception as e:
            if self.cfg.fail_mode == "open":
                log.error("audit write failed (fail_mode open: answering anyway): %s", e)
                return
            raise Unavailable(
                f"the audit log could not record the decision ({error_kind(e)}: {e}); the action was not "
                f"approved. Fix the audit store at {self.backend.where()} or set server.audit.fail_mode",
                reason="audit_unavailable",
            ) from None

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        try:
            self.backend.open()
            self._maybe_prune()
        except BaseException as e:
            self._open_error = e
            self._opened.set()
            return
        self._opened.set()
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: list[_Pending] = [first]
            n = len(first.records)
            while n < self.cfg.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
                n += len(item.records)
            self._commit(batch, n)
            self._maybe_prune()
        self.backend.close()

    def _commit(self, batch: list[_Pending], n: int) -> None:
        records = [r for p in batch for r in p.records]
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            self.backend.write(records)
        except Exception as e:
            error = e
            log.error("audit log write of %d record(s) to %s failed: %s", n, self.backend.where(), e)
            self.metrics.audit_errors.labels(kind=error_kind(e)).inc(n)
        else:
            self.metrics.audit_records.inc(n)
            self.metrics.audit_commit.observe(time.perf_counter() - start)
            self.metrics.audit_batch.observe(n)
        for p in batch:
            p.loop.call_soon_threadsafe(_resolve, p.future, error)

    def _maybe_prune(self) -> None:
        ret = self.cfg.retention
        if ret.max_age_days is None and ret.max_rows is None:
            return
        now = time.monotonic()
        if now - self._last_prune < ret.interval_seconds and self._last_prune:
            return
        self._last_prune = now
        try:
            age = None if ret.max_age_days is None else ret.max_age_days * 86400.0
            deleted = self.backend.prune(age, ret.max_rows)
            if deleted:
                log.info("audit retention deleted %d record(s)", deleted)
        except Exception as e:
            log.error("audit retention failed: %s", e)

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then close the backend (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
