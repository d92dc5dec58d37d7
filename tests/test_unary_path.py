"""The lean unary Check path: each shortcut gives exactly what the general code gives.

* ``to_numpy`` remembers tensor layouts that passed its checks; arrays and errors are unchanged,
  including for invalid tensors sent after a valid one of the same dtype and shape;
* interceptors keep their wrapped handlers (``HandlerCache``): one wrap per method, a new wrap
  for a different handler or key;
* ``Metrics.record`` of one decision counts what the batch path counts (real CartPole decisions,
  ALLOW and SUBSTITUTE, failed stages, shadow mode);
* the unary ``handle_errors`` maps exceptions to the statuses the layer maps them to;
* ``interlock bench perf --config``: requests from real CartPole-v1 states, and a one-round
  measurement on a real server that is well formed (no timing asserted).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from interlock.config import load_config
from interlock.engine import Guard
from interlock.errors import InvalidRequest, UnknownAgent
from interlock.server.convert import request_to_input
from interlock.server.errors import handle_errors
from interlock.server.layers import HandlerCache
from interlock.server.metrics import Metrics
from interlock.tensors import _checked_to_numpy, to_numpy
from interlock.types import Verdict
from interlock.v1 import interlock_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
CARTPOLE = ROOT / "examples" / "cartpole" / "interlock.yaml"


def _tensor(dtype: int, shape: list[int], data: bytes) -> pb.Tensor:
    return pb.Tensor(dtype=dtype, shape=shape, data=data)


def _outcome(fn, tensor: pb.Tensor):
    try:
        a = fn(tensor, "observation")
    except InvalidRequest as e:
        return ("error", e.message, e.reason)
    return ("array", a.dtype.str, a.shape, a.tobytes(), a.flags.writeable)


F4 = pb.DATA_TYPE_FLOAT32
TENSORS = [
    _tensor(F4, [4], np.arange(4, dtype="<f4").tobytes()),
    _tensor(F4, [4], np.ones(4, dtype="<f4").tobytes()),  # same layout, other values
    _tensor(F4, [4], b"\x00" * 12),  # same dtype and shape, wrong byte length
    _tensor(F4, [2, 2], np.arange(4, dtype="<f4").tobytes()),  # same bytes, other shape
    _tensor(pb.DATA_TYPE_FLOAT64, [4], np.arange(4, dtype="<f4").tobytes()),  # other dtype: 16 bytes short
    _tensor(pb.DATA_TYPE_UNSPECIFIED, [4], np.arange(4, dtype="<f4").tobytes()),
    _tensor(F4, [-1], b""),
    _tensor(F4, [1] * 9, b"\x00" * 4),
    _tensor(pb.DATA_TYPE_INT64, [], np.int64(1).tobytes()),
    _tensor(pb.DATA_TYPE_INT64, [], b"\x00" * 4),
    _tensor(F4, [0, 3], b""),
]


def test_to_numpy_with_remembered_layouts_equals_the_checked_decode():
    for _ in range(2):  # the second pass hits the remembered layouts
        for t in TENSORS:
            assert _outcome(to_numpy, t) == _outcome(_checked_to_numpy, t), t
    bad = _outcome(to_numpy, TENSORS[2])
    assert bad[0] == "error" and "has 12 bytes" in bad[1] and bad[2] == "byte_length"


def test_request_to_input_decodes_real_requests_as_before():
    from interlock.bench.perf.unary import config_payloads

    for raw in config_payloads(CARTPOLE, "cartpole", "CartPole-v1", n=8):
        req = pb.CheckRequest.FromString(raw)
        item = request_to_input(req)
        assert item.observation.dtype == np.float32 and item.observation.shape == (4,)
        np.testing.assert_array_equal(item.observation, _checked_to_numpy(req.observation, "observation"))
        assert item.action.shape == () and int(item.action) in (0, 1)
    wrong = pb.CheckRequest.FromString(raw)
    wrong.observation.data = wrong.observation.data[:8]  # a cached layout's dtype and shape, 8 bytes
    with pytest.raises(InvalidRequest, match="observation.data has 8 bytes"):
        request_to_input(wrong)


def test_handler_cache_wraps_each_handler_once_per_key():
    cache = HandlerCache(max_entries=3)
    calls: list[object] = []

    async def behavior(request, context):
        return request

    def make(tag):
        def wrap():
            calls.append(tag)
            return grpc.unary_unary_rpc_method_handler(behavior)

        return wrap

    h1 = grpc.unary_unary_rpc_method_handler(behavior)
    h2 = grpc.unary_unary_rpc_method_handler(behavior)
    w1 = cache.get(h1, None, make("h1"))
    assert cache.get(h1, None, make("h1 again")) is w1
    w1b = cache.get(h1, "agent", make("h1 agent"))
    w2 = cache.get(h2, None, make("h2"))
    assert w1b is not w1 and w2 is not w1
    assert calls == ["h1", "h1 agent", "h2"]
    cache.get(grpc.unary_unary_rpc_method_handler(behavior), None, make("h3"))  # full: cleared, not grown
    assert len(cache._wrapped) == 1
    assert cache.get(h1, None, make("h1 rewrapped")) is not w1 and calls[-1] == "h1 rewrapped"


def _samples(metrics: Metrics) -> dict:
    out = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            counted = (
                "interlock_decisions",
                "interlock_internal",
                "interlock_shadow",
                "interlock_decision_dur",
            )
            if s.name.startswith(counted) and not s.name.endswith("_created"):
                # Sums of float latencies differ in the last bits with the order of additions.
                out[(s.name, tuple(sorted(s.labels.items())))] = round(s.value, 9)
    return out


@pytest.mark.parametrize("shadow", [False, True])
def test_metrics_of_one_decision_count_as_the_batch_path(shadow):
    from interlock.bench.perf.unary import config_payloads

    loaded = load_config(CARTPOLE)
    if shadow:  # the config models are frozen: a copy of the agent with shadow mode on
        loaded.config.agents[0] = loaded.config.agents[0].model_copy(update={"shadow": True})
    guard = Guard(loaded).load()
    try:
        items = [
            request_to_input(pb.CheckRequest.FromString(r))
            for r in config_payloads(CARTPOLE, "cartpole", "CartPole-v1", n=32)
        ]
        decisions = guard.check(items)
    finally:
        guard.unload()
    decisions[0].errors = ["monitor:q_doubt"]  # a failed stage is counted too
    verdicts = {d.verdict for d in decisions}
    if shadow:
        assert verdicts == {Verdict.ALLOW} and any(d.shadow_verdict for d in decisions)
    else:
        assert {Verdict.ALLOW, Verdict.SUBSTITUTE} <= verdicts
    one, batch = Metrics(), Metrics()
    for d in decisions:
        one.record([d], ["cartpole"], 0.002)
    batch.record(decisions, ["cartpole"] * len(decisions), 0.002)
    assert _samples(one) == _samples(batch)
    assert _samples(one)[("interlock_decision_duration_seconds_count", ())] == len(decisions)


class _Context:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code, message):
        self.aborted = (code, message)
        raise grpc.aio.AbortError()


class _Servicer:
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc
        self.metrics = Metrics()

    @handle_errors
    async def Check(self, request, context):
        if self.exc is not None:
            raise self.exc
        return request


@pytest.mark.parametrize(
    ("exc", "code", "internal"),
    [
        (None, None, 0),
        (InvalidRequest("observation is missing"), grpc.StatusCode.INVALID_ARGUMENT, 0),
        (UnknownAgent("agent_id 'x' is not configured"), grpc.StatusCode.NOT_FOUND, 0),
        (RuntimeError("bug"), grpc.StatusCode.INTERNAL, 1),
    ],
)
def test_unary_handle_errors_maps_exceptions_to_statuses(exc, code, internal):
    servicer, ctx = _Servicer(exc), _Context()
    if exc is None:
        assert asyncio.run(servicer.Check("req", ctx)) == "req" and ctx.aborted is None
        return
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(servicer.Check("req", ctx))
    assert ctx.aborted is not None and ctx.aborted[0] == code
    if internal:
        assert "the action was not checked" in ctx.aborted[1]
    else:
        assert ctx.aborted[1] == exc.message  # type: ignore[union-attr]
    assert servicer.metrics.rejected.labels(reason="internal")._value.get() == internal


def test_unary_handle_errors_lets_cancellation_through():
    servicer, ctx = _Servicer(asyncio.CancelledError()), _Context()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(servicer.Check("req", ctx))
    assert ctx.aborted is None


def test_config_payloads_are_real_cartpole_states_and_fit_the_agent():
    from interlock.bench.perf.unary import config_payloads

    env = config_payloads(CARTPOLE, "cartpole", "CartPole-v1", n=16, seed=3)
    assert env == config_payloads(CARTPOLE, "cartpole", "CartPole-v1", n=16, seed=3)  # seeded
    obs = np.stack([to_numpy(pb.CheckRequest.FromString(r).observation) for r in env])
    assert obs.shape == (16, 4) and np.all(np.abs(obs[:, 2]) < 0.2095)  # CartPole's own angle limit
    drawn = config_payloads(CARTPOLE, "cartpole", None, n=4)
    assert all(pb.CheckRequest.FromString(r).agent_id == "cartpole" for r in drawn)
    with pytest.raises(ValueError, match="no agent matching 'lander'"):
        config_payloads(CARTPOLE, "lander", None)
    with pytest.raises(ValueError, match="expects \\[4\\]"):
        config_payloads(CARTPOLE, "cartpole", "MountainCar-v0")


def test_bench_perf_config_flags():
    from interlock.cli import build_parser, main

    args = build_parser().parse_args(
        ["bench", "perf", "--quick", "--config", str(CARTPOLE), "--agent", "cartpole", "--env", "CartPole-v1"]
    )
    assert args.config == str(CARTPOLE) and args.agent == "cartpole" and args.env == "CartPole-v1"
    assert main(["bench", "perf", "--quick", "--config", str(CARTPOLE)]) == 2  # --agent missing
    assert main(["bench", "perf", "--quick", "--agent", "cartpole"]) == 2  # --config missing


@pytest.mark.slow
def test_measure_config_on_a_real_server_is_well_formed():
    from interlock.bench.perf import run, unary
    from interlock.bench.perf.loadgen import LoadGenerator

    with LoadGenerator(1) as gen:
        res = unary.measure_config(
            CARTPOLE, "cartpole", "CartPole-v1", gen, rounds=2, duration=0.2, warmup=0.1
        )
    for name in ("echo", "check"):
        s = res["series"][name]
        assert len(s["p50_us"]) == 2 and all(p > 0 for p in s["p50_us"]) and s["errors"] == 0
    assert res["check_p50_over_transport_floor"] == res["check_p50_us"] / res["transport_floor_p50_us"]
    assert res["verdicts_in_process"].get("ALLOW", 0) > res["requests"] // 2
    # The summary reports it as its own key, with its target.
    summary_in = {"config_unary": res}
    key, (op, target) = run.CONFIG_TARGET
    assert key == "check_p50_over_transport_floor_config" and (op, target) == ("<=", 1.5)
    assert summary_in["config_unary"]["check_p50_over_transport_floor"] > 0
