"""Write an MLP given as numpy weights as an ONNX member model (no torch needed).

Members written here take ``obs [batch, obs_dim]`` float32 (dynamics members
also ``action``: ``[batch]`` int64 for discrete spaces, one-hot encoded inside
the graph, or ``[batch, act_dim]`` float32) and have one output:

* ``q``: ``[batch, n_actions]`` Q-values (q kind);
* ``logits``: ``[batch, n_actions]`` action logits (policy kind);
* ``delta``: ``[batch, obs_dim]`` predicted ``next_obs - obs`` (dynamics kind).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUTPUT_NAME = {"q": "q", "policy": "logits", "dynamics": "delta"}
ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}
OPSET = 17


def mlp_member(
    layers: Sequence[tuple[np.ndarray, np.ndarray]],
    activation: str,
    kind: str,
    obs_dim: int,
    n_actions: int | None = None,
    act_dim: int | None = None,
) -> onnx.ModelProto:
    """An ONNX model of ``Gemm -> act -> ... -> Gemm`` with the kind's inputs and output.

    Args:
        layers: ``(W [in, out], b [out])`` per layer, applied to the (encoded) input.
        activation: ``relu``, ``tanh`` or ``sigmoid`` between layers.
        kind: ``q``, ``policy`` or ``dynamics``.
        obs_dim: Observation width.
        n_actions: Number of discrete actions (dynamics: one-hot width), if discrete.
        act_dim: Box action width (dynamics with continuous actions).
    """
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    inputs = [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_dim])]
    x = "obs"
    if kind == "dynamics":
        if n_actions is not None:
            inputs.append(helper.make_tensor_value_info("action", TensorProto.INT64, ["batch"]))
            inits.append(numpy_helper.from_array(np.array([-1], np.int64), "enc/axis"))
            inits.append(numpy_helper.from_array(np.arange(n_actions, dtype=np.int64), "enc/actions"))
            nodes += [
                helper.make_node("Unsqueeze", ["action", "enc/axis"], ["enc/action_col"]),
                helper.make_node("Equal", ["enc/action_col", "enc/actions"], ["enc/onehot_bool"]),
                helper.make_node("Cast", ["enc/onehot_bool"], ["enc/onehot"], to=TensorProto.FLOAT),
                helper.make_node("Concat", ["obs", "enc/onehot"], ["enc/x"], axis=-1),
            ]
        else:
            inputs.append(helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", act_dim]))
            nodes.append(helper.make_node("Concat", ["obs", "action"], ["enc/x"], axis=-1))
        x = "enc/x"
    out_name = OUTPUT_NAME[kind]
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        inits += [
            numpy_helper.from_array(np.ascontiguousarray(w, np.float32), f"l{i}/W"),
            numpy_helper.from_array(np.ascontiguousarray(b, np.float32), f"l{i}/b"),
        ]
        y = out_name if last else f"l{i}/z"
        nodes.append(helper.make_node("Gemm", [x, f"l{i}/W", f"l{i}/b"], [y], name=f"l{i}/Gemm"))
        if not last:
            nodes.append(helper.make_node(ACTIVATIONS[activation], [y], [f"l{i}/h"], name=f"l{i}/act"))
            x = f"l{i}/h"
    width = int(np.shape(layers[-1][0])[1])
    graph = helper.make_graph(
        nodes,
        f"{kind}_member",
        inputs,
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
