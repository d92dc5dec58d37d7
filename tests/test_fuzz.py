"""Fuzzing a real server: malformed requests and random bytes never crash it and never get an unchecked ALLOW.

The server runs the CartPole example's agent (real ONNX Q and dynamics ensembles) and a
box-action agent, under ``fail_mode: closed`` and ``open``. Requests include
out-of-range discrete actions, zero-and-huge shapes and oversized ids, through Check,
CheckBatch and CheckStream. Every answer is either a clear client error
(INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED; never INTERNAL) or a decision; no
monitor, rule or fallback ever fails (``interlock_internal_errors_total`` stays 0); the
executed action is always inside the action space; and an ALLOW is accepted only when an
independent check here agrees that the request was well-formed, finite, in the action
space and within the agent's rules.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interlock.config import LoadedConfig, parse_config
from interlock.server.background import background_server
from interlock.tensors import DTYPE_OF
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.fixtures import box_agent
from tests.support.ops import health_status, req

CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


CLIENT_CODES = {c.value[0] for c in CLIENT_ERRORS}
CARTPOLE = Path(__file__).resolve().parents[1] / "examples" / "cartpole" / "interlock.yaml"
#: Shapes whose element count overflows int64 or numpy's size arithmetic (with or without a zero).
HUGE_SHAPES = [[0, 2**62, 2**62], [0, 2**63 - 1], [2**62, 2**62], [2**31, 2**31, 0, 2**31], [2**40]]
#: Discrete actions outside n = 2, from just past the end to the int64 extremes.
BAD_INDICES = [2, 3, 7, 255, 2**31, 2**62, 2**63 - 1, -1, -2, -(2**63)]
HUGE_IDS = ["g" * 100_000, "cartpole" + "x" * 5000, "arm-" + "1" * 70_000]


def fuzz_config(fail_mode: str) -> LoadedConfig:
    """The CartPole example's agent as shipped (models and all) beside a box agent, in ``fail_mode``."""
    data = yaml.safe_load(CARTPOLE.read_text())
    [cartpole] = data["agents"]
    cfg = {"agents": [{**cartpole, "fail_mode": fail_mode}, box_agent(fail_mode=fail_mode)]}
    return LoadedConfig(parse_config(cfg, str(CARTPOLE)), CARTPOLE.parent, "fuzz", str(CARTPOLE))


@pytest.fixture(scope="module", params=["closed", "open"])
def fuzz_server(request):
    with (
        background_server(fuzz_config(request.param)) as srv,
        grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch,
    ):
        yield srv, ch


def internal_errors(srv) -> float:
    """All of ``interlock_internal_errors_total`` (every agent and stage)."""
    return sum(
        s.value
        for m in srv.metrics.registry.collect()
        if m.name == "interlock_internal_errors"
        for s in m.samples
        if s.name == "interlock_internal_errors_total"
    )


def assert_no_internal_errors(srv) -> None:
    assert internal_errors(srv) == 0, "a monitor, rule or fallback failed"
    assert not srv.metrics.registry.get_sample_value(
        "interlock_requests_rejected_total", {"reason": "internal"}
    )


def decoded(t: pb.Tensor) -> np.ndarray | None:
    """The tensor as numpy, or None when it is malformed (Python ints: huge shapes do not overflow)."""
    dt = DTYPE_OF.get(t.dtype)
    shape = tuple(t.shape)
    if dt is None or any(d < 0 for d in shape) or len(shape) > 8:
        return None
    n = 1
    for d in shape:
        n *= d
    if len(t.data) != n * dt.itemsize or n > 1024:
        return None
    return np.frombuffer(t.data, dtype=dt).reshape(shape)


def allow_is_justified(r: pb.CheckRequest) -> bool:
    """Independent check that ALLOW is right for ``r`` under the test config."""
    if not (r.HasField("observation") and r.HasField("action")):
        return False
    obs, act = decoded(r.observation), decoded(r.action)
    if obs is None or act is None:
        return False
    if r.agent_id == "cartpole":
        if obs.shape != (4,) or obs.dtype.kind != "f" or act.dtype.kind not in "iu" or act.size != 1:
            return False
        o = obs.astype(np.float32)
        return bool(np.isfinite(o).all() and abs(float(o[2])) < 0.1 and 0 <= int(act.reshape(())) < 2)
    if fnmatch.fnmatchcase(r.agent_id, "arm-*"):
        if obs.shape != (3,) or obs.dtype.kind != "f" or act.shape != (2,) or act.dtype.kind != "f":
            return False
        o, a = obs.astype(np.float32), act.astype(np.float32)
        return bool(np.isfinite(o).all() and np.isfinite(a).all() and (np.abs(a) <= 1.0).all())
    return False


