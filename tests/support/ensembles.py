"""Small real ONNX members and CartPole data for the ensemble tests (onnx helper API, no training)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: The CartPole example (its dynamics ensemble: obs [B, 4] float32, action [B] int64 -> delta [5, B, 4]).
CARTPOLE_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cartpole"
#: A config's text for agent ``cartpole`` (observation [4], 2 actions) up to its list of monitors ...
CARTPOLE_HEAD = """
agents:
  - id: cartpole
    observation: {shape: [4], dtype: float32}
    action: {type: discrete, n: 2}
    monitors:
"""
#: ... and the empty policy that closes it (the transition tests read signals, not verdicts).
NO_RULES = "    policy:\n      rules: []\n"


def step(monitor, obs, actions, steps, episodes) -> dict[str, np.ndarray]:
    """One checked batch of agent ``cartpole`` whose proposed ``actions`` are executed (the monitor is
    told so, as the engine does); each signal's ``[batch]`` values."""
    from interlock.batch import Batch

    batch = Batch(
        "cartpole", np.asarray(obs, np.float32), np.asarray(actions, np.int64), np.asarray(steps), episodes
    )
    out = monitor.check(batch)
    monitor.after_decide(batch, np.asarray(actions, np.int64), np.ones(len(batch), bool))
    return {k: v.values for k, v in out.items()}


def policy_rollout(seed: int, steps: int, push: float = 0.0, dim: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``[T + 1, 4]`` observations and ``[T + 1]`` actions (the last unused) of the CartPole example
    policy; ``push`` is added to state element ``dim`` after every step (on the cart velocity: a
    constant force, a slope)."""
    import gymnasium as gym
    import onnxruntime as ort

    session = ort.InferenceSession(str(CARTPOLE_EXAMPLE / "policy.onnx"), providers=["CPUExecutionProvider"])
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    out, acts = [obs], []
    for _ in range(steps):
        a = int(session.run(None, {"obs": obs[None].astype(np.float32)})[0].argmax())
        acts.append(a)
        obs, _, terminated, truncated, _ = env.step(a)
        if push:
            u = env.unwrapped
            u.state = np.asarray(u.state, np.float64) + push * np.eye(4)[dim]
            obs = np.asarray(u.state, np.float32)
        out.append(obs)
        if terminated or truncated:
            break
    return np.stack(out), np.asarray([*acts, 0], np.int64)


def mlp_onnx(
    path: Path,
    weights: list[tuple[np.ndarray, np.ndarray]],
    activation: str = "Tanh",
    input_name: str = "obs",
    output_name: str = "q",
    opset: int = 17,
    use_gemm: bool = False,
    final: str | None = None,
) -> Path:
    """``x -> [MatMul+Add or Gemm] -> act -> ... -> out``, dynamic batch axis; ``final``: e.g. Softmax."""
    nodes, inits = [], []
    x = input_name
    for i, (w, b) in enumerate(weights):
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"W{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"B{i}"),
        ]
        last = i == len(weights) - 1
        y = output_name if last and final is None else f"z{i}"
        if use_gemm:
            nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"B{i}"], [y]))
        else:
            nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"]))
            nodes.append(helper.make_node("Add", [f"mm{i}", f"B{i}"], [y]))
        if not last:
            nodes.append(helper.make_node(activation, [y], [f"h{i}"]))
            y = f"h{i}"
        x = y
    if final is not None:
        nodes.append(helper.make_node(final, [x], [output_name], axis=-1))
    width_in, width_out = weights[0][0].shape[0], weights[-1][0].shape[1]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", width_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", width_out])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def random_mlp(rng: np.random.Generator, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (rng.standard_normal((a, b)) / np.sqrt(a), rng.standard_normal(b) * 0.1)
        for a, b in itertools.pairwise(sizes)
    ]


def residual_onnx(path: Path, w: np.ndarray, input_name: str = "x", output_name: str = "y") -> Path:
    """``y = x + tanh(x @ w)``: not a chain (two data paths), so it fuses as parallel subgraphs."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "W"], ["mm"]),
            helper.make_node("Tanh", ["mm"], ["t"]),
            helper.make_node("Add", [input_name, "t"], [output_name]),
        ],
        "residual",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", w.shape[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", w.shape[1]])],
        initializer=[numpy_helper.from_array(w.astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.save(model, str(path))
    return path


def q_ensemble_members(
    tmp: Path, k: int = 4, seed: int = 0, obs_dim: int = 4, n_actions: int = 2
) -> list[Path]:
    """K MLP Q-networks ``obs [batch, obs_dim] -> q [batch, n_actions]`` with different random weights."""
    rng = np.random.default_rng(seed)
    return [mlp_onnx(tmp / f"q{i}.onnx", random_mlp(rng, [obs_dim, 16, n_actions])) for i in range(k)]


def run(path: Path | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def cartpole_transitions(
    episodes: int = 20, epsilon: float = 0.2, seed: int = 0, **env_kwargs
) -> dict[str, np.ndarray]:
    """Real CartPole-v1 rollouts of a noisy balancing controller, in the transitions layout."""
    import gymnasium as gym

    env = gym.make("CartPole-v1", **env_kwargs)
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {
        k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "episode")
    }
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        while not done:
            greedy = int(obs[2] + 0.5 * obs[3] + 0.01 * obs[0] + 0.1 * obs[1] > 0)
            action = int(rng.integers(2)) if rng.random() < epsilon else greedy
            nxt, reward, term, trunc, _ = env.step(action)
            for key, v in zip(cols, (obs, action, reward, nxt, term, trunc, ep), strict=True):
                cols[key].append(v)
            obs, done = nxt, term or trunc
    env.close()
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["obs"] = out["obs"].astype(np.float32)
    out["next_obs"] = out["next_obs"].astype(np.float32)
    return out


def dynamics_members(
    tmp: Path, k: int = 3, seed: int = 0, obs_dim: int = 4, n_actions: int = 2
) -> list[Path]:
    """K dynamics MLPs ``obs, action -> delta`` (one-hot inside the graph), by the training exporter."""
    from interlock.ensembles.mlp import mlp_member

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(k):
        model = mlp_member(
            random_mlp(rng, [obs_dim + n_actions, 16, obs_dim]), "relu", "dynamics", obs_dim, n_actions
        )
        paths.append(tmp / f"dyn{i}.onnx")
        onnx.save(model, str(paths[-1]))
    return paths
