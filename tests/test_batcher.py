"""Dynamic micro-batching: same answers as unbatched, per-request order and errors, isolation."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from interlock.batch import SignalBatch
from interlock.client import make_request
from interlock.engine import Guard
from interlock.errors import InvalidRequest, UnknownAgent
from interlock.monitors.base import Monitor
from interlock.server.background import background_server
from interlock.server.batcher import MicroBatcher
from interlock.server.service import GuardService
from interlock.tensors import to_numpy
from interlock.types import CheckInput
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.fixtures import box_agent, discrete_agent, loaded

BATCHING = {"max_batch": 8, "max_delay_ms": 20.0}


def _inputs(n: int, seed: int = 0) -> list[CheckInput]:
    """A mix of allowed, substituted and invalid actions for two agents."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        if i % 3 == 2:
            act = rng.uniform(-1.5, 1.5, 2).astype(np.float32)
            items.append(CheckInput("arm-1", rng.normal(size=3).astype(np.float32), act, step=i))
        else:
            obs = np.array([0, 0, rng.uniform(-0.2, 0.2), 0], np.float32)
            items.append(CheckInput("cartpole", obs, np.int64(rng.integers(0, 3)), f"ep{i}", i))
    return items


def _same(a, b) -> None:
    """Two decisions for the same request agree on everything but the decision id."""
    assert (a.verdict, a.rule, a.fallback, a.reasons, a.step) == (
        b.verdict,
        b.rule,
        b.fallback,
        b.reasons,
        b.step,
    )
    assert a.signals == b.signals
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_array_equal(a.observation, b.observation)


@pytest.fixture
def guard(tmp_path):
    return Guard(loaded([discrete_agent(), box_agent()], base_dir=tmp_path)).load()


async def test_batched_answers_equal_unbatched_and_keep_order(guard):
    items = _inputs(40)
    unbatched = [guard.check([it])[0] for it in items]
    batcher = MicroBatcher(lambda: guard, max_batch=16, max_delay_ms=50)
    batched = await asyncio.gather(*(batcher.submit(it) for it in items))
    for a, b in zip(batched, unbatched, strict=True):
        _same(a, b)
    assert {d.verdict.name for d in batched} == {"ALLOW", "SUBSTITUTE"}
    assert batcher.requests == 40 and batcher.batches == 3  # 16 + 16 + 8 (cut when nobody else joined)


async def test_a_lone_closed_loop_client_stops_waiting(guard):
    """One agent sends its next request only after the answer: after two empty waits, no more waiting."""
    batcher = MicroBatcher(lambda: guard, max_batch=16, max_delay_ms=20)
    for it in _inputs(12):
        _same(await batcher.submit(it), guard.check([it])[0])
    assert batcher.batches == 12 and batcher.waited == 2


async def test_a_lone_agents_request_decided_at_once_keeps_errors_and_failures(guard):
    """After two empty waits a lone agent's request is decided in its own call: a malformed one still
    gets its own error, and an unexpected engine error is retried once and then reaches the caller
    (the servicer answers INTERNAL), exactly as a batch of one cut by the event loop."""
    batcher = MicroBatcher(lambda: guard, max_batch=16, max_delay_ms=20)
    items = _inputs(5)
    for it in items[:3]:  # the first is cut by the event loop (no history yet), the next two wait
        await batcher.submit(it)
    assert batcher.waited == 2 and batcher._lonely == 2
    _same(await batcher.submit(items[4]), guard.check([items[4]])[0])
    with pytest.raises(InvalidRequest, match="observation"):
        await batcher.submit(CheckInput("cartpole", np.zeros(5, np.float32), np.int64(0)))
    calls = []
    real = guard.check_each

    def broken(batch, times=None):
        calls.append(len(batch))
        raise RuntimeError("engine bug")

    guard.check_each = broken
    try:
        with pytest.raises(RuntimeError, match="engine bug"):
            await batcher.submit(items[3])
    finally:
        guard.check_each = real
    assert calls == [1, 1]  # decided, then retried alone, as _flush does
    assert batcher.batches == 6 and batcher.waited == 2


