"""Real ONNX models and configs for tests (built with the onnx helper API, no training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from interlock.config import LoadedConfig, parse_config


def linear_model(
    path: Path,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    input_name: str = "obs",
    output_name: str = "out",
) -> Path:
    """Write ``out = obs @ weight + bias`` as an ONNX model with a dynamic batch axis.

    Args:
        weight: ``[in_dim, out_dim]`` float32.
        bias: ``[out_dim]`` float32 (zeros by default).
    """
    w = np.asarray(weight, dtype=np.float32)
    b = np.zeros(w.shape[1], np.float32) if bias is None else np.asarray(bias, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", [input_name, "W", "B"], [output_name])],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", w.shape[1]])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def cartpole_balancer(path: Path) -> Path:
    """Logits ``[batch, 2]`` of a linear CartPole controller: push right when the pole falls right."""
    k = np.array([0.01, 0.1, 1.0, 0.5], dtype=np.float32)
    return linear_model(path, np.stack([-k, k], axis=1), input_name="obs", output_name="logits")


def discrete_agent(**overrides: Any) -> dict[str, Any]:
    """A CartPole-like agent config (obs [4] float32, 2 actions)."""
    agent: dict[str, Any] = {
        "id": "cartpole",
        "observation": {"shape": [4], "dtype": "float32"},
        "action": {"type": "discrete", "n": 2},
        "monitors": [
            {"kind": "action_space"},
            {"kind": "rules", "name": "limits", "constraints": {"pole_upright": "math.abs(obs[2]) < 0.1"}},
        ],
        "policy": {
            "rules": [
                {
                    "name": "invalid",
                    "when": "tripped.action_space.invalid",
                    "verdict": "substitute",
                    "fallback": "noop",
                },
                {
                    "name": "tilted",
                    "when": "tripped.limits.pole_upright",
                    "verdict": "substitute",
                    "fallback": "noop",
                },
            ]
        },
        "fallbacks": {"noop": {"kind": "constant", "action": 0}},
    }
    agent.update(overrides)
    return agent


def box_agent(**overrides: Any) -> dict[str, Any]:
    """A continuous-control agent config (obs [3], action [2] in [-1, 1])."""
    agent: dict[str, Any] = {
        "id": "arm-*",
        "observation": {"shape": [3], "dtype": "float32"},
        "action": {"type": "box", "shape": [2], "low": -1.0, "high": 1.0},
        "monitors": [{"kind": "action_space"}],
        "policy": {
            "rules": [
                {
                    "name": "out_of_bounds",
                    "when": "tripped.action_space.invalid",
                    "verdict": "substitute",
                    "fallback": "clip",
                }
            ]
        },
        "fallbacks": {"clip": {"kind": "clip"}, "hold": {"kind": "constant", "action": [0.0, 0.0]}},
    }
    agent.update(overrides)
    return agent


def loaded(
    agents: list[dict[str, Any]], base_dir: Path | None = None, version: str = "test-1", **top: Any
) -> LoadedConfig:
    cfg = parse_config({"agents": agents, **top}, source="test.yaml")
    return LoadedConfig(cfg, base_dir or Path.cwd(), version, "test.yaml")
