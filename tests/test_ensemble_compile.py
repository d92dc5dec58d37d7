"""`interlock ensemble compile`: members from several tools fused and checked against every member."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from interlock.cli import main as ensemble_main
from interlock.ensembles import EnsembleError
from interlock.ensembles.compile import compile_ensemble
from tests.support.ensembles import mlp_onnx, q_ensemble_members, random_mlp, residual_onnx, run


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _check_equal(fused, members, feeds_by_member):
    """The fused output [K, batch, ...] equals each member's own output on the same input."""
    (out,) = run(fused, feeds_by_member[0])
    assert out.shape[0] == len(members)
    for k, (m, feeds) in enumerate(zip(members, feeds_by_member, strict=True)):
        (ref,) = run(m, feeds)
        np.testing.assert_allclose(out[k], ref, atol=1e-5, rtol=1e-6)


def test_hand_built_mlps_are_stacked_into_one_kernel_per_layer(tmp_path):
    rng = np.random.default_rng(1)
    members = [
        mlp_onnx(tmp_path / f"m{i}.onnx", random_mlp(rng, [4, 32, 32, 3]), final="Softmax") for i in range(5)
    ]
    report = compile_ensemble(members, tmp_path / "ens.onnx")
    assert report.strategy == "stacked" and report.members == 5 and report.why_not_stacked == ""
    assert report.max_abs_diff <= 1e-5 and report.outputs["q"] == [5, 64, 3]
    # one kernel per layer for all members (a Gemm, then grouped Convs), not one per member
    ops = _ops(tmp_path / "ens.onnx")
    assert ops.count("Gemm") == 1 and ops.count("Conv") == 2 and ops.count("MatMul") == 0
    compile_ensemble(members[:2], tmp_path / "ens2.onnx")
    assert _ops(tmp_path / "ens2.onnx") == ops
    obs = rng.standard_normal((9, 4)).astype(np.float32)
    _check_equal(tmp_path / "ens.onnx", members, [{"obs": obs}] * 5)


def test_gemm_members_stack_too(tmp_path):
    rng = np.random.default_rng(2)
    members = [
        mlp_onnx(tmp_path / f"g{i}.onnx", random_mlp(rng, [4, 8, 2]), use_gemm=True, activation="Relu")
        for i in range(3)
    ]
    report = compile_ensemble(members, tmp_path / "ens.onnx")
    assert report.strategy == "stacked"
    _check_equal(tmp_path / "ens.onnx", members, [{"obs": np.ones((1, 4), np.float32)}] * 3)


def test_non_mlp_members_run_as_parallel_subgraphs(tmp_path):
    rng = np.random.default_rng(3)
    # opset 11 members with different input names: renamed to the first member's, converted to opset 13
    members = [
        residual_onnx(tmp_path / f"r{i}.onnx", rng.standard_normal((3, 3)), input_name=f"in{i}")
        for i in range(3)
    ]
    report = compile_ensemble(members, tmp_path / "ens.onnx")
    assert report.strategy == "parallel" and report.why_not_stacked
    x = rng.standard_normal((6, 3)).astype(np.float32)
    _check_equal(tmp_path / "ens.onnx", members, [{f"in{i}": x} for i in range(3)])


def test_parallel_can_be_forced_and_stacked_refused_for_non_mlps(tmp_path):
    members = q_ensemble_members(tmp_path, k=3)
    assert compile_ensemble(members, tmp_path / "p.onnx", strategy="parallel").strategy == "parallel"
    res = [residual_onnx(tmp_path / f"r{i}.onnx", np.eye(3) * (i + 1)) for i in range(2)]
    with pytest.raises(EnsembleError, match="cannot stack"):
        compile_ensemble(res, tmp_path / "s.onnx", strategy="stacked")


