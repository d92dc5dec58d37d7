"""Check p50 (one call in flight) on a given config against the echo on the same server.

``interlock bench perf --config FILE --agent ID [--env GYM_ID]`` serves FILE as ``interlock serve
--workers 1`` does (its own ``server`` settings: batching, limits), with the benchmark's echo service
(:mod:`interlock.bench.perf.echo`) on the same grpc.aio server, answering with a Decision of the size
the real ones have. One closed-loop client (:mod:`interlock.bench.perf.loadgen`) then alternates
between the echo and the real Check for several rounds; the rounds' medians give
``check_p50_over_transport_floor_config``.

Requests are real observations when ``--env`` names a Gymnasium environment (reset and random steps,
seeded), else values drawn from the agent's observation spec; actions are drawn from its action
space. The same functions serve ``benchmarks/unary_ab.py`` (several configs and source trees
interleaved in one run).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interlock.bench.perf.echo import SERVICE as ECHO
from interlock.bench.perf.loadgen import LoadGenerator

GUARD = "interlock.v1.Guard"


def config_payloads(
    config_path: str | Path, agent_id: str, env_id: str | None = None, n: int = 64, seed: int = 0
) -> list[bytes]:
    """``n`` serialized CheckRequests for ``agent_id`` of the config.

    Args:
        env_id: A Gymnasium environment whose observations fill the requests: request ``i`` is the
            state after ``i % 3`` random steps from a reset with seed ``seed + i`` (early states, as a
            trained agent mostly sees them, so most requests are ALLOWed); None: observations drawn
            from the agent's observation spec (standard normal, in its dtype).
        n: Distinct requests (the client cycles through them).

    Raises:
        ValueError: the config has no agent matching ``agent_id``, or the environment's
            observations do not have the agent's observation shape.
    """
    from interlock.client import make_request
    from interlock.config import load_config

    cfg = load_config(config_path).config
    agent = next((a for a in cfg.agents if a.matches(agent_id)), None)
    if agent is None:
        ids = [a.id for a in cfg.agents]
        raise ValueError(f"{config_path} has no agent matching {agent_id!r}; its agents are {ids}")
    rng = np.random.default_rng(seed)
    shape = tuple(agent.observation.shape)
    obs_dtype = np.dtype(agent.observation.dtype)
    if env_id is not None:
        observations = _env_observations(env_id, n, seed)
        if observations.shape[1:] != shape:
            raise ValueError(
                f"{env_id} observations have shape {list(observations.shape[1:])}, but agent {agent_id} "
                f"expects {list(shape)}; pick the environment the agent was configured for"
            )
        observations = observations.astype(obs_dtype)
    else:
        observations = rng.standard_normal((n, *shape)).astype(obs_dtype)
    action = agent.action
    if action.type == "discrete":
        actions = rng.integers(0, action.n, size=n).astype(action.dtype)
    else:
        low = np.broadcast_to(np.asarray(action.low, dtype=np.float64), action.shape)
        high = np.broadcast_to(np.asarray(action.high, dtype=np.float64), action.shape)
        actions = rng.uniform(low, high, size=(n, *action.shape)).astype(action.dtype)
    return [
        make_request(
            agent_id, observations[i], actions[i], episode_id=f"ep-{i % 4}", step=i
        ).SerializeToString()
        for i in range(n)
    ]


def _env_observations(env_id: str, n: int, seed: int, max_steps: int = 3) -> np.ndarray:
    """``[n, *obs_shape]`` early states of a Gymnasium environment: ``i % max_steps`` random steps
    after a reset with seed ``seed + i``."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.action_space.seed(seed)
    out = []
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        for _ in range(i % max_steps):
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                break
        out.append(np.asarray(obs))
    env.close()
    return np.stack(out)


def verdict_counts(config_path: str | Path, payloads: Sequence[bytes]) -> dict[str, int]:
    """How the config decides ``payloads`` in process (verdict label -> count)."""
    from interlock.config import load_config
    from interlock.engine import Guard
    from interlock.server.convert import request_to_input
    from interlock.v1 import interlock_pb2 as pb

    guard = Guard(load_config(config_path)).load()
    try:
        decisions = guard.check([request_to_input(pb.CheckRequest.FromString(p)) for p in payloads])
    finally:
        guard.unload()
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d.verdict.name] = counts.get(d.verdict.name, 0) + 1
    return counts


