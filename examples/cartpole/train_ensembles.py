"""Train the CartPole example's uncertainty ensembles and calibrate their thresholds.

Makes, next to this script:

* ``q_ensemble.onnx``: 5 Q-networks ``obs [batch, 4] -> Q [5, batch, 2]`` (targets: discounted
  returns, gamma 0.99, of the logged behaviour), each with a randomized prior;
* ``dynamics_ensemble.onnx``: 5 models ``obs [batch, 4], action [batch] -> next_obs - obs
  [5, batch, 4]``;
* ``thresholds.json``: the thresholds of the ``q_doubt`` and ``novelty`` monitors of
  ``interlock.yaml`` at a 1% false-alarm rate, set on in-distribution episodes.

The data: ``policy.onnx`` (the PPO agent) acting in CartPole-v1, with 10% random actions so
the logged states cover a little more than the agent's own path. Usage::

    pip install -e '.[train]'
    python examples/cartpole/train_ensembles.py          # about a minute on 2 cores

The same steps by hand with the CLI::

    interlock ensemble train --kind q --data transitions.npz --members 5 --prior-scale 1 -o q_ensemble.onnx
    interlock ensemble train --kind dynamics --data transitions.npz --members 5 -o dynamics_ensemble.onnx
    interlock calibrate --config interlock.yaml --agent cartpole --data held_out.npz --false-alarm-rate 0.01
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime as ort
from tqdm import tqdm

HERE = Path(__file__).resolve().parent


def collect(
    episodes: int, epsilon: float, seed: int, policy: Path = HERE / "policy.onnx"
) -> dict[str, np.ndarray]:
    """Transitions of ``policy`` with ``epsilon`` random actions, in the layout of docs/ensembles.md."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(policy), opts, providers=["CPUExecutionProvider"])
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {
        k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "episode")
    }
    for ep in tqdm(range(episodes), desc=f"collecting (seed {seed})", unit="episode"):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        while not done:
            if rng.random() < epsilon:
                action = int(rng.integers(2))
            else:
                action = int(sess.run(None, {"obs": obs[None].astype(np.float32)})[0].argmax())
            nxt, reward, term, trunc, _ = env.step(action)
            for key, value in zip(cols, (obs, action, reward, nxt, term, trunc, ep), strict=True):
                cols[key].append(value)
            obs, done = nxt, term or trunc
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["obs"] = out["obs"].astype(np.float32)
    out["next_obs"] = out["next_obs"].astype(np.float32)
    return out


def main() -> None:
    from interlock.ensembles.train import TrainConfig, train_ensemble
    from interlock.monitors.calibrate import calibrate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=40, help="training episodes (default 40, ~20k steps)")
    p.add_argument("--epsilon", type=float, default=0.1, help="share of random actions in the logged data")
    p.add_argument("--out", type=Path, default=HERE, help="where to write the models (default: here)")
    args = p.parse_args()

    train = collect(args.episodes, args.epsilon, seed=0)
    held_out = collect(max(10, args.episodes // 2), args.epsilon, seed=100_000)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "held_out.npz", **held_out)
    q = train_ensemble(
        train,
        args.out / "q_ensemble.onnx",
        TrainConfig(kind="q", members=5, epochs=30, prior_scale=1.0, seed=0),
    )
    print(q.summary())
    dyn = train_ensemble(
        train, args.out / "dynamics_ensemble.onnx", TrainConfig(kind="dynamics", members=5, epochs=30, seed=1)
    )
    print(dyn.summary())
    if args.out == HERE:
        report = calibrate(
            HERE / "interlock.yaml", "cartpole", args.out / "held_out.npz", rate=0.01, holdout=0.5
        )
        print(report.summary())
    (args.out / "held_out.npz").unlink()


if __name__ == "__main__":
    main()