async def test_a_bad_request_fails_alone(guard):
    items = _inputs(6)
    bad_shape = CheckInput("cartpole", np.zeros(5, np.float32), np.int64(0))
    unknown = CheckInput("nobody", np.zeros(4, np.float32), np.int64(0))
    batcher = MicroBatcher(lambda: guard, max_batch=64, max_delay_ms=20)
    mixed = [items[0], bad_shape, items[1], unknown, *items[2:]]
    out = await asyncio.gather(*(batcher.submit(it) for it in mixed), return_exceptions=True)
    assert batcher.batches == 1
    assert isinstance(out[1], InvalidRequest) and "observation" in out[1].message
    assert isinstance(out[3], UnknownAgent) and "nobody" in out[3].message
    good = [o for i, o in enumerate(out) if i not in (1, 3)]
    for a, it in zip(good, items, strict=True):
        _same(a, guard.check([it])[0])


class _Fragile(Monitor):
    """A monitor that raises for the whole batch when any observation holds 666 (a buggy plugin)."""

    @property
    def signal_names(self) -> list[str]:
        return ["ok"]

    def check(self, batch):
        if (batch.observations == 666).any():
            raise RuntimeError("cannot handle 666")
        return {"ok": SignalBatch.above(np.zeros(len(batch)), 0.5)}


async def test_a_monitor_failing_on_one_row_fails_only_that_row(guard):
    rt = guard.agent("cartpole")
    rt.monitors.append(_Fragile("fragile", rt.spaces, guard.runtime))
    items = _inputs(9)[:6]
    poison = CheckInput("cartpole", np.array([666, 0, 0, 0], np.float32), np.int64(1))
    batcher = MicroBatcher(lambda: guard, max_batch=64, max_delay_ms=20)
    out = await asyncio.gather(*(batcher.submit(it) for it in [*items, poison]))
    assert batcher.batches == 1
    assert out[-1].errors == ["monitor:fragile"] and out[-1].verdict.name == "HALT"  # no fail_safe: HALT
    for a, it in zip(out[:-1], items, strict=True):
        assert not a.errors
        _same(a, guard.check([it])[0])


async def test_service_batches_concurrent_checks(guard):
    from interlock.config import BatchingConfig

    service = GuardService(guard, batching=BatchingConfig(**BATCHING))
    items = _inputs(8)
    out = await asyncio.gather(*(service.check([it]) for it in items))
    assert service.batcher is not None and service.batcher.batches == 1
    for [a], it in zip(out, items, strict=True):
        _same(a, guard.check([it])[0])
    assert GuardService(guard).batcher is None  # max_delay_ms 0 (the default): off


def test_batching_over_grpc_check_and_stream(tmp_path):
    cfg = loaded([discrete_agent(), box_agent()], base_dir=tmp_path, server={"batching": BATCHING})
    reference = Guard(loaded([discrete_agent(), box_agent()], base_dir=tmp_path)).load()
    items = _inputs(12)
    reqs = [make_request(it.agent_id, it.observation, it.action, it.episode_id, it.step) for it in items]
    bad = make_request("cartpole", np.zeros(2, np.float32), 0)

    async def drive(port: int):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.GuardStub(ch)
            unary = await asyncio.gather(*(stub.Check(r) for r in [*reqs, bad]), return_exceptions=True)

            async def stream(rs):
                return [d async for d in stub.CheckStream(iter(rs))]

            streams = await asyncio.gather(stream(reqs[:6]), stream(reqs[6:]))
            return unary, streams[0] + streams[1]

    with background_server(cfg) as srv:
        unary, streamed = asyncio.run(drive(srv.port))
        assert srv.service.batcher.batches < srv.service.batcher.requests  # some calls shared a batch
    err = unary[-1]
    assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    for got in (unary[:-1], streamed):
        for d, it in zip(got, items, strict=True):
            want = reference.check([it])[0]
            assert isinstance(d, pb.Decision) and d.verdict == int(want.verdict) and d.rule == want.rule
            np.testing.assert_array_equal(to_numpy(d.action), want.action)
