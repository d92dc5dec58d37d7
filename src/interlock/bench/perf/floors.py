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
