"""Build the CartPole-v1 *backup* policy: a fixed linear controller, no training.

The observation is ``[x, x_dot, theta, theta_dot]``. With the score
``s = theta + 0.5*theta_dot + 0.01*x + 0.1*x_dot`` the controller pushes right
(action 1) when ``s > 0`` and left (action 0) otherwise: it pushes the cart under
the falling pole, with a small pull back toward the centre of the track.

The graph is one ``MatMul``: ``logits [batch, 2] = obs [batch, 4] @ W.T`` with
``W = [-w, +w]``, so ``logits[:, 1] - logits[:, 0] = 2*s`` and argmax gives the rule
above (a tie at ``s == 0`` gives action 0, as argmax takes the first maximum).

It is meant as a conservative fallback for Interlock's ``onnx_policy`` fallback
(``output: logits``). Usage::

    python examples/cartpole/make_backup_policy.py            # writes backup_policy.onnx here
    python examples/cartpole/make_backup_policy.py --episodes 0   # build only, skip evaluation
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
#: Gains on ``[x, x_dot, theta, theta_dot]``.
GAINS = np.array([0.01, 0.1, 1.0, 0.5], dtype=np.float32)
#: ONNX opset of the graph (MatMul is unchanged since 13).
OPSET = 13


def build_model(gains: np.ndarray = GAINS) -> onnx.ModelProto:
    """Make the linear controller as an ONNX model.

    Args:
        gains: float32 ``[4]``, weights of the score on ``[x, x_dot, theta, theta_dot]``.

    Returns:
        A checked model with input ``obs`` float32 ``[batch, 4]`` and output
        ``logits`` float32 ``[batch, 2]`` (``batch`` is a dynamic axis).
    """
    gains = np.asarray(gains, dtype=np.float32).reshape(4)
    weight_t = np.stack([-gains, gains], axis=1)  # [4, 2]: column 0 -> action 0, column 1 -> action 1
    graph = helper.make_graph(
        nodes=[helper.make_node("MatMul", ["obs", "W_T"], ["logits"], name="linear_controller")],
        name="cartpole_backup_linear",
        inputs=[helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 4])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(weight_t, name="W_T")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="interlock-examples")
    # Keep the file loadable by older onnxruntime releases.
    model.ir_version = 8
    model.doc_string = ("CartPole-v1 backup policy: push right (action 1) when "
                        f"{gains[2]}*theta + {gains[3]}*theta_dot + {gains[0]}*x + {gains[1]}*x_dot > 0.")
    helper.set_model_props(model, {"gains_x_xdot_theta_thetadot": ",".join(f"{g:g}" for g in gains)})
    onnx.checker.check_model(model, full_check=True)
    return model


def verify(path: Path, gains: np.ndarray = GAINS, n: int = 4096, seed: int = 0) -> None:
    """Check the saved model's argmax against the rule in numpy on random observations.

    Args:
        path: The saved ONNX file.
        gains: float32 ``[4]``, the gains the model was built with.
        n: Number of random observations ``[n, 4]``.
        seed: Seed of the random observations.
    """
    rng = np.random.default_rng(seed)
    obs = (rng.standard_normal((n, 4)) * np.array([1.0, 1.0, 0.1, 1.0])).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (obs[:1], obs):  # batch of 1 and of n: the batch axis is dynamic
        (logits,) = sess.run(["logits"], {"obs": batch})
        if logits.shape != (len(batch), 2) or logits.dtype != np.float32:
            raise SystemExit(f"unexpected output {logits.dtype} {logits.shape} for input {batch.shape}")
        score = batch.astype(np.float64) @ gains.astype(np.float64)
        clear = np.abs(score) > 1e-5  # skip float32 rounding ties
        want = (score > 0).astype(np.int64)
        got = logits.argmax(axis=1)
        if not np.array_equal(got[clear], want[clear]):
            raise SystemExit(f"{path}: ONNX actions differ from the linear rule")
        np.testing.assert_allclose(logits[:, 1], score, rtol=1e-5, atol=1e-5)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "backup_policy.onnx",
                        help="Where to write the model (default: examples/cartpole/backup_policy.onnx).")
    parser.add_argument("--episodes", type=int, default=20,
                        help="CartPole-v1 episodes to evaluate it on afterwards (0 to skip; default 20).")
    parser.add_argument("--seed", type=int, default=10_000, help="Reset seed of the first evaluation run.")
    args = parser.parse_args()

    model = build_model()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))
    verify(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes); ONNX argmax matches the linear rule")

    if args.episodes > 0:
        sys.path.insert(0, str(HERE))
        from evaluate import evaluate, load_session

        returns = evaluate(load_session(args.out), args.episodes, args.seed)
        print(f"backup policy: mean return {returns.mean():.1f} over {len(returns)} episodes "
              f"(min {returns.min():.0f}, max {returns.max():.0f})")


if __name__ == "__main__":
    main()