def echo_answer(config_path: str | Path, payloads: Sequence[bytes]) -> tuple[bytes, float]:
    """The echo's answer (the median-sized real Decision of ``payloads``) and the mean request size."""
    from interlock.config import load_config
    from interlock.engine import Guard
    from interlock.server.convert import decision_to_pb, request_to_input
    from interlock.v1 import interlock_pb2 as pb

    guard = Guard(load_config(config_path)).load()
    try:
        items = [request_to_input(pb.CheckRequest.FromString(p)) for p in payloads]
        answers = sorted((decision_to_pb(d).SerializeToString() for d in guard.check(items)), key=len)
    finally:
        guard.unload()
    return answers[len(answers) // 2], float(np.mean([len(p) for p in payloads]))


@dataclass
class Series:
    """One measured series: a method of a service at a target, with its requests."""

    name: str
    target: str
    service: str
    payloads: list[bytes]
    server_pids: Sequence[int] = ()


def interleaved_p50(
    series: Sequence[Series], gen: LoadGenerator, rounds: int, duration: float, warmup: float
) -> dict[str, Any]:
    """Every series once per round at one call in flight (order rotated each round); p50 per round.

    Returns:
        ``{"series": {name: {"p50_us": [per round], "server_cpu_us_per_call": [...],
        "p50_us_median": m, "errors": e}}, "loadavg": [1-min load at each round's start]}``.
    """
    out: dict[str, Any] = {s.name: {"p50_us": [], "server_cpu_us_per_call": [], "errors": 0} for s in series}
    loads = []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        order = list(series[r % len(series) :]) + list(series[: r % len(series)])
        if r % 2:
            order.reverse()
        for s in order:
            res = gen.run(
                s.target, s.service, "Check", s.payloads, 1, duration, warmup, server_pids=s.server_pids
            )
            calls = max(1, len(res.latencies_ns))
            out[s.name]["p50_us"].append(res.percentile_us(50))
            out[s.name]["server_cpu_us_per_call"].append(res.server_cpu_s / calls * 1e6)
            out[s.name]["errors"] += res.errors
    for v in out.values():
        v["p50_us_median"] = statistics.median(v["p50_us"])
        cpu = [c for c in v["server_cpu_us_per_call"] if c == c]  # NaN without server pids
        v["server_cpu_us_per_call_median"] = statistics.median(cpu) if cpu else float("nan")
    return {"series": out, "loadavg": loads}


def measure_config(
    config_path: str | Path,
    agent_id: str,
    env_id: str | None,
    gen: LoadGenerator,
    rounds: int = 5,
    duration: float = 1.0,
    warmup: float = 0.5,
) -> dict[str, Any]:
    """Check p50 of ``config_path`` served by one worker against the echo on the same server.

    Returns:
        The rounds (see :func:`interleaved_p50`) plus ``check_p50_us``, ``transport_floor_p50_us``
        (medians over rounds), their ratio ``check_p50_over_transport_floor``, and the median of the
        per-round ratios.
    """
    from interlock.bench.perf.echo import make_hook
    from interlock.server.workers import start_workers

    payloads = config_payloads(config_path, agent_id, env_id)
    decision, request_len = echo_answer(config_path, payloads)
    started = time.time()
    with start_workers(
        str(config_path), 1, "127.0.0.1", 0, None, hooks=[make_hook(decision, request_len)]
    ) as group:
        target = f"127.0.0.1:{group.port}"
        pids = [p.pid for p in group.processes]
        result = interleaved_p50(
            [Series("echo", target, ECHO, payloads, pids), Series("check", target, GUARD, payloads, pids)],
            gen,
            rounds,
            duration,
            warmup,
        )
    check, echo = result["series"]["check"], result["series"]["echo"]
    ratios = [c / e for c, e in zip(check["p50_us"], echo["p50_us"], strict=True)]
    return {
        "config": str(config_path),
        "agent": agent_id,
        "env": env_id,
        "requests": len(payloads),
        "request_bytes": float(np.mean([len(p) for p in payloads])),
        "decision_bytes": len(decision),
        "verdicts_in_process": verdict_counts(config_path, payloads),
        "rounds": rounds,
        "duration_s": duration,
        "warmup_s": warmup,
        "elapsed_s": time.time() - started,
        **result,
        "check_p50_us": check["p50_us_median"],
        "transport_floor_p50_us": echo["p50_us_median"],
        "check_p50_over_transport_floor": check["p50_us_median"] / echo["p50_us_median"],
        "round_ratios": ratios,
        "round_ratio_median": statistics.median(ratios),
    }
