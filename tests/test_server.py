"""The Guard service over a real gRPC server on loopback."""

import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from interlock.client import make_request
from interlock.tensors import from_numpy, to_numpy
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc

UPRIGHT = np.array([0.0, 0.0, 0.01, 0.0], np.float32)
TILTED = np.array([0.0, 0.0, 0.15, 0.0], np.float32)


def req(obs=UPRIGHT, action=1, agent="cartpole", **kw):
    return make_request(agent, obs, action, **kw)


def test_check_allow_and_substitute(stub):
    d = stub.Check(req(episode_id="e1", step=3))
    assert d.verdict == pb.VERDICT_ALLOW and to_numpy(d.action) == 1
    assert d.config_version == "test-1" and d.decision_id
    assert {s.name for s in d.signals} == {
        "action_space.invalid",
        "action_space.distance",
        "limits.pole_upright",
    }
    d = stub.Check(req(TILTED))
    assert d.verdict == pb.VERDICT_SUBSTITUTE and to_numpy(d.action) == 0
    assert d.fallback == "noop" and d.rule == "tilted" and d.reasons


def test_check_batch_answers_in_request_order(stub):
    batch = pb.CheckBatchRequest(
        requests=[
            req(TILTED),
            req(),
            req(agent="arm-7", obs=np.zeros(3, np.float32), action=np.array([4.0, 0.0], np.float32)),
            req(action=np.int64(9)),
        ]
    )
    out = stub.CheckBatch(batch).decisions
    assert [d.verdict for d in out] == [
        pb.VERDICT_SUBSTITUTE,
        pb.VERDICT_ALLOW,
        pb.VERDICT_SUBSTITUTE,
        pb.VERDICT_SUBSTITUTE,
    ]
    np.testing.assert_allclose(to_numpy(out[2].action), [1.0, 0.0])
    assert [d.rule for d in out] == ["tilted", "", "out_of_bounds", "invalid"]


def test_check_stream_one_decision_per_request(stub):
    obs = [UPRIGHT, TILTED] * 10
    out = list(stub.CheckStream(iter(req(o, step=i) for i, o in enumerate(obs))))
    assert [d.verdict for d in out] == [pb.VERDICT_ALLOW, pb.VERDICT_SUBSTITUTE] * 10


BAD = [
    (
        req(obs=np.zeros(3, np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"observation has shape \[3\]; expected \[4\]",
    ),
    (
        req(obs=np.zeros(4, np.float64).astype(np.int32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dtype int32; expected float32",
    ),
    (req(agent="ghost"), grpc.StatusCode.NOT_FOUND, "agent_id 'ghost' matches no agent"),
    (req(obs=np.array([np.nan, 0, 0, 0], np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "NaN or Inf"),
    (req(obs=np.zeros(0, np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "observation is empty"),
    (req(agent=""), grpc.StatusCode.INVALID_ARGUMENT, "agent_id is empty"),
    (
        pb.CheckRequest(agent_id="cartpole", action=from_numpy(np.int64(0))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "observation is missing",
    ),
]


@pytest.mark.parametrize(("request_", "code", "message"), BAD)
def test_bad_input_gets_clear_status_and_server_keeps_serving(stub, request_, code, message):
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(request_)
    assert err.value.code() == code
    assert pytest.importorskip("re").search(message, err.value.details()), err.value.details()
    assert stub.Check(req()).verdict == pb.VERDICT_ALLOW


def test_byte_length_mismatch(stub):
    r = req()
    r.observation.data = r.observation.data[:-2]
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(r)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "observation.data has 14 bytes, but shape [4] of float32 needs 16" in err.value.details()


def test_oversized_messages_are_refused(stub, server):
    limit = server.loaded.config.server.max_message_bytes
    big = req(labels={"blob": "x" * (limit + 10)})
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(big)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the limit is" in err.value.details()
    assert stub.Check(req()).verdict == pb.VERDICT_ALLOW


def test_bad_message_in_batch_and_stream_is_named(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.CheckBatch(pb.CheckBatchRequest(requests=[req(), req(obs=np.zeros(5, np.float32))]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("requests[1].observation has shape [5]")
    with pytest.raises(grpc.RpcError) as err:
        stub.CheckBatch(pb.CheckBatchRequest())
    assert "requests is empty" in err.value.details()
    # CheckStream answers a bad message with HALT and keeps going (issue 10, item 5).
    out = list(stub.CheckStream(iter([req(), req(), req(agent="ghost"), req()])))
    assert [d.verdict for d in out] == [pb.VERDICT_ALLOW] * 2 + [pb.VERDICT_HALT, pb.VERDICT_ALLOW]
    assert out[2].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert out[2].error.message.startswith("stream message 2: agent_id 'ghost'")


def test_garbage_bytes_on_the_wire(channel, stub):
    raw = channel.unary_unary("/interlock.v1.Guard/Check")  # no serializer: send bytes as they are
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff\xff\x0f garbage")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid interlock.v1.CheckRequest" in err.value.details()
    assert stub.Check(req()).verdict == pb.VERDICT_ALLOW


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "interlock.v1.Guard"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    [resp] = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {"interlock.v1.Guard", "grpc.health.v1.Health"} <= names


def test_metrics_are_exposed(metrics_server):
    server = metrics_server
    stub = pb_grpc.GuardStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    stub.Check(req())
    stub.Check(req(TILTED))
    with pytest.raises(grpc.RpcError):
        stub.Check(req(agent="ghost"))
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.bound_metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert 'interlock_decisions_total{agent="cartpole",rule="",verdict="allow"} 1.0' in text
    assert 'interlock_decisions_total{agent="cartpole",rule="tilted",verdict="substitute"} 1.0' in text
    assert 'interlock_requests_rejected_total{reason="unknown_agent"} 1.0' in text
    assert 'interlock_config_info{version="test-1"} 1.0' in text
    assert "interlock_decision_duration_seconds_bucket" in text


def test_internal_errors_fail_closed_and_are_counted(tmp_path):
    from interlock.server.background import background_server
    from tests.support.fixtures import discrete_agent, linear_model, loaded

    linear_model(tmp_path / "broken.onnx", np.ones((3, 2), np.float32))  # wrong input size: raises per call
    agent = discrete_agent(
        fallbacks={"noop": {"kind": "onnx_policy", "model": "broken.onnx", "output": "logits"}}
    )
    with background_server(loaded([agent], base_dir=tmp_path), metrics_port=0) as srv:
        stub = pb_grpc.GuardStub(grpc.insecure_channel(f"127.0.0.1:{srv.port}"))
        d = stub.Check(req(TILTED))
        assert d.verdict == pb.VERDICT_HALT and len(d.action.data) == 0
        assert stub.Check(req()).verdict == pb.VERDICT_ALLOW  # untouched rows still decided
        url = f"http://127.0.0.1:{srv.bound_metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'interlock_internal_errors_total{agent="cartpole",stage="fallback:noop"} 1.0' in text
    assert 'interlock_decisions_total{agent="cartpole",rule="tilted",verdict="halt"} 1.0' in text
