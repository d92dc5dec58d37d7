"""Interlock's error hierarchy: each error carries the gRPC status it maps to.

Servicers never build status codes by hand: they raise (or let through) an
:class:`InterlockError`, and one interceptor turns it into ``context.abort``.
Any other exception is an internal error and fails closed.
"""

from __future__ import annotations

import grpc


class InterlockError(Exception):
    """Base class for errors that carry a gRPC status code and a user-facing message."""

    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    #: Label for ``interlock_requests_rejected_total{reason}``.
    reason: str = "internal"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:  # a finer label than the class's (InvalidRequest, Unavailable)
            self.reason = reason


class InvalidRequest(InterlockError):
    """The request is malformed: wrong shape, dtype, byte length, NaN, empty tensor."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class UnknownAgent(InterlockError):
    """No agent in the configuration matches the request's ``agent_id``."""

    status_code = grpc.StatusCode.NOT_FOUND
    reason = "unknown_agent"


class NotFound(InterlockError):
    """A named object (an escalation, a model) does not exist."""

    status_code = grpc.StatusCode.NOT_FOUND
    reason = "not_found"


class FailedPrecondition(InterlockError):
    """The call is valid but the object is in the wrong state (a resolved escalation)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "failed_precondition"


class ResourceExhausted(InterlockError):
    """A size or concurrency limit was exceeded."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "resource_exhausted"


class Unavailable(InterlockError):
    """A dependency the answer needs (the audit log, a store) is down; the action was not checked."""

    status_code = grpc.StatusCode.UNAVAILABLE
    reason = "unavailable"


class DeadlineExceeded(InterlockError):
    """The caller's deadline passed before the answer was ready."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "deadline_exceeded"


class Unauthenticated(InterlockError):
    status_code = grpc.StatusCode.UNAUTHENTICATED
    reason = "unauthenticated"


class PermissionDenied(InterlockError):
    status_code = grpc.StatusCode.PERMISSION_DENIED
    reason = "permission_denied"


class ConfigError(InterlockError):
    """The configuration file (or a model it names) is invalid; the message names file and key."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "config"


def shorten(text: object, limit: int = 64) -> str:
    """``text`` as a string of at most ``limit`` characters plus an ellipsis.

    Used for anything a client controls (ids, shapes, exception texts) before it
    goes into an error message: a 100 kB agent_id must not come back in the
    status (gRPC would then refuse the oversized metadata).
    """
    s = str(text)
    return s if len(s) <= limit else s[:limit] + "..."
