"""wrap_handler: one mechanism runs every gRPC call shape inside layers (errors, limits and auth use it)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import grpc
import pytest

from interlock.server.layers import wrap_call, wrap_handler

SERVICE = "test.Echo"


async def unary_unary(request: bytes, context) -> bytes:
    return request.upper()


async def unary_stream(request: bytes, context):
    for ch in request:
        yield bytes([ch])


async def stream_unary(requests, context) -> bytes:
    return b"".join([r async for r in requests])


async def stream_stream(requests, context):
    async for r in requests:
        yield r + b"!"


async def boom(request: bytes, context) -> bytes:
    raise ValueError("boom")


HANDLERS = {
    "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
    "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
    "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
    "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
    "Boom": grpc.unary_unary_rpc_method_handler(boom),
}


class Recording(grpc.aio.ServerInterceptor):
    """Wraps every call in two layers that log their entry, exit and any exception."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def layer(self, name: str):
        @asynccontextmanager
        async def run(request, context):
            self.events.append(f"{name}>")
            try:
                yield
            except Exception as e:
                self.events.append(f"{name}!{type(e).__name__}")
                if name == "inner":  # turn it into a status, as handle_errors does
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"mapped: {e}")
                raise
            finally:
                self.events.append(f"<{name}")

        return run

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        return wrap_handler(handler, self.layer("outer"), self.layer("inner"))


@pytest.fixture
async def echo():
    recording = Recording()
    server = grpc.aio.server(interceptors=[recording])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, HANDLERS),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel, recording.events
    await channel.close()
    await server.stop(None)


async def _requests():
    for r in (b"a", b"b", b"c"):
        yield r


async def test_every_call_shape_runs_inside_the_layers_first_outermost(echo):
    channel, events = echo
    nested = ["outer>", "inner>", "<inner", "<outer"]
    assert await channel.unary_unary(f"/{SERVICE}/UnaryUnary")(b"hi") == b"HI"
    assert events == nested
    events.clear()
    assert [m async for m in channel.unary_stream(f"/{SERVICE}/UnaryStream")(b"xyz")] == [b"x", b"y", b"z"]
    assert events == nested
    events.clear()
    assert await channel.stream_unary(f"/{SERVICE}/StreamUnary")(_requests()) == b"abc"
    assert events == nested
    events.clear()
    got = [m async for m in channel.stream_stream(f"/{SERVICE}/StreamStream")(_requests())]
    assert got == [b"a!", b"b!", b"c!"]
    assert events == nested


async def test_a_layer_sees_the_exception_and_maps_it_to_a_status(echo):
    channel, events = echo
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(f"/{SERVICE}/Boom")(b"x")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "mapped: boom"
    # The inner layer turned it into an abort; the outer one saw only that, and both closed. The client
    # has its status as soon as the abort is sent, so give the server's layers a moment to unwind.
    for _ in range(200):
        if len(events) >= 6:
            break
        await asyncio.sleep(0.01)
    assert events == ["outer>", "inner>", "inner!ValueError", "<inner", "outer!AbortError", "<outer"]


def test_a_synchronous_handler_is_refused_rather_than_run_outside_the_layers():
    @asynccontextmanager
    async def layer(request, context):
        yield

    def sync_handler(request, context):
        return request

    with pytest.raises(TypeError, match="is not async"):
        wrap_call(sync_handler, layer)
    with pytest.raises(TypeError, match="is not async"):
        wrap_handler(grpc.unary_unary_rpc_method_handler(sync_handler), layer)
