"""Issue 10, items 3-5: absurd shapes, oversized ids and bad stream messages, on the shipped examples.

A real server on loopback runs ``examples/cartpole/interlock.yaml`` and
``examples/escalation/interlock.yaml`` (its store in a temporary folder).
"""

from __future__ import annotations

import os
import re

import grpc
import numpy as np
import pytest

from interlock.server.background import background_server
from interlock.tensors import to_numpy
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.ops import metric_value, req
from tests.test_invalid_actions import example

#: agent id -> a valid observation (ALLOWed with action 1; the escalation agent escalates above 0.5).
AGENTS = {"cartpole": np.array([0.0, 0.0, 0.01, 0.0], np.float32), "escalation-demo": np.zeros(2, np.float32)}
ZERO_AND_HUGE = [[0, 2**62, 2**62], [0, 2**63 - 1], [2**62, 2**62], [2**31, 2**31, 0, 2**31]]
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module", params=["cartpole", "escalation"])
def served(request, tmp_path_factory):
    """(server, stub, agent_id) for one example."""
    name = request.param
    old = os.environ.get("INTERLOCK_OPERATOR_TOKEN")
    os.environ["INTERLOCK_OPERATOR_TOKEN"] = "test-operator-token-0123456789"
    try:
        base = tmp_path_factory.mktemp(name) if name == "escalation" else None
        with (
            background_server(example(name, base_dir=base)) as srv,
            grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch,
        ):
            yield srv, pb_grpc.GuardStub(ch), "cartpole" if name == "cartpole" else "escalation-demo"
    finally:
        if old is None:
            os.environ.pop("INTERLOCK_OPERATOR_TOKEN", None)
        else:
            os.environ["INTERLOCK_OPERATOR_TOKEN"] = old


def valid(agent: str, **kw) -> pb.CheckRequest:
    return req(AGENTS[agent], action=np.int64(1), agent=agent, **kw)


def with_shape(agent: str, field: str, shape: list[int]) -> pb.CheckRequest:
    r = valid(agent)
    getattr(r, field).shape[:] = shape
    getattr(r, field).data = b""
    return r


def assert_short(message: str) -> None:
    assert len(message) < 300, message
    assert not re.search(r"\d{21}", message), message  # no 76-digit products of absurd shapes


@pytest.mark.parametrize("shape", ZERO_AND_HUGE, ids=str)
@pytest.mark.parametrize("field", ["observation", "action"])
def test_zero_and_huge_shapes_are_invalid_argument_naming_the_field(served, field, shape):
    srv, stub, agent = served
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(with_shape(agent, field, shape))
    assert err.value.code() == INVALID, err.value.details()
    assert err.value.details().startswith(f"{field}."), err.value.details()
    assert_short(err.value.details())
    with pytest.raises(grpc.RpcError) as err:
        stub.CheckBatch(pb.CheckBatchRequest(requests=[valid(agent), with_shape(agent, field, shape)]))
    assert err.value.code() == INVALID
    assert err.value.details().startswith(f"requests[1].{field}."), err.value.details()
    assert not metric_value(srv, "interlock_requests_rejected_total", reason="internal")


def test_a_huge_unknown_agent_id_is_not_found_with_a_short_message(served):
    _, stub, agent = served
    ghost = "g" * 100_000
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(req(AGENTS[agent], action=np.int64(1), agent=ghost))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
    assert err.value.details().startswith(f"agent_id '{'g' * 64}...' matches no agent")
    assert_short(err.value.details())
    with pytest.raises(grpc.RpcError) as err:
        stub.CheckBatch(pb.CheckBatchRequest(requests=[valid(agent), req(AGENTS[agent], agent=ghost)]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert_short(err.value.details())
    [d] = list(stub.CheckStream(iter([req(AGENTS[agent], agent=ghost)])))
    assert d.verdict == pb.VERDICT_HALT and d.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert_short(d.error.message)


def test_a_bad_stream_message_gets_halt_and_the_stream_goes_on(served):
    srv, _, agent = served
    nan_obs = AGENTS[agent].copy()
    nan_obs[0] = np.nan
    messages = [
        valid(agent, step=0).SerializeToString(),
        b"\xff\xff\xff not a CheckRequest",
        req(np.zeros(7, np.float32), agent=agent).SerializeToString(),  # wrong shape
        req(AGENTS[agent], agent="ghost").SerializeToString(),
        with_shape(agent, "observation", [0, 2**62, 2**62]).SerializeToString(),
        req(nan_obs, agent=agent).SerializeToString(),
        valid(agent, step=6).SerializeToString(),
    ]
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    with channel:
        call = channel.stream_stream(
            "/interlock.v1.Guard/CheckStream",
            request_serializer=lambda b: b,
            response_deserializer=pb.Decision.FromString,
        )
        out = list(call(iter(messages), timeout=30))
    assert len(out) == len(messages)
    assert [d.verdict for d in out] == [pb.VERDICT_ALLOW] + [pb.VERDICT_HALT] * 5 + [pb.VERDICT_ALLOW]
    assert not out[0].HasField("error") and not out[-1].HasField("error")
    codes = [d.error.code for d in out[1:6]]
    assert codes == [INVALID.value[0]] * 2 + [grpc.StatusCode.NOT_FOUND.value[0]] + [INVALID.value[0]] * 2
    for i, d in enumerate(out[1:6], start=1):
        assert d.error.message.startswith(f"stream message {i}: "), d.error.message
        assert list(d.reasons) == [d.error.message]
        assert to_numpy(d.action).size == 0 and d.fallback == "" and d.config_version == "test"
    assert "observation has shape [7]" in out[2].error.message
    assert (
        "observation.shape [0, 4611686018427387904, 4611686018427387904] is too large" in out[4].error.message
    )
    assert "NaN or Inf" in out[5].error.message
    assert not metric_value(srv, "interlock_requests_rejected_total", reason="internal")
