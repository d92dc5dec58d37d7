"""The agent-facing ``interlock.v1.Guard`` service: thin, all logic is in GuardService."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError

from interlock.errors import InterlockError, InvalidRequest, ResourceExhausted
from interlock.server.convert import (
    columns_request,
    columns_to_pb,
    decision_to_pb,
    decisions_to_batch_response,
    request_to_input,
    stacked_requests,
    unchecked_decision,
)
from interlock.server.errors import handle_errors, status_for
from interlock.server.service import GuardService
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class Undecodable:
    """Stands in for a request whose bytes are not a valid message, so the servicer can answer it."""

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name = type_name
        self.error = error


def _tolerant(message_type) -> Callable[[bytes], object]:
    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as e:
            return Undecodable(message_type.DESCRIPTOR.full_name, str(e))

    return parse


def add_guard_service(servicer: GuardServicer, server: grpc.aio.Server) -> None:
    """Register the Guard service with deserializers that let corrupt bytes reach the servicer.

    The generated ``add_GuardServicer_to_server`` would fail such calls inside
    gRPC with UNKNOWN and no metric; here they get INVALID_ARGUMENT and are counted.
    """
    ser = pb.Decision.SerializeToString
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            servicer.Check, request_deserializer=_tolerant(pb.CheckRequest), response_serializer=ser
        ),
        "CheckBatch": grpc.unary_unary_rpc_method_handler(
            servicer.CheckBatch,
            request_deserializer=_tolerant(pb.CheckBatchRequest),
            response_serializer=pb.CheckBatchResponse.SerializeToString,
        ),
        "CheckColumns": grpc.unary_unary_rpc_method_handler(
            servicer.CheckColumns,
            request_deserializer=_tolerant(pb.CheckColumnsRequest),
            response_serializer=pb.CheckColumnsResponse.SerializeToString,
        ),
        "CheckStream": grpc.stream_stream_rpc_method_handler(
            servicer.CheckStream, request_deserializer=_tolerant(pb.CheckRequest), response_serializer=ser
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("interlock.v1.Guard", handlers),))


class GuardServicer(pb_grpc.GuardServicer):
    def __init__(self, service: GuardService, max_message_bytes: int, max_batch: int) -> None:
        self.service = service
        self.metrics = service.metrics
        self.max_message_bytes = max_message_bytes
        self.max_batch = max_batch

    def _check_size(self, message, what: str) -> None:
        if isinstance(message, Undecodable):
            self.metrics.reject("undecodable")
            raise InvalidRequest(
                f"{what} is not a valid {message.type_name}: {message.error}", reason="undecodable"
            )
        size = message.ByteSize()
        if size > self.max_message_bytes:
            self.metrics.reject("message_too_large")
            raise ResourceExhausted(
                f"{what} is {size} bytes; the limit is {self.max_message_bytes} (server.max_message_bytes)"
            )

    @handle_errors
    async def Check(self, request: pb.CheckRequest, context) -> pb.Decision:
        self._check_size(request, "the request")
        [decision] = await self.service.check([self._decode(request)], trace_parent=self._trace(context))
        return decision_to_pb(decision)

    @handle_errors
    async def CheckBatch(self, request: pb.CheckBatchRequest, context) -> pb.CheckBatchResponse:
        self._check_size(request, "the batch")
        n = len(request.requests)
        if n == 0:
            self._reject("empty_batch")
            raise InvalidRequest("requests is empty; send at least one CheckRequest", reason="empty_batch")
        if n > self.max_batch:
            self.metrics.reject("batch_too_large")
            raise ResourceExhausted(
                f"the batch has {n} requests; the limit is {self.max_batch} (server.max_batch)"
            )
        stacked = stacked_requests(request.requests)  # uniform rows: one frombuffer per column
        if stacked is not None:
            items, observations, actions = stacked
            decisions = await self.service.check(
                items, indexed=True, columns=(observations, actions), trace_parent=self._trace(context)
            )
            return decisions_to_batch_response(decisions)
        items = [self._decode(r, f"requests[{i}]") for i, r in enumerate(request.requests)]
        decisions = await self.service.check(items, indexed=True, trace_parent=self._trace(context))
        return decisions_to_batch_response(decisions)

    @handle_errors
    async def CheckColumns(self, request: pb.CheckColumnsRequest, context) -> pb.CheckColumnsResponse:
        """One agent's rows as columns: the same decisions as CheckBatch row by row."""
        self._check_size(request, "the request")
        try:
            observations, actions = columns_request(request)
        except InvalidRequest as e:
            self._reject(e.reason)
            raise
        n = len(observations) if observations.ndim else 0
        if n > self.max_batch:
            self.metrics.reject("batch_too_large")
            raise ResourceExhausted(
                f"the request has {n} rows; the limit is {self.max_batch} (server.max_batch)"
            )
        cd = await self.service.check_columns(
            request.agent_id,
            observations,
            actions,
            request.episode_ids,
            request.steps,
            dict(request.labels) if request.labels else None,
        )
        return columns_to_pb(cd)

    @handle_errors
    async def CheckStream(
        self, request_iterator: AsyncIterator[pb.CheckRequest], context
    ) -> AsyncIterator[pb.Decision]:
        """One Decision per message; a message that cannot be checked gets HALT with ``error`` set.

        A robot streaming sensor data must not lose its guard on one corrupt packet, so a bad
        message does not end the stream (Check and CheckBatch answer it with a status instead).
        """
        index = 0
        parent = self._trace(context)  # every message's decision is a child of the stream's caller
        async for request in request_iterator:
            try:
                self._check_size(request, f"stream message {index}")
                [decision] = await self.service.check([self._decode(request)], trace_parent=parent)
                answer = decision_to_pb(decision)
            except Exception as e:
                answer = self._unchecked(e, f"stream message {index}")
            yield answer
            index += 1

    def _trace(self, context) -> object | None:
        """The caller's trace context from the metadata (``traceparent``), when tracing is on."""
        tracer = self.service.tracer
        return None if tracer is None else tracer.extract(context.invocation_metadata())

    def _unchecked(self, e: Exception, where: str) -> pb.Decision:
        """The HALT answer to a stream message that raised ``e`` (counted where it was raised)."""
        code, message = status_for(e)
        if not isinstance(e, InterlockError):
            log.exception("unhandled error in CheckStream (%s)", where)
            self.metrics.reject("internal")
        return unchecked_decision(code, f"{where}: {message}", self.service.guard.version)

    def _decode(self, request: pb.CheckRequest, field: str = ""):
        try:
            return request_to_input(request, field)
        except InvalidRequest as e:
            self._reject(e.reason)
            raise

    def _reject(self, reason: str) -> None:
        self.metrics.reject(reason)
