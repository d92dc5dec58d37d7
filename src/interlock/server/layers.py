"""One way to wrap gRPC calls in layers: error mapping, limits and authentication all use it.

A *layer* is a function of a call's own arguments (the last one is the gRPC context)
that returns an async context manager; the call runs inside it. The layer sees the
call start, its exceptions (including cancellation) and its end, the same whether the
response is one message (an ``async def``) or a stream (an async generator):

* :func:`wrap_call` wraps one behaviour, a servicer method or a handler function;
* :func:`wrap_handler` wraps the behaviour of a ``grpc.RpcMethodHandler`` in any of the
  four call shapes, for server interceptors.

Example::

    @asynccontextmanager
    async def timed(request, context):
        start = time.monotonic()
        try:
            yield
        finally:
            log.info("call took %.3f s", time.monotonic() - start)

    handler = wrap_handler(handler, timed)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

#: ``layer(*call_args)`` -> an async context manager the call runs inside.
Layer = Callable[..., AbstractAsyncContextManager[Any]]

# The four call shapes of an RpcMethodHandler: which behaviour is set, and how to rebuild it.
_SHAPES = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def wrap_call(behavior: Callable[..., Any], layer: Layer) -> Callable[..., Any]:
    """``behavior`` run inside ``layer(*args)``, with the same signature and kind.

    Raises:
        TypeError: ``behavior`` is neither ``async def`` nor an async generator function
            (a synchronous handler would otherwise run without the layer, e.g. unauthenticated).
    """
    if inspect.isasyncgenfunction(behavior):

        @functools.wraps(behavior)
        async def streamed(*args):
            async with layer(*args):
                async for item in behavior(*args):
                    yield item

        return streamed
    if inspect.iscoroutinefunction(behavior):

        @functools.wraps(behavior)
        async def unary(*args):
            async with layer(*args):
                return await behavior(*args)

        return unary
    raise TypeError(f"{behavior!r} is not async; Interlock's gRPC handlers are async def or async generators")


def wrap_handler(handler: grpc.RpcMethodHandler, *layers: Layer) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour run inside ``layers``, the first outermost."""
    for shape, rebuild in _SHAPES:
        behavior = getattr(handler, shape)
        if behavior is not None:
            for layer in reversed(layers):
                behavior = wrap_call(behavior, layer)
            return rebuild(behavior, handler.request_deserializer, handler.response_serializer)
    return handler


class HandlerCache:
    """Wrapped handlers kept per original handler, so an interceptor does not rebuild them per call.

    gRPC looks a method's handler up for every call and gets the same object each time (the generic
    handlers registered on the server); wrapping it again per call (:func:`wrap_handler`) cost 20 to
    50 us of every call (hot loop, in process). Entries hold their original handler, so its ``id``
    cannot be reused while cached; at ``max_entries`` (handlers that are new objects per call, e.g.
    wrapped by another interceptor without a cache) the cache is cleared rather than grown.
    """

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._wrapped: dict[tuple[int, object], tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(
        self, handler: grpc.RpcMethodHandler, key: object, wrap: Callable[[], grpc.RpcMethodHandler]
    ) -> grpc.RpcMethodHandler:
        """``wrap()`` of ``handler`` (for ``key``: what the wrapping depends on), built once."""
        hit = self._wrapped.get((id(handler), key))
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = wrap()
        if len(self._wrapped) >= self.max_entries:
            self._wrapped.clear()
        self._wrapped[(id(handler), key)] = (handler, wrapped)
        return wrapped
