"""Fuse K member ONNX models into one ensemble graph: outputs ``[K, batch, ...]`` from one session run.

Two strategies:

``stacked``
    When every member is the same MLP (a shared weight-free prefix such as a Cast,
    a one-hot encoding or a Concat of inputs, then a chain of Gemm / MatMul / Add /
    Sub / Mul / Div with constant weights and elementwise activations), the
    weights are stacked so each layer is one batched ``MatMul`` of
    ``[K, batch, in] x [K, in, out]`` for all members.
``parallel``
    Anything else (other operators, several outputs, tree ensembles from
    skl2onnx ...): each member's graph is copied in with its names prefixed
    ``m<k>/``, all reading the shared inputs, and each output is the ``Concat``
    of the members' outputs on a new leading axis.

``auto`` (the default) tries ``stacked`` and falls back to ``parallel``.
:func:`verify` runs the fused model and every member on the same random
inputs and reports the largest absolute difference.

Example:
    >>> report = compile_ensemble(["m0.onnx", "m1.onnx"], "ensemble.onnx")  # doctest: +SKIP
    >>> report.strategy, report.max_abs_diff                                 # doctest: +SKIP
    ('stacked', 2.4e-07)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from interlock.ensembles.common import (
    META_KIND,
    META_MEMBERS,
    META_STRATEGY,
    ORT_TO_NUMPY,
    EnsembleError,
)

ELEMENTWISE_ACTIVATIONS = {
    "Relu",
    "Tanh",
    "Sigmoid",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Softplus",
    "Softsign",
    "HardSigmoid",
    "Gelu",
    "Mish",
    "Exp",
    "Abs",
    "Neg",
    "Identity",
    "Celu",
    "ThresholdedRelu",
}
AXIS_ACTIVATIONS = {"Softmax", "LogSoftmax"}
NOOP_SHAPE_OPS = {"Reshape", "Flatten", "Identity", "Squeeze"}


# --------------------------------------------------------------------------- signatures


@dataclass(frozen=True)
class TensorSig:
    """Name, element type and shape (ints, or str/None for symbolic dims) of a graph input or output."""

    name: str
    elem_type: int
    shape: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        dtype = helper.tensor_dtype_to_np_dtype(self.elem_type).name if self.elem_type else "?"
        dims = (
            "?"
            if self.shape is None
            else "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"
        )
        return f"'{self.name}' {dtype}{dims}"


def _tensor_sig(vi: onnx.ValueInfoProto) -> TensorSig:
    t = vi.type.tensor_type
    shape: tuple[int | str | None, ...] | None = None
    if t.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
    return TensorSig(vi.name, t.elem_type, shape)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs (initializers listed as inputs by old exporters are left out)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def signature(model: onnx.ModelProto) -> tuple[list[TensorSig], list[TensorSig]]:
    return [_tensor_sig(i) for i in graph_inputs(model)], [_tensor_sig(o) for o in model.graph.output]


def _dims_compatible(a: tuple | None, b: tuple | None) -> bool:
    if a is None or b is None:
        return True
    if len(a) != len(b):
        return False
    return all(
        not (isinstance(x, int) and isinstance(y, int) and x and y and x != y)
        for x, y in zip(a, b, strict=True)
    )


def check_signatures(members: Sequence[tuple[str, onnx.ModelProto]]) -> None:
    """Every member must have the inputs and outputs of the first (count, dtype, shape; names too
    when there is more than one).

    Raises:
        EnsembleError: naming the member and the mismatch.
    """
    ref_label, ref = members[0]
    ref_in, ref_out = signature(ref)
    for label, model in members[1:]:
        ins, outs = signature(model)
        for what, mine, theirs in (("input", ins, ref_in), ("output", outs, ref_out)):
            if len(mine) != len(theirs):
                raise EnsembleError(
                    f"member {label} has {len(mine)} {what}(s) ({', '.join(s.describe() for s in mine)}) but "
                    f"{ref_label} has {len(theirs)} ({', '.join(s.describe() for s in theirs)}); all members "
                    "must share one signature"
                )
            for j, (a, b) in enumerate(zip(mine, theirs, strict=False)):
                problem = ""
                if len(mine) > 1 and a.name != b.name:
                    problem = f"is named '{a.name}', not '{b.name}'"
                elif a.elem_type != b.elem_type:
                    problem = f"has dtype {a.describe()}, not {b.describe()}"
                elif not _dims_compatible(a.shape, b.shape):
                    problem = f"has shape {a.describe()}, not {b.describe()}"
                if problem:
                    raise EnsembleError(
                        f"member {label}: {what} {j} {problem} as in {ref_label}; all members must share one "
                        "signature (same inputs and outputs)"
                    )


# --------------------------------------------------------------------------- graph helpers


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
                elif a.name in ("value_float", "value_int") or a.name in ("value_floats", "value_ints"):
                    consts[node.output[0]] = np.asarray(helper.get_attribute_value(a))
    return consts


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return 1


# --------------------------------------------------------------------------- stacked MLPs


@dataclass
class _Step:
    """One element of an MLP chain: ``matmul`` (W [in,out]), ``add`` / ``mul`` (c [w] or [1]), ``act``."""

    kind: str
    value: np.ndarray | None = None
    op: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""

    def key(self) -> tuple:
        shape = None if self.value is None else self.value.shape
        return (
            self.kind,
            self.op,
            self.domain,
            tuple(sorted((k, repr(v)) for k, v in self.attrs.items())),
            shape,
        )


@dataclass
class _Mlp:
    prefix: list[onnx.NodeProto]
    prefix_signature: list[tuple]
    chain_input: str
    steps: list[_Step]
    consts: dict[str, np.ndarray]


class _NotMlp(Exception):
    """This member is not a plain MLP (why is in the message); the parallel strategy is used."""


def _const_vector(c: np.ndarray, what: str) -> np.ndarray:
    c = np.asarray(c)
    while c.ndim > 1 and c.shape[0] == 1:
        c = c[0]
    if c.ndim == 0:
        c = c.reshape(1)
    if c.ndim != 1:
        raise _NotMlp(f"{what} constant of shape {list(c.shape)} is not a per-feature vector")
    return c


def _analyse_mlp(model: onnx.ModelProto) -> _Mlp:
    g = model.graph
    if len(g.output) != 1:
        raise _NotMlp("more than one output")
    for graph_node in g.node:
        for attr in graph_node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise _NotMlp(f"{graph_node.op_type} has a subgraph")
    consts = _constants(g)
    producer = {o: n for n in g.node for o in n.output}
    inputs = {i.name for i in graph_inputs(model)}

    steps: list[_Step] = []
    name = g.output[0].name
    seen_linear = False
    tail = True  # reshapes are only allowed after the last weight
    while True:
        node = producer.get(name)
        if node is None or node.op_type == "Constant":
            break
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            break
        data = [i for i in node.input if i and i not in consts]
        const_in = [i for i in node.input if i and i in consts]
        a = _attrs(node)
        if op == "Gemm" and len(data) == 1 and node.input[0] == data[0]:
            if a.get("transA", 0):
                raise _NotMlp("Gemm with transA")
            w = consts[node.input[1]]
            w = w.T if a.get("transB", 0) else w
            if a.get("alpha", 1.0) != 1.0:
                w = (w * a["alpha"]).astype(w.dtype)
            if len(node.input) > 2 and node.input[2]:
                b = _const_vector(consts[node.input[2]], "Gemm bias")
                if a.get("beta", 1.0) != 1.0:
                    b = (b * a["beta"]).astype(b.dtype)
                steps.append(_Step("add", b))
            steps.append(_Step("matmul", w))
            seen_linear, tail = True, False
        elif op == "MatMul" and len(data) == 1 and node.input[0] == data[0]:
            w = consts[node.input[1]]
            if w.ndim != 2:
                raise _NotMlp(f"MatMul weight of rank {w.ndim}")
            steps.append(_Step("matmul", w))
            seen_linear, tail = True, False
        elif op in ("Add", "Sub", "Mul", "Div") and len(data) == 1 and len(const_in) == 1:
            c = _const_vector(consts[const_in[0]], op)
            if op == "Sub" and node.input[0] != data[0]:
                raise _NotMlp("constant minus data")
            if op == "Div" and node.input[0] != data[0]:
                raise _NotMlp("constant divided by data")
            steps.append(_Step("add" if op in ("Add", "Sub") else "mul", c, op=op))
            tail = False
        elif op in ELEMENTWISE_ACTIVATIONS and len(data) == 1 and not const_in:
            steps.append(_Step("act", op=op, attrs=a))
            tail = False
        elif op in AXIS_ACTIVATIONS and len(data) == 1:
            if default_opset(model) < 13:
                raise _NotMlp(f"{op} before opset 13 flattens its input")
            axis = a.get("axis", -1)
            if axis not in (-1, 1):
                raise _NotMlp(f"{op} over axis {axis}")
            steps.append(_Step("act", op=op, attrs={"axis": -1}))
            tail = False
        elif tail and op in NOOP_SHAPE_OPS and data:
            if op == "Reshape":
                target = consts.get(node.input[1]) if len(node.input) > 1 else None
                if target is None or target.size != 2 or int(target[0]) not in (-1, 0):
                    raise _NotMlp("a Reshape to another shape than [batch, features]")
            elif op == "Flatten" and a.get("axis", 1) != 1:
                raise _NotMlp("Flatten with axis != 1")
            elif op == "Squeeze":
                raise _NotMlp("Squeeze at the output")
            steps.append(_Step("reshape_tail", value=consts.get(node.input[1]) if op == "Reshape" else None))
        else:
            break
        name = data[0]
    if not seen_linear:
        raise _NotMlp("no Gemm/MatMul with constant weights")
    steps.reverse()
    width = [s.value.shape[1] for s in steps if s.kind == "matmul" and s.value is not None][-1]
    for s in steps:
        if s.kind == "reshape_tail" and s.value is not None and int(s.value[1]) not in (-1, width):
            raise _NotMlp(f"a Reshape of [batch, {width}] to {s.value.tolist()}")
    # The prefix: everything the chain input depends on; it must use no weights that differ by member.
    prefix: list[onnx.NodeProto] = []
    needed = {name}
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            prefix.append(node)
            needed.update(i for i in node.input if i)
    prefix.reverse()
    canon: dict[str, tuple[Any, ...]] = {}
    for j, graph_input in enumerate(graph_inputs(model)):
        canon[graph_input.name] = ("input", j)
    sig: list[tuple[Any, ...]] = []
    for k, node in enumerate(prefix):
        ins: list[tuple[Any, ...]] = []
        for i in node.input:
            if not i:
                ins.append(("",))
            elif i in canon:
                ins.append(canon[i])
            elif i in consts:
                c = consts[i]
                ins.append(("const", c.dtype.str, c.shape, c.tobytes()))
            else:
                raise _NotMlp(f"prefix reads '{i}', which is not produced before it")
        attrs = tuple((a.name, a.SerializeToString()) for a in node.attribute if node.op_type != "Constant")
        for j, o in enumerate(node.output):
            canon[o] = ("node", k, j)
        sig.append((node.op_type, node.domain, attrs, tuple(ins)))
    sig.append(("chain_input", canon.get(name, ("?",))))
    if name not in canon and name not in inputs:
        raise _NotMlp("the chain input is not computed from the graph inputs")
    # Keep the prefix nodes that are not Constants feeding only the chain.
    return _Mlp(prefix, sig, name, steps, consts)


def _emit_grouped(
    steps: list[_Step],
    per_member: list[list[_Step]],
    x: str,
    out: str,
    inits: list[TensorProto],
    opset: int,
) -> list[onnx.NodeProto]:
    """Nodes computing every member's chain at once.

    Until the first weight the input ``x [batch, w]`` is shared. The first MatMul is one
    ``Gemm`` with the members' weights concatenated (``[K*out, w]``, input transposed),
    giving ``[K*out, batch]``; from there activations live as ``[1, K*w, batch]`` and each
    later MatMul is a grouped 1x1 ``Conv`` (``group=K``): one kernel call per layer, with
    the bias and the activation fused by onnxruntime. The end reshapes to ``[K, batch, out]``.
    (A plain batched ``MatMul [K, batch, in] x [K, in, out]`` measured slower than K separate
    sessions at batch 256, because broadcasting the ``[K, 1, out]`` bias was.)
    """
    k = len(per_member)
    nodes: list[onnx.NodeProto] = []
    counter = [0]

    def name(tag: str) -> str:
        counter[0] += 1
        return f"stacked/{counter[0]}_{tag}"

    def const(tag: str, value: np.ndarray) -> str:
        n = name(tag)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), n))
        return n

    def unsqueeze0(src: str) -> str:
        dst = name("unsqueeze")
        if opset >= 13:
            nodes.append(helper.make_node("Unsqueeze", [src, const("axes", np.array([0], np.int64))], [dst]))
        else:
            nodes.append(helper.make_node("Unsqueeze", [src], [dst], axes=[0]))
        return dst

    def values(i: int) -> list[np.ndarray]:
        return [np.asarray(m[i].value) for m in per_member]

    def signed(i: int) -> np.ndarray:  # [K, w] constants of an add/mul step, Sub and Div turned around
        v = np.stack(values(i)).astype(np.float32)
        if steps[i].op == "Sub":
            v = -v
        elif steps[i].op == "Div":
            v = (1.0 / v).astype(np.float32)
        return v

    grouped = False  # False: x is the shared [batch, w]; True: x is [1, K*w, batch]
    width = None
    i = 0
    while i < len(steps):
        step = steps[i]
        fold_bias = i + 1 < len(steps) and steps[i + 1].kind == "add"
        if step.kind == "matmul":
            ws = values(i)  # K x [in, out]
            width = ws[0].shape[1]
            bias = signed(i + 1) if fold_bias else np.zeros((k, width), np.float32)
            y = name("gemm" if not grouped else "conv")
            if not grouped:
                wcat = np.concatenate([w.T for w in ws], axis=0)  # [K*out, in]
                ins = [const("weight", wcat.astype(np.float32)), x, const("bias", bias.reshape(-1, 1))]
                nodes.append(helper.make_node("Gemm", ins, [y], name=y, transB=1))
                x = unsqueeze0(y)  # [1, K*out, batch]
                grouped = True
                continue_from = i + (2 if fold_bias else 1)
            else:
                wk = np.concatenate([w.T for w in ws], axis=0)[:, :, None]  # [K*out, in, 1]
                ins = [x, const("weight", wk.astype(np.float32)), const("bias", bias.reshape(-1))]
                nodes.append(helper.make_node("Conv", ins, [y], name=y, group=k, kernel_shape=[1]))
                x = y
                continue_from = i + (2 if fold_bias else 1)
            i = continue_from
            continue
        if step.kind in ("add", "mul"):
            v = signed(i)  # [K, w]
            op = "Add" if step.kind == "add" else "Mul"
            y = name(op.lower())
            if not grouped and all(np.array_equal(v[0], r) for r in v[1:]):
                nodes.append(helper.make_node(op, [x, const("const", v[0])], [y], name=y))
            else:
                if not grouped:  # member-specific constants before the first weight: replicate the input
                    t = name("transpose")
                    nodes.append(helper.make_node("Transpose", [x], [t], perm=[1, 0]))
                    tiled = name("tile")
                    reps = const("reps", np.array([1, k, 1], np.int64))
                    nodes.append(helper.make_node("Tile", [unsqueeze0(t), reps], [tiled]))
                    x, grouped = tiled, True
                if v.shape[1] == 1 and width is not None:
                    v = np.repeat(v, width, axis=1)
                nodes.append(helper.make_node(op, [x, const("const", v.reshape(1, -1, 1))], [y], name=y))
            x = y
        elif step.op in AXIS_ACTIVATIONS:
            if not grouped:
                y = name(step.op.lower())
                nodes.append(helper.make_node(step.op, [x], [y], name=y, axis=-1))
            else:  # softmax over each member's features: [1, K*w, B] -> [K, w, B] -> softmax(axis=1) -> back
                r, y, back = name("reshape"), name(step.op.lower()), name("reshape")
                nodes.append(
                    helper.make_node("Reshape", [x, const("shape", np.array([k, -1, 0], np.int64))], [r])
                )
                nodes.append(helper.make_node(step.op, [r], [y], name=y, axis=1))
                nodes.append(
                    helper.make_node("Reshape", [y, const("shape", np.array([1, -1, 0], np.int64))], [back])
                )
                y = back
            x = y
        else:
            y = name(step.op.lower())
            nodes.append(helper.make_node(step.op, [x], [y], name=y, **step.attrs))
            x = y
        i += 1
    if not grouped:
        raise _NotMlp("the chain has no weights")
    r = name("reshape")
    nodes.append(helper.make_node("Reshape", [x, const("shape", np.array([k, -1, 0], np.int64))], [r]))
    nodes.append(helper.make_node("Transpose", [r], [out], name="stacked/output", perm=[0, 2, 1]))
    return nodes


def _build_stacked(models: Sequence[tuple[str, onnx.ModelProto]]) -> onnx.ModelProto:
    """One graph with each MLP layer batched over members; raises _NotMlp where that is not possible."""
    mlps = [_analyse_mlp(m) for _, m in models]
    ref = mlps[0]
    for (label, _), mlp in zip(models[1:], mlps[1:], strict=False):
        if mlp.prefix_signature != ref.prefix_signature:
            raise _NotMlp(f"member {label} preprocesses its inputs differently")
        if [s.key() for s in mlp.steps] != [s.key() for s in ref.steps]:
            raise _NotMlp(f"member {label} has another layer structure")
    ref_model = models[0][1]
    k = len(models)
    out_vi = ref_model.graph.output[0]

    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    inputs = {i.name for i in graph_inputs(ref_model)}

    def shared(n: str) -> str:
        return n if (not n or n in inputs) else f"shared/{n}"

    for node in ref.prefix:
        new = copy.deepcopy(node)
        new.name = f"shared/{node.name}" if node.name else ""
        new.input[:] = [shared(i) for i in node.input]
        new.output[:] = [shared(o) for o in node.output]
        nodes.append(new)
    produced = {o for p in ref.prefix for o in p.output}
    for i in {i for p in ref.prefix for i in p.input if i}:
        if i in ref.consts and i not in produced:
            inits.append(numpy_helper.from_array(ref.consts[i], shared(i)))

    steps = list(ref.steps)
    while steps and steps[-1].kind == "reshape_tail":
        steps.pop()
    if not steps:
        raise _NotMlp("empty chain")
    if any(
        (value := m.steps[s].value) is not None and value.dtype != np.float32
        for m in mlps
        for s in range(len(steps))
    ):
        raise _NotMlp("only float32 weights are stacked")
    nodes += _emit_grouped(
        steps, [m.steps for m in mlps], shared(ref.chain_input), out_vi.name, inits, default_opset(ref_model)
    )

    out_sig = _tensor_sig(out_vi)
    out_shape = None if out_sig.shape is None else [k, *out_sig.shape]
    graph = helper.make_graph(
        nodes,
        f"ensemble_of_{k}_stacked",
        [copy.deepcopy(i) for i in graph_inputs(ref_model)],
        [helper.make_tensor_value_info(out_vi.name, out_sig.elem_type, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=list(ref_model.opset_import))
    model.ir_version = ref_model.ir_version
    return model


# --------------------------------------------------------------------------- parallel subgraphs


def _rename_graph(g: onnx.GraphProto, prefix: str, keep: set[str]) -> None:
    """Prefix every value, node and initializer name in ``g`` (and its subgraphs) except ``keep``."""

    def r(n: str) -> str:
        return n if (not n or n in keep) else prefix + n

    for node in g.node:
        node.input[:] = [r(i) for i in node.input]
        node.output[:] = [r(o) for o in node.output]
        if node.name:
            node.name = prefix + node.name
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _rename_graph(a.g, prefix, keep)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _rename_graph(sub, prefix, keep)
    for t in g.initializer:
        t.name = r(t.name)
    for sparse in g.sparse_initializer:
        sparse.values.name = r(sparse.values.name)
    for infos in (g.input, g.output, g.value_info):
        for vi in infos:
            vi.name = r(vi.name)


def _unify_opsets(
    models: Sequence[tuple[str, onnx.ModelProto]],
) -> tuple[list[onnx.ModelProto], dict[str, int]]:
    target = max(13, *(default_opset(m) for _, m in models))
    out: list[onnx.ModelProto] = []
    domains: dict[str, int] = {"": target}
    for label, m in models:
        if default_opset(m) != target:
            try:
                m = onnx.version_converter.convert_version(m, target)
            except Exception as e:
                raise EnsembleError(
                    f"member {label} uses opset {default_opset(m)} and cannot be converted to opset {target} "
                    f"used by the others ({type(e).__name__}: {e}); re-export it with opset {target}"
                ) from None
        for o in m.opset_import:
            if o.domain not in ("", "ai.onnx"):
                domains[o.domain] = max(domains.get(o.domain, 0), o.version)
        out.append(m)
    return out, domains


def _build_parallel(models: Sequence[tuple[str, onnx.ModelProto]]) -> onnx.ModelProto:
    converted, domains = _unify_opsets(models)
    ref = converted[0]
    k = len(models)
    ref_inputs = graph_inputs(ref)
    shared = {i.name for i in ref_inputs}
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    value_info: list[onnx.ValueInfoProto] = []
    functions: dict[tuple[str, str], onnx.FunctionProto] = {}
    member_outputs: list[list[str]] = []
    for idx, ((label, _), m) in enumerate(zip(models, converted, strict=False)):
        g = copy.deepcopy(m.graph)
        # Members may name their single input/output differently: point them at the shared names.
        mine = graph_inputs(m)
        alias = {a.name: b.name for a, b in zip(mine, ref_inputs, strict=False)}
        for node in g.node:
            node.input[:] = [alias.get(i, i) for i in node.input]
        _rename_graph(g, f"m{idx}/", shared)
        # Initializers that old exporters also listed as inputs stay initializers.
        nodes.extend(g.node)
        inits.extend(g.initializer)
        value_info.extend(g.value_info)
        member_outputs.append([o.name for o in g.output])
        for f in m.functions:
            key = (f.domain, f.name)
            if key in functions and functions[key].SerializeToString() != f.SerializeToString():
                raise EnsembleError(
                    f"member {label} defines function {f.domain}:{f.name} differently from another member; "
                    "re-export the members with the same exporter version"
                )
            functions[key] = f

    outputs = []
    axes = "stacked/axes0"
    if domains[""] >= 13:
        inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), axes))
    for j, out_vi in enumerate(ref.graph.output):
        parts = []
        for idx in range(k):
            u = f"stacked/{j}_m{idx}"
            if domains[""] >= 13:
                nodes.append(helper.make_node("Unsqueeze", [member_outputs[idx][j], axes], [u], name=u))
            else:
                nodes.append(helper.make_node("Unsqueeze", [member_outputs[idx][j]], [u], name=u, axes=[0]))
            parts.append(u)
        nodes.append(helper.make_node("Concat", parts, [out_vi.name], name=f"stacked/{j}_concat", axis=0))
        sig = _tensor_sig(out_vi)
        outputs.append(
            helper.make_tensor_value_info(
                out_vi.name, sig.elem_type, None if sig.shape is None else [k, *sig.shape]
            )
        )
    graph = helper.make_graph(
        nodes,
        f"ensemble_of_{k}_parallel",
        [copy.deepcopy(i) for i in ref_inputs],
        outputs,
        initializer=inits,
        value_info=value_info,
    )
    opsets = [helper.make_opsetid(d, v) for d, v in domains.items()]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions.values()))
    model.ir_version = max(m.ir_version for m in converted)
    return model


# --------------------------------------------------------------------------- public API


@dataclass
class CompileReport:
    """What :func:`compile_ensemble` did.

    Attributes:
        members: Number of members K.
        strategy: ``stacked`` or ``parallel``.
        why_not_stacked: Why the stacked strategy was not used ("" when it was).
        max_abs_diff: Largest |fused - member| over every output, member and random input.
        atol: The tolerance the verification used.
        outputs: ``{name: [K, *shape]}`` of each fused output at the verification batch size.
    """

    members: int
    strategy: str
    why_not_stacked: str
    max_abs_diff: float
    atol: float
    outputs: dict[str, list[int]]
    path: str = ""
    rtol: float = 1e-6
    checked_on: str = "random inputs"

    def summary(self) -> str:
        how = (
            "one kernel per layer for all members"
            if self.strategy == "stacked"
            else "parallel member subgraphs"
        )
        why = f" (not stacked: {self.why_not_stacked})" if self.why_not_stacked else ""
        outs = ", ".join(f"{n} {s}" for n, s in self.outputs.items())
        return (
            f"fused {self.members} members with the {self.strategy} strategy ({how}){why}; outputs {outs}.\n"
            f"verified: max abs diff {self.max_abs_diff:.3g} between the fused graph and the members "
            f"on {self.checked_on} (tolerance {self.atol:g} + {self.rtol:g}*|value|)"
        )


def load_member(path: str | Path) -> onnx.ModelProto:
    p = Path(path)
    if not p.is_file():
        raise EnsembleError(f"member {p} does not exist")
    try:
        model = onnx.load(str(p))
    except Exception as e:
        raise EnsembleError(f"member {p} is not an ONNX model: {e}") from None
    if not graph_inputs(model) or not model.graph.output:
        raise EnsembleError(f"member {p} has no inputs or no outputs")
    return model


def fuse(
    members: Sequence[tuple[str, onnx.ModelProto]], strategy: str = "auto"
) -> tuple[onnx.ModelProto, str]:
    """Fuse labelled member models; returns the model and why stacking was not used ("" if it was).

    Args:
        members: ``(label, model)`` pairs; labels name members in error messages.
        strategy: ``auto``, ``stacked`` or ``parallel``.

    Raises:
        EnsembleError: fewer than two members, mismatched signatures, or ``stacked``
            requested for members that are not MLPs of one architecture.
    """
    if len(members) < 2:
        raise EnsembleError(f"an ensemble needs at least 2 members, got {len(members)}")
    if strategy not in ("auto", "stacked", "parallel"):
        raise EnsembleError(f"strategy must be auto, stacked or parallel, not '{strategy}'")
    check_signatures(members)
    why = "parallel strategy requested"
    if strategy in ("auto", "stacked"):
        try:
            model = _build_stacked(members)
            model.metadata_props.append(onnx.StringStringEntryProto(key=META_STRATEGY, value="stacked"))
            model.metadata_props.append(
                onnx.StringStringEntryProto(key=META_MEMBERS, value=str(len(members)))
            )
            onnx.checker.check_model(model)
            return model, ""
        except _NotMlp as e:
            if strategy == "stacked":
                raise EnsembleError(f"cannot stack the members as one batched MLP: {e}") from None
            why = str(e)
    model = _build_parallel(members)
    model.metadata_props.append(onnx.StringStringEntryProto(key=META_STRATEGY, value="parallel"))
    model.metadata_props.append(onnx.StringStringEntryProto(key=META_MEMBERS, value=str(len(members))))
    onnx.checker.check_model(model)
    return model, why


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def random_feeds(session, batch: int, rng: np.random.Generator, int_high: int = 2) -> dict[str, np.ndarray]:
    """Random inputs for every input of ``session``: symbolic dims become ``batch`` (first) or 1.

    Floats are standard normal, integers uniform in ``[0, int_high)``, bools fair coins.
    """
    feeds: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        dtype = ORT_TO_NUMPY.get(inp.type)
        if dtype is None:
            raise EnsembleError(f"input '{inp.name}' has type {inp.type}, which verification cannot generate")
        shape, first = [], True
        for d in inp.shape:
            if isinstance(d, int) and d > 0:
                shape.append(d)
            else:
                shape.append(batch if first else 1)
                first = False
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[inp.name] = rng.random(shape) < 0.5
        else:
            feeds[inp.name] = rng.integers(0, int_high, size=shape).astype(dtype)
    return feeds


def verify(
    fused: onnx.ModelProto,
    members: Sequence[tuple[str, onnx.ModelProto]],
    batches: Sequence[int] = (1, 7, 64),
    seed: int = 0,
    atol: float = 1e-5,
    rtol: float = 1e-6,
    int_high: int = 2,
    feeds: Sequence[dict[str, np.ndarray]] = (),
) -> tuple[float, dict[str, list[int]]]:
    """Run the fused model and every member on the same inputs and compare every output.

    An element passes when ``|fused - member| <= atol + rtol * |member|``: float32
    carries about 7 significant digits, so a Q-value of 100 cannot be reproduced to
    1e-5 by a different (batched) kernel; ``rtol`` (8 ulp by default) covers that.

    Args:
        batches: Batch sizes of the random inputs (see :func:`random_feeds`).
        feeds: Extra input batches to check as well (e.g. rows of real data), keyed by
            the fused model's input names.

    Returns:
        The largest absolute difference, and the fused output shapes at the last batch.

    Raises:
        EnsembleError: an output differs by more than the tolerance (names member and
            output), or a model fails to run.
    """
    rng = np.random.default_rng(seed)
    fsess = _session(fused)
    try:
        msess = [(label, _session(m)) for label, m in members]
    except Exception as e:
        raise EnsembleError(f"a member cannot be loaded by onnxruntime: {e}") from None
    worst = 0.0
    shapes: dict[str, list[int]] = {}
    out_names = [o.name for o in fsess.get_outputs()]
    all_feeds = [random_feeds(fsess, b, rng, int_high) for b in batches] + list(feeds)
    for feed in all_feeds:
        batch = len(next(iter(feed.values())))
        try:
            fused_outs = fsess.run(None, feed)
        except Exception as e:
            raise EnsembleError(f"the fused ensemble fails to run on a batch of {batch}: {e}") from None
        for k, (label, sess) in enumerate(msess):
            names = [i.name for i in sess.get_inputs()]
            mine = dict(zip(names, feed.values(), strict=False))
            outs = sess.run(None, mine)
            for j, (name, ref) in enumerate(zip(out_names, outs, strict=False)):
                got = fused_outs[j][k]
                if got.shape != np.shape(ref):
                    raise EnsembleError(
                        f"fused output '{name}' for member {label} has shape {list(got.shape)}, the member "
                        f"gives {list(np.shape(ref))}"
                    )
                if got.size == 0:
                    continue
                ref64 = np.asarray(ref, np.float64)
                if np.issubdtype(got.dtype, np.number):
                    err = np.abs(got.astype(np.float64) - ref64)
                    diff = float(np.max(err))
                    ok = bool(np.all(err <= atol + rtol * np.abs(ref64)))
                else:
                    diff = float(np.any(got != ref))
                    ok = diff == 0
                if not ok:
                    raise EnsembleError(
                        f"fused output '{name}' differs from member {label} by {diff:.3g} "
                        f"(tolerance {atol:g} + "
                        f"{rtol:g}*|value|) on a batch of {batch}; the fusion is wrong, please report it"
                    )
                worst = max(worst, diff)
        shapes = {n: list(o.shape) for n, o in zip(out_names, fused_outs, strict=False)}
    return worst, shapes


def compile_ensemble(
    paths: Sequence[str | Path],
    output: str | Path,
    strategy: str = "auto",
    atol: float = 1e-5,
    rtol: float = 1e-6,
    kind: str | None = None,
    metadata: dict[str, str] | None = None,
    seed: int = 0,
    int_high: int = 2,
) -> CompileReport:
    """Fuse member files into ``output`` after verifying the fused graph against them.

    Args:
        paths: The K member ``.onnx`` files (K >= 2).
        output: Where to write the fused model (written only if verification passes).
        strategy: ``auto``, ``stacked`` or ``parallel``.
        atol: Largest allowed absolute difference between fused and member outputs.
        kind: Optional ensemble kind (``q``, ``policy``, ``dynamics``) recorded in metadata.
        metadata: Extra ``metadata_props`` to record.
        seed: Seed of the random verification inputs.
        int_high: Integer inputs are drawn from ``[0, int_high)``.
    """
    members = [(str(p), load_member(p)) for p in paths]
    model, why = fuse(members, strategy)
    extra = {**({META_KIND: kind} if kind else {}), **(metadata or {})}
    for key, value in extra.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    diff, shapes = verify(model, members, atol=atol, rtol=rtol, seed=seed, int_high=int_high)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return CompileReport(
        len(members), "stacked" if not why else "parallel", why, diff, atol, shapes, str(out)
    )
