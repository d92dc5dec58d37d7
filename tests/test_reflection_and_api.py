"""Issue 10, items 11-12: Guard misuse raises at once; reflection answers v1 clients as well as v1alpha."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as alpha_pb2_grpc

from interlock.engine import Guard, NotLoaded
from interlock.types import CheckInput
from tests.support.fixtures import discrete_agent, loaded
from tests.support.ops import UPRIGHT

EXPECTED_SERVICES = {
    "interlock.v1.Guard",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


@pytest.mark.parametrize("method", ["check", "check_each"])
def test_check_on_a_guard_never_loaded_raises_at_once(method):
    guard = Guard(loaded([discrete_agent()]))
    with pytest.raises(NotLoaded, match=r"call guard.load\(\) first"):
        getattr(guard, method)([CheckInput("cartpole", UPRIGHT, np.int64(1))])
    guard.load()
    [d] = getattr(guard, method)([CheckInput("cartpole", UPRIGHT, np.int64(1))])
    assert d.errors == []
    guard.unload()
    with pytest.raises(NotLoaded):
        guard.check([CheckInput("cartpole", UPRIGHT, np.int64(1))])


def v1_reflection(channel: grpc.Channel, requests: list[bytes]) -> list[bytes]:
    """What a grpc.reflection.v1 client sends: its own method path, raw request bytes."""
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    return list(call(iter(requests), timeout=10))


def parsed(raw: bytes) -> alpha_pb2.ServerReflectionResponse:
    """A v1 response read with the v1alpha class: the two protos share every field number."""
    return alpha_pb2.ServerReflectionResponse.FromString(raw)


def test_reflection_v1_lists_and_describes_the_services(channel):
    # ServerReflectionRequest.list_services is field 7 (a string) in grpc/reflection/v1/reflection.proto.
    list_services = bytes([7 << 3 | 2, 0])
    [raw] = v1_reflection(channel, [list_services])
    resp = parsed(raw)
    names = {s.name for s in resp.list_services_response.service}
    assert names >= EXPECTED_SERVICES, names
    # file_containing_symbol (field 4): the v1 service itself can be described.
    symbol = b"grpc.reflection.v1.ServerReflection"
    [raw] = v1_reflection(channel, [bytes([4 << 3 | 2, len(symbol)]) + symbol])
    resp = parsed(raw)
    [blob] = resp.file_descriptor_response.file_descriptor_proto
    fdp = descriptor_pb2.FileDescriptorProto.FromString(blob)
    assert fdp.package == "grpc.reflection.v1" and fdp.service[0].name == "ServerReflection"
    symbol = b"interlock.v1.Guard"
    [raw] = v1_reflection(channel, [bytes([4 << 3 | 2, len(symbol)]) + symbol])
    [blob] = parsed(raw).file_descriptor_response.file_descriptor_proto
    assert descriptor_pb2.FileDescriptorProto.FromString(blob).package == "interlock.v1"


def test_reflection_v1alpha_still_answers(channel):
    refl = alpha_pb2_grpc.ServerReflectionStub(channel)
    [resp] = list(refl.ServerReflectionInfo(iter([alpha_pb2.ServerReflectionRequest(list_services="")])))
    assert {s.name for s in resp.list_services_response.service} >= EXPECTED_SERVICES
