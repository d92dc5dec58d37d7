"""Write small ONNX models with the ``onnx`` helper API: MLP dynamics ensembles and linear policies.

The ensemble layout is the one the recoverability monitor reads: observation
``[N, obs_dim]`` (or ``[K, N, obs_dim]`` with ``per_member``) and action ``[N]``
int64 (discrete, one-hot inside the graph) or ``[N, act_dim]`` float32 in, next
observation ``[K, N, obs_dim]`` out. All members run in one graph: each layer is
one batched ``MatMul`` against weights ``[K, in, out]``.

Example:
    >>> import numpy as np
    >>> W = [np.zeros((2, 5, 4), np.float32)]; b = [np.zeros((2, 4), np.float32)]
    >>> model = mlp_ensemble(W, b, obs_dim=4, n_actions=1)
    >>> [o.name for o in model.graph.output]
    ['next_obs']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name)


def mlp_ensemble(
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    obs_dim: int,
    n_actions: int = 0,
    act_dim: int = 0,
    in_mean: np.ndarray | None = None,
    in_std: np.ndarray | None = None,
    out_mean: np.ndarray | None = None,
    out_std: np.ndarray | None = None,
    predicts_delta: bool = True,
    per_member: bool = False,
) -> onnx.ModelProto:
    """An ensemble of ReLU MLPs from ``(obs, action)`` to the next observation.

    Args:
        weights: Per layer ``[K, in, out]``; the first layer's ``in`` is ``obs_dim + n_actions``
            (discrete, one-hot) or ``obs_dim + act_dim`` (box).
        biases: Per layer ``[K, out]``; the last layer's ``out`` is ``obs_dim``.
        obs_dim: Observation length ``d``.
        n_actions: Discrete actions (action input ``[N]`` int64); 0 for box actions.
        act_dim: Box action length (action input ``[N, act_dim]`` float32).
        in_mean, in_std: ``[in]`` input normalisation (default none).
        out_mean, out_std: ``[d]`` output de-normalisation (default none).
        predicts_delta: Add the observation to the network's output.
        per_member: Declare the inputs ``[K, N, ...]`` (each member its own rows).

    Returns:
        The checked ``onnx.ModelProto``.
    """
    K = int(weights[0].shape[0])
    in_dim = obs_dim + (n_actions or act_dim)
    if weights[0].shape[1] != in_dim or biases[-1].shape[-1] != obs_dim:
        raise ValueError(f"first layer must take {in_dim} inputs and the last return {obs_dim}")
    if (in_mean is None) != (in_std is None) or (out_mean is None) != (out_std is None):
        raise ValueError("in_mean goes with in_std, and out_mean with out_std: give both or neither")
    lead: list[str | int] = [K, "batch"] if per_member else ["batch"]
    inputs = [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [*lead, obs_dim])]
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    if n_actions:
        inputs.append(helper.make_tensor_value_info("action", TensorProto.INT64, lead))
        inits.append(_const("eye", np.eye(n_actions)))
        nodes.append(helper.make_node("Gather", ["eye", "action"], ["a_enc"], axis=0))
    else:
        inputs.append(helper.make_tensor_value_info("action", TensorProto.FLOAT, [*lead, act_dim]))
        nodes.append(helper.make_node("Identity", ["action"], ["a_enc"]))
    nodes.append(helper.make_node("Concat", ["obs", "a_enc"], ["x0"], axis=-1))
    h = "x0"
    if in_mean is not None and in_std is not None:
        inits += [_const("in_mean", in_mean), _const("in_std", in_std)]
        nodes += [
            helper.make_node("Sub", [h, "in_mean"], ["x_c"]),
            helper.make_node("Div", ["x_c", "in_std"], ["x_n"]),
        ]
        h = "x_n"
    for i, (W, b) in enumerate(zip(weights, biases, strict=True)):
        inits += [_const(f"W{i}", W), _const(f"b{i}", np.asarray(b)[:, None, :])]
        nodes += [
            helper.make_node("MatMul", [h, f"W{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"z{i}"]),
        ]
        h = f"z{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [h], [f"r{i}"]))
            h = f"r{i}"
    if out_std is not None and out_mean is not None:
        inits += [_const("out_std", out_std), _const("out_mean", out_mean)]
        nodes += [
            helper.make_node("Mul", [h, "out_std"], ["y_s"]),
            helper.make_node("Add", ["y_s", "out_mean"], ["y"]),
        ]
        h = "y"
    nodes.append(
        helper.make_node(
            "Add" if predicts_delta else "Identity", [h, "obs"] if predicts_delta else [h], ["next_obs"]
        )
    )
    graph = helper.make_graph(
        nodes,
        "dynamics_ensemble",
        inputs,
        [helper.make_tensor_value_info("next_obs", TensorProto.FLOAT, [K, "batch", obs_dim])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def linear_logits(weight: np.ndarray, bias: np.ndarray | None = None) -> onnx.ModelProto:
    """``logits [N, n] = obs [N, d] @ weight [d, n] + bias``: a linear policy."""
    w = np.asarray(weight, dtype=np.float32)
    b = np.zeros(w.shape[1], np.float32) if bias is None else np.asarray(bias, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["obs", "W", "B"], ["logits"])],
        "linear_policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", w.shape[1]])],
        initializer=[_const("W", w), _const("B", b)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    onnx.save(model, str(path))
    return Path(path)
