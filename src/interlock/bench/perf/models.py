"""The benchmark's models, built with the onnx helper API (no training, fixed seed).

* ``ensemble.onnx``: K members of a 2x256 ReLU MLP Q-network fused into one graph
  with stacked weights: ``obs [batch, obs_dim]`` -> ``q [K, batch, n_actions]``.
  Each layer is one batched MatMul ``[K, batch, in] x [K, in, out]``.
* ``backup.onnx``: a small linear backup policy, ``obs [batch, obs_dim]`` -> ``logits [batch, n_actions]``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def ensemble_weights(
    obs_dim: int, n_actions: int, members: int = 5, hidden: int = 256, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-layer ``(W [K, in, out], b [K, 1, out])`` float32, He-initialised, members differ."""
    rng = np.random.default_rng(seed)
    dims = [obs_dim, hidden, hidden, n_actions]
    layers = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        scale = np.sqrt(2.0 / d_in) if i < len(dims) - 2 else np.sqrt(1.0 / d_in)
        w = (rng.standard_normal((members, d_in, d_out)) * scale).astype(np.float32)
        b = (rng.standard_normal((members, 1, d_out)) * 0.1).astype(np.float32)
        layers.append((w, b))
    return layers


def build_ensemble(path: Path, obs_dim: int, n_actions: int, members: int = 5, hidden: int = 256) -> Path:
    """Write the fused ensemble: ``obs [batch, obs_dim]`` float32 -> ``q [members, batch, n_actions]``."""
    layers = ensemble_weights(obs_dim, n_actions, members, hidden)
    inits, nodes = [], []
    x = "obs"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        # [batch, in] x [K, in, out] broadcasts to [K, batch, out].
        nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"h{i}_mm"]))
        last = i == len(layers) - 1
        nodes.append(helper.make_node("Add", [f"h{i}_mm", f"B{i}"], ["q" if last else f"h{i}_lin"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"h{i}_lin"], [f"h{i}"]))
            x = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "q_ensemble",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_dim])],
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [members, "batch", n_actions])],
        initializer=inits,
    )
    return _save(graph, path)


def build_backup(path: Path, obs_dim: int, n_actions: int, seed: int = 1) -> Path:
    """Write a linear backup policy: ``obs [batch, obs_dim]`` -> ``logits [batch, n_actions]``."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((obs_dim, n_actions)).astype(np.float32)
    b = np.zeros(n_actions, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["obs", "W", "B"], ["logits"])],
        "backup",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_dim])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_actions])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    return _save(graph, path)


def reference_ensemble(obs: np.ndarray, obs_dim: int, n_actions: int, members: int = 5) -> np.ndarray:
    """The ensemble in numpy, ``[members, batch, n_actions]`` (to check the ONNX graph)."""
    x = np.broadcast_to(obs.astype(np.float32), (members, *obs.shape))
    layers = ensemble_weights(obs_dim, n_actions, members)
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


def build_dynamics(
    path: Path, obs_dim: int, n_actions: int, members: int = 5, hidden: int = 64, seed: int = 2
) -> Path:
    """Write a dynamics ensemble (Interlock's reachability format): ``obs [N, d], action [N]`` ->
    ``next_obs [K, N, d]``, ReLU MLPs ``d + n_actions -> hidden -> hidden -> d`` predicting a small delta."""
    from interlock.reachability.onnx_build import mlp_ensemble, save

    rng = np.random.default_rng(seed)
    dims = [obs_dim + n_actions, hidden, hidden, obs_dim]
    weights, biases = [], []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        scale = np.sqrt(2.0 / d_in) if i < len(dims) - 2 else 0.02 / np.sqrt(d_in)
        weights.append((rng.standard_normal((members, d_in, d_out)) * scale).astype(np.float32))
        biases.append(np.zeros((members, d_out), np.float32))
    return save(mlp_ensemble(weights, biases, obs_dim=obs_dim, n_actions=n_actions), path)
