"""One place that turns exceptions into gRPC status codes (MLServer's pattern)."""

from __future__ import annotations

import functools
import inspect
import logging

import grpc

from interlock.errors import InterlockError

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


def handle_errors():
    """Decorate an aio servicer method (unary or server-streaming) to abort with the mapped status."""

    def wrap(method):
        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def stream(self, request, context):
                try:
                    async for item in method(self, request, context):
                        yield item
                except (grpc.aio.AbortError, GeneratorExit):
                    raise
                except Exception as e:
                    await _abort(self, context, e)

            return stream

        @functools.wraps(method)
        async def unary(self, request, context):
            try:
                return await method(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await _abort(self, context, e)

        return unary

    return wrap


async def _abort(servicer, context, e: Exception) -> None:
    code, message = status_for(e)
    if not isinstance(e, InterlockError):
        log.exception("unhandled error in %s", type(servicer).__name__)
        metrics = getattr(servicer, "metrics", None)
        if metrics is not None:
            metrics.reject("internal")
    await context.abort(code, message)
