"""The benchmark scenario: a realistic agent config, its models, and the requests the clients send.

The agent (LunarLander-sized: observation [8], 4 discrete actions) is guarded by

* ``uncertainty``: a 5-member ensemble of 2x256 MLP Q-networks in one fused ONNX
  graph; signals ``q_std`` (std over members of Q(obs, proposed action)) and
  ``disagreement`` (share of members whose greedy action differs from the proposed one);
* ``action_space``;
* ``limits``: three CEL constraints;

and four policy rules, with an ONNX backup policy as the substitute. About 5% of
requests are SUBSTITUTE (the q_std threshold is the 95th percentile of the request set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.perf.models import build_backup, build_ensemble, reference_ensemble
from interlock.client import make_request
from interlock.engine import CheckInput, Verdict
from interlock.monitors.base import Batch, Monitor, SignalBatch
from interlock.v1 import interlock_pb2 as pb

OBS_DIM = 8
N_ACTIONS = 4
MEMBERS = 5
HIDDEN = 256
AGENT_ID = "lander-0"
#: Distinct requests cycled by every client (pre-serialised, so the client does no encoding work).
N_REQUESTS = 1024


@dataclass
class Scenario:
    """Files and requests of one benchmark run.

    Attributes:
        config_path: The Interlock YAML written for the run.
        ensemble_path: The fused ensemble, ``obs [batch, 8]`` -> ``q [5, batch, 4]``.
        observations: ``[N_REQUESTS, 8]`` float32.
        actions: ``[N_REQUESTS]`` int64 proposed actions.
        q_std_threshold: Calibrated so that about 5% of requests trip it.
    """

    config_path: Path
    ensemble_path: Path
    observations: np.ndarray
    actions: np.ndarray
    q_std_threshold: float

    def requests(self) -> list[pb.CheckRequest]:
        return [
            make_request(AGENT_ID, self.observations[i], self.actions[i], episode_id=f"ep-{i % 16}", step=i)
            for i in range(len(self.actions))
        ]

    def inputs(self) -> list[CheckInput]:
        return [
            CheckInput(AGENT_ID, self.observations[i], self.actions[i], f"ep-{i % 16}", i)
            for i in range(len(self.actions))
        ]


def ensemble_signals(q: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``q [K, batch, n]`` and ``actions [batch]`` -> ``(q_std [batch], disagreement [batch])`` float64."""
    rows = np.arange(q.shape[1])
    q_a = q[:, rows, actions]  # [K, batch]
    q_std = q_a.std(axis=0).astype(np.float64)
    disagreement = (q.argmax(axis=2) != actions[None, :]).mean(axis=0).astype(np.float64)
    return q_std, disagreement


def real_uncertainty_monitor() -> bool:
    """Whether Interlock has the ``uncertainty`` monitor (else the benchmark's stand-in is used)."""
    from interlock.monitors import BUILDERS

    return "uncertainty" in BUILDERS


def agent_config(q_std_threshold: float) -> dict[str, Any]:
    if real_uncertainty_monitor():
        uncertainty: dict[str, Any] = {
            "kind": "uncertainty",
            "model": "ensemble.onnx",
            "ensemble": "q",
            "thresholds": {"q_std": q_std_threshold},
        }
        uncertain = "tripped.uncertainty.q_std"
        last_rule = f"signals.uncertainty.q_std > {2 * q_std_threshold!r}"
    else:
        # Placeholder: replaced by EnsembleMonitor in the server (see install_ensemble_monitor).
        uncertainty = {
            "kind": "rules",
            "name": "uncertainty",
            "constraints": {"q_std": "true", "disagreement": "true"},
        }
        uncertain = f"signals.uncertainty.q_std > {q_std_threshold!r}"
        last_rule = "signals.uncertainty.disagreement > 0.99"
    return {
        "id": "lander-*",
        "observation": {"shape": [OBS_DIM], "dtype": "float32"},
        "action": {"type": "discrete", "n": N_ACTIONS},
        "monitors": [
            uncertainty,
            {"kind": "action_space"},
            {
                "kind": "rules",
                "name": "limits",
                "constraints": {
                    "altitude_ok": "obs[1] > -1.8",
                    "speed_ok": "math.abs(obs[2]) < 2.0 && math.abs(obs[3]) < 2.0",
                    "tilt_ok": "math.abs(obs[4]) < 1.6",
                },
            },
        ],
        "policy": {
            "rules": [
                {"name": "invalid_action", "when": "tripped.action_space.invalid", "verdict": "substitute",
                 "fallback": "backup"},
                {"name": "uncertain", "when": uncertain, "verdict": "substitute", "fallback": "backup"},
                {"name": "near_limits",
                 "when": "tripped.limits.altitude_ok || tripped.limits.speed_ok || tripped.limits.tilt_ok",
                 "verdict": "substitute", "fallback": "backup"},
                {"name": "very_uncertain", "when": last_rule, "verdict": "substitute", "fallback": "backup"},
            ],
            "default": "allow",
        },
        "fallbacks": {
            "backup": {"kind": "onnx_policy", "model": "backup.onnx", "output": "logits"},
            "noop": {"kind": "constant", "action": 0},
        },
        "fail_safe": "noop",
    }  # fmt: skip


