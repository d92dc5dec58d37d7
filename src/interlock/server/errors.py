"""One place that turns exceptions into gRPC status codes (MLServer's pattern)."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from interlock.errors import InterlockError
from interlock.server.layers import wrap_call

log = logging.getLogger(__name__)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message an exception is answered with.

    Anything that is not an :class:`InterlockError` is INTERNAL with a generic
    message: details go to the log, not to the caller, and the caller must
    treat it as "not checked" (fail closed).
    """
    if isinstance(exc, InterlockError):
        return exc.status_code, exc.message
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the action was not checked"


def handle_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate an aio servicer method (unary or streaming) to abort with the mapped status."""
    if inspect.iscoroutinefunction(method):
        # Unary: what the ``_aborting`` layer does, as a plain try (no context manager per call).
        @functools.wraps(method)
        async def unary(servicer, request, context):
            try:
                return await method(servicer, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await _abort(servicer, context, e)

        return unary
    return wrap_call(method, _aborting)


@asynccontextmanager
async def _aborting(servicer, request, context) -> AsyncIterator[None]:
    """The layer :func:`handle_errors` runs a method in (``request`` may be a request iterator)."""
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except Exception as e:
        await _abort(servicer, context, e)


async def _abort(servicer, context, e: Exception) -> None:
    code, message = status_for(e)
    if not isinstance(e, InterlockError):
        log.exception("unhandled error in %s", type(servicer).__name__)
        metrics = getattr(servicer, "metrics", None)
        if metrics is not None:
            metrics.reject("internal")
    await context.abort(code, message)
