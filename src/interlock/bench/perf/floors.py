"""In-process reference points: the bare ONNX ensemble call (the compute floor) and the engine alone."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import numpy as np

from interlock.bench.perf.scenario import Scenario


def _time_per_call(fn: Callable[[], object], min_seconds: float, min_calls: int = 5) -> float:
    """Best-of-3 mean seconds per call, each round at least ``min_seconds`` long."""
    fn()
    best = float("inf")
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds and calls >= min_calls:
                break
        best = min(best, elapsed / calls)
    return best


def _batch(scenario: Scenario, size: int) -> np.ndarray:
    idx = np.arange(size) % len(scenario.observations)
    return np.ascontiguousarray(scenario.observations[idx])


def ensemble_session(scenario: Scenario):
    """The fused ensemble in a session with the server's settings (1 intra-op thread, no spinning)."""
    from interlock.config import load_config
    from interlock.runtime import ModelRuntime

    return ModelRuntime.for_config(load_config(scenario.config_path)).session(scenario.ensemble_path)


def floor_point(session, scenario: Scenario, batch: int, min_seconds: float) -> dict:
    """The bare ensemble call on ``batch`` observations: time per call and decisions per second."""
    feed = {"obs": _batch(scenario, batch)}
    sec = _time_per_call(lambda: session.run(["q"], feed), min_seconds)
    return {"batch": batch, "us_per_call": sec * 1e6, "decisions_per_second": batch / sec}


def compute_floor(scenario: Scenario, batch_sizes: list[int], min_seconds: float) -> list[dict]:
    """:func:`floor_point` for every batch size."""
    session = ensemble_session(scenario)
    return [floor_point(session, scenario, b, min_seconds) for b in batch_sizes]


def engine_in_process(scenario: Scenario, batch_sizes: list[int], min_seconds: float) -> list[dict]:
    """``Guard.check`` in-process (monitors, rules, fallbacks; no gRPC, no protobuf)."""
    from interlock.config import load_config
    from interlock.engine import Guard

    guard = Guard(load_config(scenario.config_path)).load()
    inputs = scenario.inputs()
    out = []
    for b in batch_sizes:
        items = [inputs[i % len(inputs)] for i in range(b)]
        sec = _time_per_call(partial(guard.check, items), min_seconds)
        out.append({"batch": b, "us_per_call": sec * 1e6, "decisions_per_second": b / sec})
    guard.unload()
    return out


class _TimedSession:
    """An onnxruntime session whose ``run`` calls add their wall time to a shared total."""

    def __init__(self, session, clock: list[float]) -> None:
        self._session = session
        self._clock = clock

    def __getattr__(self, name: str):
        return getattr(self._session, name)

    def run(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._session.run(*args, **kwargs)
        finally:
            self._clock[0] += time.perf_counter() - start
            self._clock[1] += 1


def timed_guard(scenario: Scenario):
    """A loaded Guard of the scenario whose every ONNX ``session.run`` is timed.

    Returns ``(guard, clock)``: ``clock[0]`` seconds spent in ``session.run`` so far, ``clock[1]`` calls.
    """
    from interlock.config import load_config
    from interlock.engine import Guard
    from interlock.runtime import ModelRuntime

    clock = [0.0, 0]

    class TimedRuntime(ModelRuntime):
        def session(self, path, what: str = "model"):
            return _TimedSession(super().session(path, what), clock)

    loaded = load_config(scenario.config_path)
    return Guard(loaded, runtime=TimedRuntime.for_config(loaded)).load(), clock


def onnx_floor_point(guard, clock: list, scenario: Scenario, batch: int, min_seconds: float) -> dict:
    """The compute floor of the whole config for ``batch`` rows: every ONNX ``session.run`` its
    monitors and fallbacks make when the engine decides the batch (in process, columnar path).

    Returns the ONNX time per batch, the calls it took, the engine's whole time per batch
    (``Guard.check_columns`` in process, no gRPC) and both as decisions per second; the best of
    three rounds (least disturbed by other load).
    """
    idx = np.arange(batch) % len(scenario.observations)
    obs = np.ascontiguousarray(scenario.observations[idx])
    acts = np.ascontiguousarray(scenario.actions[idx])
    from interlock.bench.perf.scenario import AGENT_ID

    def once():
        return guard.check_columns(AGENT_ID, obs, acts)

    once()
    best: tuple[float, float, float] | None = None
    for _ in range(3):
        clock[0], clock[1] = 0.0, 0
        calls, start = 0, time.perf_counter()
        while True:
            once()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds and calls >= 3:
                break
        point = (clock[0] / calls, elapsed / calls, clock[1] / calls)
        if best is None or point[0] < best[0]:
            best = point
    onnx_s, engine_s, runs = best  # type: ignore[misc]
    return {
        "batch": batch,
        "onnx_us_per_batch": onnx_s * 1e6,
        "onnx_runs_per_batch": runs,
        "decisions_per_second": batch / onnx_s,
        "engine_us_per_batch": engine_s * 1e6,
        "engine_decisions_per_second": batch / engine_s,
        "engine_over_onnx": engine_s / onnx_s,
    }


def onnx_floor(scenario: Scenario, batch_sizes: list[int], min_seconds: float) -> list[dict]:
    """:func:`onnx_floor_point` for every batch size."""
    guard, clock = timed_guard(scenario)
    try:
        return [onnx_floor_point(guard, clock, scenario, b, min_seconds) for b in batch_sizes]
    finally:
        guard.unload()


def onnxruntime_settings(scenario: Scenario, batch_sizes: list[int], min_seconds: float) -> list[dict]:
    """The bare ensemble call under intra-op threads x spinning (the server uses 1 thread, no spinning)."""
    import onnxruntime as ort

    out = []
    for threads in (1, 2):
        for spin in (False, True):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
            sess = ort.InferenceSession(str(scenario.ensemble_path), opts, providers=["CPUExecutionProvider"])
            for b in batch_sizes:
                feed = {"obs": _batch(scenario, b)}
                sec = _time_per_call(partial(sess.run, ["q"], feed), min_seconds)
                out.append(
                    {
                        "intra_op_threads": threads,
                        "spinning": spin,
                        "batch": b,
                        "us_per_call": sec * 1e6,
                        "decisions_per_second": b / sec,
                    }
                )
            del sess
    return out