def build(workdir: Path, batching: dict[str, float] | None = None, seed: int = 0) -> Scenario:
    """Write models and config into ``workdir``; returns the scenario."""
    workdir.mkdir(parents=True, exist_ok=True)
    ens = build_ensemble(workdir / "ensemble.onnx", OBS_DIM, N_ACTIONS, MEMBERS, HIDDEN)
    build_backup(workdir / "backup.onnx", OBS_DIM, N_ACTIONS)
    rng = np.random.default_rng(seed)
    obs = (rng.standard_normal((N_REQUESTS, OBS_DIM)) * 0.5).astype(np.float32)
    q = reference_ensemble(obs, OBS_DIM, N_ACTIONS, MEMBERS)
    greedy = q.mean(axis=0).argmax(axis=1)
    # The agent mostly proposes the ensemble's greedy action, sometimes another one.
    actions = np.where(rng.random(N_REQUESTS) < 0.9, greedy, rng.integers(0, N_ACTIONS, N_REQUESTS))
    actions = actions.astype(np.int64)
    q_std, _ = ensemble_signals(q, actions)
    threshold = float(np.round(np.quantile(q_std, 0.95), 4))
    server: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "metrics_port": None}
    if batching:
        server["batching"] = batching
    config = {
        "version": "bench-perf",
        "server": server,
        "onnx": {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1, "allow_spinning": False},
        "agents": [agent_config(threshold)],
    }
    path = workdir / "interlock.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return Scenario(path, ens, obs, actions, threshold)


# --------------------------------------------------------------------------- the ensemble monitor


class EnsembleMonitor(Monitor):
    """Benchmark-only stand-in for the ``uncertainty`` monitor until it lands on main.

    Runs the fused ensemble once per batch: ``observations [batch, 8]`` ->
    ``q [K, batch, 4]`` -> signals ``q_std`` and ``disagreement`` ``[batch]``.
    """

    kind = "bench_ensemble"

    def __init__(self, name: str, spaces, runtime, model: Path) -> None:
        super().__init__(name, spaces, runtime)
        self.model = model

    @property
    def signal_names(self) -> list[str]:
        return ["q_std", "disagreement"]

    def load(self) -> None:
        self._session = self.runtime.session(self.model, what="bench ensemble")
        self.ready = True

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        obs = np.ascontiguousarray(batch.observations, dtype=np.float32)
        (q,) = self._session.run(["q"], {"obs": obs})
        q_std, disagreement = ensemble_signals(q, np.asarray(batch.actions, dtype=np.int64))
        return {
            "q_std": SignalBatch.above(q_std, np.inf),
            "disagreement": SignalBatch.above(disagreement, 1.0),
        }


def install_ensemble_monitor(guard) -> None:
    """Swap the placeholder ``uncertainty`` monitor of every agent for :class:`EnsembleMonitor`.

    Does nothing once Interlock has its own ``uncertainty`` monitor (the config then uses it).
    """
    from interlock.monitors import RulesMonitor

    for rt in guard.agents:
        for i, m in enumerate(rt.monitors):
            if m.name == "uncertainty" and isinstance(m, RulesMonitor):
                mon = EnsembleMonitor(
                    m.name, rt.spaces, guard.runtime, guard.runtime.resolve("ensemble.onnx")
                )
                if guard.ready:
                    mon.load()
                rt.monitors[i] = mon


def expected_verdicts(scenario: Scenario) -> dict[str, int]:
    """How many requests each verdict gets in-process (a sanity check of the scenario)."""
    from interlock.config import load_config
    from interlock.engine import Guard

    guard = Guard(load_config(scenario.config_path)).load()
    install_ensemble_monitor(guard)
    decisions = guard.check(scenario.inputs())
    counts: dict[str, int] = {}
    for d in decisions:
        counts[Verdict(d.verdict).name] = counts.get(Verdict(d.verdict).name, 0) + 1
    return counts


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
