"""Evaluate a CartPole-v1 ONNX policy (``obs [batch, 4] -> logits [batch, 2]``) greedily.

Usage::

    python examples/cartpole/evaluate.py examples/cartpole/policy.onnx --episodes 20

Each episode ``i`` is reset with seed ``seed + i``; the action is the argmax of the
logits. Prints the mean, min and max return (500 is the CartPole-v1 maximum).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime as ort
from tqdm import tqdm


def load_session(path: str | Path) -> ort.InferenceSession:
    """Open an ONNX policy on the CPU provider.

    Args:
        path: Path to an ONNX file with input ``obs`` float32 ``[batch, 4]`` and
            output ``logits`` float32 ``[batch, 2]``.

    Returns:
        The onnxruntime session.
    """
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: run the script that makes it first "
                         "(train_policy.py or make_backup_policy.py in examples/cartpole/)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def evaluate(session: ort.InferenceSession, episodes: int, seed: int, progress: bool = True) -> np.ndarray:
    """Run greedy (argmax-of-logits) episodes of CartPole-v1.

    Args:
        session: Session whose input ``obs`` is float32 ``[batch, 4]`` and output
            ``logits`` is float32 ``[batch, 2]``.
        episodes: Number of episodes; episode ``i`` is reset with ``seed + i``.
        seed: First reset seed.
        progress: Show a tqdm bar.

    Returns:
        float64 ``[episodes]``: the undiscounted return of each episode.
    """
    env = gym.make("CartPole-v1")
    returns = np.zeros(episodes, dtype=np.float64)
    try:
        for i in tqdm(range(episodes), desc="evaluate", unit="ep", disable=not progress):
            obs, _ = env.reset(seed=seed + i)
            done = False
            while not done:
                (logits,) = session.run(["logits"], {"obs": obs.reshape(1, 4).astype(np.float32)})
                obs, reward, terminated, truncated, _ = env.step(int(np.argmax(logits[0])))
                returns[i] += float(reward)
                done = terminated or truncated
    finally:
        env.close()
    return returns


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="ONNX policy file (input 'obs' [batch,4], output 'logits').")
    parser.add_argument("--episodes", type=int, default=20, help="Evaluation episodes (default 20).")
    parser.add_argument("--seed", type=int, default=10_000, help="Reset seed of the first episode.")
    args = parser.parse_args()
    returns = evaluate(load_session(args.model), args.episodes, args.seed)
    print(f"{args.model}: mean return {returns.mean():.1f} over {len(returns)} episodes "
          f"(min {returns.min():.0f}, max {returns.max():.0f})")


if __name__ == "__main__":
    main()