def executed_action_in_space(d: pb.Decision, agent_id: str) -> bool:
    """The action the agent is told to execute is inside its action space (empty only on HALT)."""
    a = decoded(d.action)
    if a is None:
        return False
    if a.size == 0:
        return d.verdict == pb.VERDICT_HALT
    if agent_id == "cartpole":
        return a.dtype.kind in "iu" and a.shape == () and 0 <= int(a) < 2
    if fnmatch.fnmatchcase(agent_id, "arm-*"):
        return a.shape == (2,) and bool(np.isfinite(a).all() and (np.abs(a) <= 1.0).all())
    return False


def check_decision(d: pb.Decision, r: pb.CheckRequest | None) -> None:
    """One answered decision is sound; ``r`` is the request (None when its bytes did not parse)."""
    assert d.verdict in (pb.VERDICT_ALLOW, pb.VERDICT_SUBSTITUTE, pb.VERDICT_HALT, pb.VERDICT_ESCALATE)
    if d.HasField("error"):  # a CheckStream message that could not be checked
        assert d.verdict == pb.VERDICT_HALT and d.error.code in CLIENT_CODES, d.error
        assert d.error.message and len(d.error.message) < 1000
        return
    assert r is not None
    if d.verdict == pb.VERDICT_ALLOW:
        assert allow_is_justified(r), f"ALLOW for a request that was not checked: {str(r)[:2000]}"
    assert executed_action_in_space(d, r.agent_id), (d, str(r)[:2000])


def check_outcome(call, request_for_allow) -> None:
    try:
        d = call()
    except grpc.RpcError as e:
        assert e.code() in CLIENT_ERRORS, (e.code(), e.details())
        assert e.details() and len(e.details()) < 1000
        return
    check_decision(d, request_for_allow())


floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, 0.05, -0.05, 0.5, 1.0, -1.0, 1e38, 3.5e38, 1e300, -1e300]),
)
dtypes = st.sampled_from([*DTYPE_OF, 0, 7, 99, -1])
shapes = st.one_of(
    st.sampled_from([[], [1], [2], [3], [4], [5], [0], [2, 2], [4, 1]]),
    st.lists(st.integers(-3, 6), max_size=10),
    st.sampled_from(HUGE_SHAPES),
)


@st.composite
def tensors(draw) -> pb.Tensor:
    code = draw(dtypes)
    shape = draw(shapes)
    dt = DTYPE_OF.get(code)
    n = 1
    for d in shape:
        n *= max(d, 0)
    if dt is not None and all(d >= 0 for d in shape) and n <= 4096 and draw(st.booleans()):
        values = draw(st.lists(floats, min_size=n, max_size=n)) if n <= 64 else [0.0] * n
        with np.errstate(all="ignore"):
            arr = np.asarray(values, dtype=np.float64)
            if dt.kind in "iub":
                arr = np.nan_to_num(arr, nan=0, posinf=0, neginf=0).clip(-1e6, 1e6)
            data = arr.astype(dt).tobytes()
    else:
        data = draw(st.binary(max_size=80))
    return pb.Tensor(dtype=max(code, 0), shape=shape, data=data)


@st.composite
def random_request(draw) -> pb.CheckRequest:
    r = pb.CheckRequest(
        agent_id=draw(
            st.sampled_from(["cartpole", "arm-1", "arm-", "ghost", "", "carTpole", *HUGE_IDS])
            | st.text(max_size=20)
        ),
        episode_id=draw(st.text(max_size=10)),
        step=draw(st.integers(-(2**63), 2**63 - 1)),
        labels=draw(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)),
    )
    if draw(st.integers(0, 9)):
        r.observation.CopyFrom(draw(tensors()))
    if draw(st.integers(0, 9)):
        r.action.CopyFrom(draw(tensors()))
    return r


small = st.one_of(st.floats(-0.3, 0.3), floats)


