"""Per-call limits: concurrency (RESOURCE_EXHAUSTED beyond it), client deadlines, in-flight gauge.

:class:`ServerLimits` is a gRPC server interceptor. It wraps every handler except
health and reflection (probes must answer even under overload) so that:

* at most ``max_concurrent_rpcs`` calls run at once; the next gets
  RESOURCE_EXHAUSTED and ``interlock_requests_rejected_total{reason="concurrency"}``;
* a call whose deadline already passed is refused with DEADLINE_EXCEEDED before any work;
* the caller's deadline is visible to the request path through :func:`time_remaining`,
  so waits (audit commit, blocking escalation) end when the caller stops listening;
* calls that gRPC cancels (deadline passed, client gone) are counted as
  ``deadline_exceeded`` or ``cancelled``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import grpc

from interlock.deadline import set_deadline, time_remaining
from interlock.server.layers import HandlerCache, wrap_handler

if TYPE_CHECKING:
    from interlock.server.metrics import Metrics

#: Remaining times above this mean "no deadline" (gRPC reports infinity as a huge number).
_NO_DEADLINE = 1e8
#: A call cancelled this close to its deadline (seconds) was cancelled by the deadline.
_DEADLINE_SLACK = 0.05

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ServerLimits(grpc.aio.ServerInterceptor):
    """Concurrency limit, deadline propagation and the in-flight gauge.

    Args:
        max_concurrent: Most calls at once (None: unlimited).
        metrics: Where rejections and the in-flight gauge go.
    """

    def __init__(self, max_concurrent: int | None, metrics: Metrics) -> None:
        self.max_concurrent = max_concurrent
        self.metrics = metrics
        self.inflight = 0
        self._handlers = HandlerCache()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        return self._handlers.get(handler, None, lambda: self._wrap(handler))

    def _wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` run inside :meth:`_limited`; a unary one through the same steps without the
        context manager (a plain try per call)."""
        behavior = handler.unary_unary
        if behavior is None or not inspect.iscoroutinefunction(behavior):
            return wrap_handler(handler, self._limited)

        @functools.wraps(behavior)
        async def limited(request, context):
            await self._enter(context)
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                self._cancelled(context)
                raise
            finally:
                self._leave()

        return grpc.unary_unary_rpc_method_handler(
            limited, handler.request_deserializer, handler.response_serializer
        )

    async def _enter(self, context) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            self.metrics.reject("deadline_exceeded")
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed before it started"
            )
        if self.max_concurrent is not None and self.inflight >= self.max_concurrent:
            self.metrics.reject("concurrency")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is at its limit of {self.max_concurrent} concurrent calls "
                "(server.max_concurrent_rpcs); retry with backoff",
            )
        self.inflight += 1
        self.metrics.inflight.inc()
        set_deadline(None if remaining is None or remaining > _NO_DEADLINE else remaining)

    def _leave(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.dec()

    def _cancelled(self, context) -> None:
        """gRPC cancelled the call: its deadline passed, or the client went away.

        gRPC cancels at its own deadline, which can come a little before ours (ours was started
        from ``context.time_remaining()`` a moment after the call arrived): within
        ``_DEADLINE_SLACK`` seconds of either clock's deadline counts as the deadline.
        """
        remaining = [r for r in (time_remaining(), context.time_remaining()) if r is not None]
        expired = bool(remaining) and min(remaining) <= _DEADLINE_SLACK
        self.metrics.reject("deadline_exceeded" if expired else "cancelled")

    @asynccontextmanager
    async def _limited(self, request, context) -> AsyncIterator[None]:
        """The layer every non-exempt call runs in (``request`` may be a request iterator)."""
        await self._enter(context)
        try:
            yield
        except asyncio.CancelledError:
            self._cancelled(context)
            raise
        finally:
            self._leave()
