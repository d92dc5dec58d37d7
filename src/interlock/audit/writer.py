"""The durable decision log: records, group commit, and the storage interface.

Every decision other than a plain ALLOW (or every one, or a sampled share of
ALLOWs, see :class:`~interlock.config.AuditConfig`) is committed before its
answer is returned. Requests do not each pay for a transaction: one writer
thread takes everything queued while the previous commit ran and writes it in
the next transaction (group commit), so throughput grows with concurrency while
the event loop never blocks on the database.

Backends (:mod:`interlock.audit.sqlite`, :mod:`interlock.audit.postgres`) share the SQL in
:class:`~interlock.audit.backend.SqlAuditBackend`; only connecting and placeholders differ.

Example:
    >>> log = AuditLog.from_config(cfg.server.audit, base_dir, metrics)  # doctest: +SKIP
    >>> await log.record(decisions)   # returns once they are committed  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from interlock.audit.backend import SqlAuditBackend
from interlock.audit.factory import backend_for_config
from interlock.audit.record import AuditRecord
from interlock.deadline import time_remaining
from interlock.errors import DeadlineExceeded, Unavailable
from interlock.types import Decision, Verdict

if TYPE_CHECKING:
    from interlock.config import AuditConfig
    from interlock.server.metrics import Metrics

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the log


@dataclass
class _Pending:
    records: list[AuditRecord]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


#: Put on the queue to stop the writer thread.
_STOP = None


def _resolve(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():  # the caller gave up (deadline, cancellation)
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def _consume(fut: asyncio.Future[None]) -> None:
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
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
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
            if first is None:  # _STOP
                break
            batch: list[_Pending] = [first]
            n = len(first.records)
            while n < self.cfg.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:  # _STOP
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
