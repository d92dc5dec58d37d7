"""The benchmark scenario: a realistic agent config, its models, and the requests the clients send.

The agent (LunarLander-sized: observation [8], 4 discrete actions) is guarded by

* ``uncertainty`` (Interlock's monitor, ``ensemble: q``): a 5-member ensemble of 2x256
  MLP Q-networks in one fused ONNX graph, signals ``q_std`` and ``q_std_ratio``;
* ``action_space``;
* ``recover`` (``reachability``): the backup policy rolled out ``HORIZON`` = 10 steps through a
  5-member dynamics ensemble (MLPs 12-64-64-8) from the state each member predicts;
* ``limits``: three CEL constraints;

and five policy rules, with an ONNX backup policy as the substitute. About 6% of
requests are SUBSTITUTE (thresholds: the 95th percentile of q_std and the 99th of
q_std_ratio over the request set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from interlock.bench.perf.models import build_backup, build_dynamics, build_ensemble, reference_ensemble
from interlock.client import make_request
from interlock.ensembles.scores import q_scores
from interlock.types import CheckInput, Verdict
from interlock.v1 import interlock_pb2 as pb

OBS_DIM = 8
N_ACTIONS = 4
MEMBERS = 5
HIDDEN = 256
AGENT_ID = "lander-0"
#: Distinct requests cycled by every client (pre-serialised, so the client does no encoding work).
N_REQUESTS = 1024
#: Reachability rollout steps of the backup policy through the dynamics ensemble.
HORIZON = 10


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


def agent_config(q_std_threshold: float, ratio_threshold: float) -> dict[str, Any]:
    uncertainty = {
        "kind": "uncertainty",
        "model": "ensemble.onnx",
        "ensemble": "q",
        "thresholds": {"q_std": q_std_threshold, "q_std_ratio": ratio_threshold},
    }
    uncertain = "tripped.uncertainty.q_std"
    last_rule = "tripped.uncertainty.q_std_ratio"
    return {
        "id": "lander-*",
        "observation": {"shape": [OBS_DIM], "dtype": "float32"},
        "action": {"type": "discrete", "n": N_ACTIONS},
        "monitors": [
            uncertainty,
            {"kind": "action_space"},
            {
                "kind": "reachability",
                "name": "recover",
                "model": {"kind": "dynamics_ensemble", "model": "dynamics.onnx", "predicts": "next_state"},
                "backup_policy": {"model": "backup.onnx", "output": "logits"},
                "constraints": {"altitude": "obs[1] > -1.5", "tilt": "math.abs(obs[4]) < 1.3"},
                "safe_set": "math.abs(obs[4]) < 1.2",
                "horizon": HORIZON,
            },
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
                {"name": "irreversible", "when": "tripped.recover.unsafe", "verdict": "substitute",
                 "fallback": "backup"},
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
    build_dynamics(workdir / "dynamics.onnx", OBS_DIM, N_ACTIONS, MEMBERS)
    rng = np.random.default_rng(seed)
    obs = (rng.standard_normal((N_REQUESTS, OBS_DIM)) * 0.5).astype(np.float32)
    q = reference_ensemble(obs, OBS_DIM, N_ACTIONS, MEMBERS)
    greedy = q.mean(axis=0).argmax(axis=1)
    # The agent mostly proposes the ensemble's greedy action, sometimes another one.
    actions = np.where(rng.random(N_REQUESTS) < 0.9, greedy, rng.integers(0, N_ACTIONS, N_REQUESTS))
    actions = actions.astype(np.int64)
    scores = q_scores(q, actions)  # what the uncertainty monitor computes
    threshold = float(np.round(np.quantile(scores["q_std"], 0.95), 4))
    ratio = float(np.round(np.quantile(scores["q_std_ratio"], 0.99), 4))
    server: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "metrics_port": None}
    if batching:
        server["batching"] = batching
    config = {
        "version": "bench-perf",
        "server": server,
        "onnx": {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1, "allow_spinning": False},
        "agents": [agent_config(threshold, ratio)],
    }
    path = workdir / "interlock.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return Scenario(path, ens, obs, actions, threshold)


def expected_verdicts(scenario: Scenario) -> dict[str, int]:
    """How many requests each verdict gets in-process (a sanity check of the scenario)."""
    from interlock.config import load_config
    from interlock.engine import Guard

    guard = Guard(load_config(scenario.config_path)).load()
    decisions = guard.check(scenario.inputs())
    counts: dict[str, int] = {}
    for d in decisions:
        counts[Verdict(d.verdict).name] = counts.get(Verdict(d.verdict).name, 0) + 1
    return counts


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