def test_mismatched_member_is_refused_by_name(tmp_path):
    members = q_ensemble_members(tmp_path, k=2)
    rng = np.random.default_rng(4)
    odd = mlp_onnx(tmp_path / "three_actions.onnx", random_mlp(rng, [4, 16, 3]))
    with pytest.raises(
        EnsembleError, match=r"member .*three_actions.onnx: output 0 has shape .*\[batch, 3\]"
    ):
        compile_ensemble([*members, odd], tmp_path / "x.onnx")
    wide = mlp_onnx(tmp_path / "wide_obs.onnx", random_mlp(rng, [5, 16, 2]))
    with pytest.raises(EnsembleError, match=r"wide_obs.onnx: input 0 has shape"):
        compile_ensemble([members[0], wide], tmp_path / "x.onnx")
    with pytest.raises(EnsembleError, match="at least 2 members"):
        compile_ensemble(members[:1], tmp_path / "x.onnx")
    with pytest.raises(EnsembleError, match="does not exist"):
        compile_ensemble([members[0], tmp_path / "nope.onnx"], tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_exported_members(tmp_path):
    torch = pytest.importorskip("torch")
    paths = []
    for k in range(3):
        torch.manual_seed(k)
        net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        p = tmp_path / f"t{k}.onnx"
        torch.onnx.export(
            net,
            torch.zeros(1, 4),
            str(p),
            dynamo=False,
            input_names=["obs"],
            output_names=["q"],
            dynamic_axes={"obs": {0: "batch"}, "q": {0: "batch"}},
        )
        paths.append(p)
    report = compile_ensemble(paths, tmp_path / "ens.onnx")
    assert report.strategy == "stacked"
    obs = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    (fused,) = run(tmp_path / "ens.onnx", {"obs": obs})
    for k in range(3):
        torch.manual_seed(k)
        net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        np.testing.assert_allclose(fused[k], net(torch.as_tensor(obs)).detach().numpy(), atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_skl2onnx_members(tmp_path):
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.linear_model import Ridge
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    y = x @ rng.standard_normal(4) + 0.1 * rng.standard_normal(200)
    mlps, ridges = [], []
    for k in range(3):
        reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=50, random_state=k).fit(x, y)
        mlps.append(tmp_path / f"mlp{k}.onnx")
        onnx.save(to_onnx(reg, x[:1]), str(mlps[-1]))
        ridges.append(tmp_path / f"ridge{k}.onnx")
        onnx.save(to_onnx(Ridge(alpha=k + 1.0).fit(x, y), x[:1]), str(ridges[-1]))
    assert compile_ensemble(mlps, tmp_path / "mlp_ens.onnx").strategy == "stacked"
    # LinearRegressor (ai.onnx.ml) is no MatMul chain: parallel subgraphs, still equal to the members
    report = compile_ensemble(ridges, tmp_path / "ridge_ens.onnx")
    assert report.strategy == "parallel"
    _check_equal(tmp_path / "ridge_ens.onnx", ridges, [{"X": x[:7]}] * 3)


def test_cli_compile_reports_verification(tmp_path, capsys):
    members = q_ensemble_members(tmp_path, k=3)
    code = ensemble_main(["ensemble", "compile", *map(str, members), "-o", str(tmp_path / "e.onnx")])
    out = capsys.readouterr().out
    assert code == 0 and "stacked" in out and "verified: max abs diff" in out
    rng = np.random.default_rng(9)
    bad = mlp_onnx(tmp_path / "bad.onnx", random_mlp(rng, [4, 16, 5]))
    code = ensemble_main(["ensemble", "compile", str(members[0]), str(bad), "-o", str(tmp_path / "f.onnx")])
    assert code == 2 and "bad.onnx" in capsys.readouterr().err


def test_member_specific_input_scaling_and_a_sub_are_stacked(tmp_path):
    """Sub/Div by per-member constants before the first weight (an input scaler) still fuse exactly."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    paths = []
    for k in range(3):
        w, b = rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(2).astype(np.float32)
        mean, scale = rng.standard_normal(3).astype(np.float32), (1 + rng.random(3)).astype(np.float32)
        graph = helper.make_graph(
            [
                helper.make_node("Sub", ["x", "mean"], ["c"]),
                helper.make_node("Div", ["c", "scale"], ["s"]),
                helper.make_node("Gemm", ["s", "W", "B"], ["g"]),
                helper.make_node("Sigmoid", ["g"], ["y"]),
            ],
            "scaled",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
            initializer=[
                numpy_helper.from_array(a, n)
                for a, n in ((w, "W"), (b, "B"), (mean, "mean"), (scale, "scale"))
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        paths.append(tmp_path / f"s{k}.onnx")
        onnx.save(model, str(paths[-1]))
    assert compile_ensemble(paths, tmp_path / "e.onnx").strategy == "stacked"
    x = rng.standard_normal((4, 3)).astype(np.float32)
    _check_equal(tmp_path / "e.onnx", paths, [{"x": x}] * 3)
