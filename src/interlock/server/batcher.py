"""Server-side dynamic micro-batching of concurrent single-request checks.

Like Triton's dynamic batcher: concurrent ``Check`` and ``CheckStream``
messages are decided in one engine call, so many agents share one ensemble run.
A batch is cut as soon as it holds ``max_batch`` requests, or when an
event-loop turn passes in which no new request joined it (so a lone request
waits one loop turn, microseconds, not ``max_delay_ms``), or at the latest when
its first request has waited ``max_delay_ms``. While the engine decides one
batch on the event loop, the requests that arrive queue up in gRPC and form
the next batch. Configure with::

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

from interlock.engine import CheckInput, Decision, Guard

log = logging.getLogger(__name__)


class MicroBatcher:
    """Coalesces concurrent ``submit`` calls on one event loop into batched ``Guard.check_each`` calls.

    Args:
        guard: Returns the engine to use for a batch (read when the batch is cut, so
            a hot reload applies to the next batch; a batch sees one config version).
        max_batch: Most requests decided in one engine call.
        max_delay_ms: Longest time the first request of a batch waits for company.
    """

    def __init__(self, guard: Callable[[], Guard], max_batch: int, max_delay_ms: float) -> None:
        if max_batch < 1 or max_delay_ms <= 0:
            raise ValueError("MicroBatcher needs max_batch >= 1 and max_delay_ms > 0")
        self._guard = guard
        self.max_batch = max_batch
        self.max_delay = max_delay_ms / 1000.0
        self._pending: list[tuple[CheckInput, asyncio.Future]] = []
        self._timer: asyncio.Handle | None = None
        self._deadline = 0.0
        self._seen = 0
        #: Sizes of the batches cut so far (count, total requests), for tests and benchmarks.
        self.batches = 0
        self.requests = 0

    async def submit(self, item: CheckInput) -> Decision:
        """The decision for ``item``; raises the InterlockError of a malformed request."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((item, fut))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._deadline = loop.time() + self.max_delay
            self._seen = len(self._pending)
            self._timer = loop.call_soon(self._tick)
        return await fut

    def _tick(self) -> None:
        """Once per event-loop turn while a batch is open: cut it when nobody joined or time is up."""
        self._timer = None
        n = len(self._pending)
        if n == 0:
            return
        loop = asyncio.get_running_loop()
        if n == self._seen or loop.time() >= self._deadline:
            self._flush()
        else:
            self._seen = n
            self._timer = loop.call_soon(self._tick)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        self.batches += 1
        self.requests += len(pending)
        items = [item for item, _ in pending]
        guard = self._guard()
        try:
            results: list = guard.check_each(items)
        except Exception:
            log.exception("batched check of %d requests failed; deciding them one by one", len(items))
            results = [self._one(guard, item) for item in items]
        else:
            if len(items) > 1:
                # A stage that failed for the whole batch (a monitor raising on one row's data)
                # failed every row closed; decide those rows alone, as they would be unbatched.
                for i, r in enumerate(results):
                    if isinstance(r, Decision) and r.errors:
                        results[i] = self._one(guard, items[i])
        for (_, fut), result in zip(pending, results, strict=True):
            if fut.cancelled():  # the caller went away (deadline, cancelled stream)
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    @staticmethod
    def _one(guard: Guard, item: CheckInput) -> Decision | BaseException:
        try:
            return guard.check_each([item])[0]
        except Exception as e:
            return e

    def close(self) -> None:
        """Decide whatever is waiting now (used at shutdown)."""
        self._flush()
