"""The transport floor: a benchmark-only echo service on the same grpc.aio server as the Guard.

``interlock.bench.v1.Echo`` has the Guard's three call shapes with raw-bytes
handlers that answer with a prebuilt response of the same size as the real
Decision (or CheckBatchResponse), so an echo call pays what every Check pays in
gRPC, HTTP/2 and the event loop, and nothing else (no decoding, no engine).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import grpc

from interlock.v1 import interlock_pb2 as pb

SERVICE = "interlock.bench.v1.Echo"


def add_echo_service(server: grpc.aio.Server, decision: bytes, request_len: float) -> None:
    """Register Echo on ``server``.

    Args:
        decision: Serialized ``Decision`` the unary and stream echoes answer with.
        request_len: Mean serialized size of one CheckRequest, to size batch answers:
            an echoed batch of ``n`` requests gets a CheckBatchResponse of ``n`` decisions.
    """
    one = pb.Decision.FromString(decision)
    batch_answers: dict[int, bytes] = {}
    item_len = request_len + 2  # + tag and length prefix of the repeated field

    async def check(request: bytes, context) -> bytes:
        return decision

    async def check_batch(request: bytes, context) -> bytes:
        n = max(1, round(len(request) / item_len))
        answer = batch_answers.get(n)
        if answer is None:
            answer = batch_answers[n] = pb.CheckBatchResponse(decisions=[one] * n).SerializeToString()
        return answer

    async def check_stream(requests: AsyncIterator[bytes], context) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield decision

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Check": grpc.unary_unary_rpc_method_handler(check),
        "CheckBatch": grpc.unary_unary_rpc_method_handler(check_batch),
        "CheckStream": grpc.stream_stream_rpc_method_handler(check_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def bench_hook(server, decision: bytes, request_len: float) -> None:
    """InterlockServer hook of the benchmark: adds the echo service."""
    add_echo_service(server.server, decision, request_len)


def make_hook(decision: bytes, request_len: float):
    """A picklable hook for :func:`interlock.server.workers.start_workers`."""
    return partial(bench_hook, decision=decision, request_len=request_len)
