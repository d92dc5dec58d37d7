"""Server-side dynamic micro-batching of concurrent single-request checks.

Like Triton's dynamic batcher: concurrent ``Check`` and ``CheckStream``
messages are decided in one engine call, so many agents share one ensemble run.
A batch is cut as soon as it holds ``max_batch`` requests, or when its first
request has waited ``max_delay_ms``. Waiting only pays when others arrive, so
a batch is cut at the end of the current event-loop turn instead (no added
latency) when requests arrive further apart than ``max_delay_ms`` on average
(an exponentially weighted mean of the gaps), or when the last two batches
that waited found nobody (a lone agent in a closed loop: it sends its next
request only after this answer); every 64th batch waits again to notice new
company. For such a lone agent a request is decided at once, in its own call
(no future, no event-loop turn). Configure with::

    server:
      batching: {max_batch: 64, max_delay_ms: 0.5}

``max_delay_ms: 0`` (or no ``batching`` section) turns batching off.

Guarantees (tests/test_batcher.py): each caller gets exactly the decision it
would get unbatched; a malformed request fails only itself (its own
InvalidRequest/UnknownAgent); a stage that fails for the whole batch (a monitor
raising on one row) or an unexpected engine error re-decides the affected
requests one at a time, so only the request that causes it is failed closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from interlock.engine import Guard
from interlock.stagetimes import StageTimes
from interlock.types import CheckInput, Decision

log = logging.getLogger(__name__)


class MicroBatcher:
    """Coalesces concurrent ``submit`` calls on one event loop into batched ``Guard.check_each`` calls.

    Args:
        guard: Returns the engine to use for a batch (read when the batch is cut, so
            a hot reload applies to the next batch; a batch sees one config version).
        max_batch: Most requests decided in one engine call.
        max_delay_ms: Longest time the first request of a batch waits for company.
        timed: Tracing is on: record each batch's stage times (``StageTimes``) on its decisions.
    """

    def __init__(
        self, guard: Callable[[], Guard], max_batch: int, max_delay_ms: float, timed: bool = False
    ) -> None:
        if max_batch < 1 or max_delay_ms <= 0:
            raise ValueError("MicroBatcher needs max_batch >= 1 and max_delay_ms > 0")
        self._guard = guard
        self.timed = timed
        self.max_batch = max_batch
        self.max_delay = max_delay_ms / 1000.0
        self._pending: list[tuple[CheckInput, asyncio.Future]] = []
        self._timer: asyncio.Handle | None = None
        self._last_arrival = 0.0
        self._gap = self.max_delay  # seconds, mean gap between arrivals
        self._lonely = 0  # batches in a row that waited the whole delay for nobody
        self._opened = 0
        #: Sizes of the batches cut so far (count, total requests), for tests and benchmarks.
        self.batches = 0
        self.requests = 0
        #: Batches cut by the delay (the others were full or cut at once).
        self.waited = 0

    async def submit(self, item: CheckInput) -> Decision:
        """The decision for ``item``; raises the InterlockError of a malformed request."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._last_arrival:
            # Mean gap between arrivals (exponentially weighted): is anyone likely to join a batch?
            self._gap += 0.1 * (min(now - self._last_arrival, 1.0) - self._gap)
        self._last_arrival = now
        if self._timer is None and not self._pending:  # this request opens a batch
            self._opened += 1
            company = self._lonely < 2 or self._opened % 64 == 0
            if self._gap < self.max_delay and company and self.max_batch > 1:
                fut = loop.create_future()
                self._pending.append((item, fut))
                self._timer = loop.call_later(self.max_delay, self._flush, True)
                return await fut
            if self._lonely >= 2:
                # A lone agent in a closed loop (the last two waits found nobody): decide it now,
                # as a batch of one, without a future and a turn of the event loop.
                return self._alone(item)
            # Arrivals are far apart: cut at the end of this loop turn (requests delivered in
            # the same turn still join).
            self._timer = loop.call_soon(self._flush)
        fut = loop.create_future()
        self._pending.append((item, fut))
        if len(self._pending) >= self.max_batch:
            self._flush()
        return await fut

    def _alone(self, item: CheckInput) -> Decision:
        """:meth:`_flush` of a batch holding only ``item``, answered directly."""
        self.batches += 1
        self.requests += 1
        guard = self._guard()
        result: Decision | BaseException
        try:
            result = guard.check_each([item], StageTimes() if self.timed else None)[0]
        except Exception:
            log.exception("batched check of 1 request failed; deciding it again alone")
            result = self._one(guard, item, self.timed)
        if isinstance(result, BaseException):
            raise result
        return result

    def _flush(self, waited: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        if waited:  # the whole delay passed: did anybody join?
            self.waited += 1
            self._lonely = self._lonely + 1 if len(pending) == 1 else 0
        elif len(pending) > 1:
            self._lonely = 0
        self.batches += 1
        self.requests += len(pending)
        items = [item for item, _ in pending]
        guard = self._guard()
        try:
            results: list = guard.check_each(items, StageTimes() if self.timed else None)
        except Exception:
            log.exception("batched check of %d requests failed; deciding them one by one", len(items))
            results = [self._one(guard, item, self.timed) for item in items]
        else:
            if len(items) > 1:
                # A stage that failed for the whole batch (a monitor raising on one row's data)
                # failed every row closed; decide those rows alone, as they would be unbatched.
                for i, r in enumerate(results):
                    if isinstance(r, Decision) and r.errors:
                        results[i] = self._one(guard, items[i], self.timed)
        for (_, fut), result in zip(pending, results, strict=True):
            if fut.cancelled():  # the caller went away (deadline, cancelled stream)
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    @staticmethod
    def _one(guard: Guard, item: CheckInput, timed: bool) -> Decision | BaseException:
        try:
            return guard.check_each([item], StageTimes() if timed else None)[0]
        except Exception as e:
            return e

    def close(self) -> None:
        """Decide whatever is waiting now (used at shutdown)."""
        self._flush()