@st.composite
def near_valid_request(draw) -> pb.CheckRequest:
    """A well-formed request for a configured agent (values anywhere), sometimes with one thing broken."""
    if draw(st.booleans()):
        agent = "cartpole"
        obs = np.asarray(draw(st.lists(small, min_size=4, max_size=4)), np.float64)
        act: np.ndarray = np.int64(draw(st.integers(-3, 4) | st.sampled_from(BAD_INDICES)))
    else:
        agent = f"arm-{draw(st.integers(0, 99))}"
        obs = np.asarray(draw(st.lists(small, min_size=3, max_size=3)), np.float64)
        act = np.asarray(draw(st.lists(st.floats(-1.5, 1.5) | floats, min_size=2, max_size=2)), np.float64)
    with np.errstate(all="ignore"):
        r = req(obs=obs.astype(draw(st.sampled_from([np.float32, np.float64]))), action=act, agent=agent)
    mutation = draw(st.integers(0, 10))
    if mutation == 1:
        r.observation.data = r.observation.data[: draw(st.integers(0, len(r.observation.data)))]
    elif mutation == 2:
        r.action.dtype = draw(dtypes.filter(lambda c: c >= 0))
    elif mutation == 3:
        r.observation.shape[:] = draw(shapes)
    elif mutation == 4:
        r.agent_id = draw(st.text(max_size=12))
    elif mutation == 5:
        r.ClearField(draw(st.sampled_from(["observation", "action"])))
    elif mutation == 6:
        field = getattr(r, draw(st.sampled_from(["observation", "action"])))
        field.shape[:] = draw(st.sampled_from(HUGE_SHAPES))
        field.data = b""
    elif mutation == 7:
        r.agent_id = draw(st.sampled_from(HUGE_IDS))
    elif mutation == 8:
        r.episode_id = "e" * 50_000
    return r


requests = st.one_of(random_request(), near_valid_request(), near_valid_request())


@FUZZ
@given(r=requests)
def test_fuzzed_requests(fuzz_server, r):
    srv, ch = fuzz_server
    check_outcome(lambda: pb_grpc.GuardStub(ch).Check(r, timeout=10), lambda: r)
    assert_no_internal_errors(srv)


@FUZZ
@given(rs=st.lists(requests, min_size=1, max_size=6))
def test_fuzzed_batches(fuzz_server, rs):
    srv, ch = fuzz_server
    stub = pb_grpc.GuardStub(ch)
    try:
        out = stub.CheckBatch(pb.CheckBatchRequest(requests=rs), timeout=10).decisions
    except grpc.RpcError as e:
        assert e.code() in CLIENT_ERRORS, (e.code(), e.details())
        assert e.details() and len(e.details()) < 1000
        assert_no_internal_errors(srv)
        return
    assert len(out) == len(rs)
    for d, r in zip(out, rs, strict=True):
        assert not d.HasField("error")
        check_decision(d, r)
    assert_no_internal_errors(srv)


@FUZZ
@given(rs=st.lists(requests, min_size=1, max_size=6), garbage=st.lists(st.binary(max_size=40), max_size=2))
def test_fuzzed_streams(fuzz_server, rs, garbage):
    """CheckStream answers every message, in order; the bad ones with HALT and an error."""
    srv, ch = fuzz_server
    messages: list[bytes] = [r.SerializeToString() for r in rs] + garbage
    parsed: list[pb.CheckRequest | None] = [*rs]
    for g in garbage:
        try:
            parsed.append(pb.CheckRequest.FromString(g))
        except Exception:
            parsed.append(None)
    call = ch.stream_stream(
        "/interlock.v1.Guard/CheckStream",
        request_serializer=lambda b: b,
        response_deserializer=pb.Decision.FromString,
    )
    out = list(call(iter(messages), timeout=30))
    assert len(out) == len(messages)
    for d, r in zip(out, parsed, strict=True):
        check_decision(d, r)
    assert_no_internal_errors(srv)


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_on_the_wire(fuzz_server, data):
    _, ch = fuzz_server
    raw = ch.unary_unary(
        "/interlock.v1.Guard/Check",
        request_serializer=lambda b: b,
        response_deserializer=pb.Decision.FromString,
    )
    check_outcome(lambda: raw(data, timeout=10), lambda: pb.CheckRequest.FromString(data))


def test_server_survived_the_fuzzing(fuzz_server):
    srv, ch = fuzz_server
    assert health_status(ch) == 1  # SERVING
    assert pb_grpc.GuardStub(ch).Check(req()).verdict == pb.VERDICT_ALLOW
    assert_no_internal_errors(srv)


def test_values_that_overflow_the_declared_dtype_are_refused(fuzz_server):
    # Found by fuzzing: 1e300 is finite in float64 but Inf once converted to the agent's float32.
    _, ch = fuzz_server
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.GuardStub(ch).Check(req(obs=np.array([1e300, 0, 0, 0], np.float64)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NaN or Inf (or overflows float32) at flat index [0]" in err.value.details()
