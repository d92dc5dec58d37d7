"""Train what the CartPole recoverability example needs, and export it to ONNX.

    python examples/cartpole_recovery/train.py            # about a minute on 2 CPU cores

Writes beside this script:

* ``backup.onnx`` - the backup policy, logits ``[N, 2]``: a linear controller found by the
  cross-entropy method to recover from states anywhere inside the constraints and keep the
  cart near the centre, under randomised physics (pole mass and length, motor force), so
  that it is robust to the shift;
* ``agent.onnx`` - the agent's own policy, logits ``[N, 2]``, found the same way on nominal
  physics from near-upright starts only (the evidence runs it epsilon-greedy);
* ``dynamics.onnx`` - an ensemble of 5 MLPs (6 -> 64 -> 64 -> 4, ReLU) predicting the state
  change, trained with torch on 150k transitions of the real ``CartPole-v1`` (nominal physics,
  mixed random/backup behaviour from states spread over the track), each member on its own
  bootstrap sample. Layout: obs ``[N, 4]`` float32, action ``[N]`` int64 -> ``[5, N, 4]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cartpole_physics import NOMINAL, LinearPolicy, Physics, failed, step  # noqa: E402

from interlock.reachability.onnx_build import linear_logits, mlp_ensemble, save  # noqa: E402


def _score(
    gains: np.ndarray, starts: np.ndarray, physics: list[Physics], steps: int, centre: float
) -> np.ndarray:
    """Per candidate: share of starts survived for ``steps`` steps, minus ``centre`` x mean |x|."""
    score = np.zeros(len(gains))
    for p, s0 in zip(physics, starts, strict=True):
        s = np.repeat(s0[None], len(gains), axis=0)
        alive = np.ones(len(gains), dtype=bool)
        dist = np.zeros(len(gains))
        for _ in range(steps):
            s = step(s, (np.einsum("pi,pi->p", s, gains) > 0).astype(np.int64), p)
            alive &= ~failed(s)
            dist += alive * np.abs(s[:, 0])
        score += alive - centre * dist / steps
    return score / len(starts)


def cem(
    physics_sampler,
    start_box: np.ndarray,
    rng: np.random.Generator,
    iters: int = 20,
    pop: int = 48,
    elite: int = 8,
    n_starts: int = 16,
    steps: int = 300,
    centre: float = 0.2,
) -> np.ndarray:
    """Cross-entropy method over the 4 gains of a linear bang-bang controller (push right if k.s > 0).

    Each iteration scores every candidate on the same ``n_starts`` initial states, drawn
    uniformly in ``[-start_box, start_box]``, each with physics from ``physics_sampler``.
    """
    mean, std = np.array([0.0, 0.0, 10.0, 1.0]), np.array([2.0, 2.0, 5.0, 2.0])
    for _ in range(iters):
        cand = mean + std * rng.standard_normal((pop, 4))
        starts = rng.uniform(-start_box, start_box, (n_starts, 4))
        scores = _score(cand, starts, [physics_sampler(rng) for _ in range(n_starts)], steps, centre)
        best = cand[np.argsort(scores)[-elite:]]
        mean, std = best.mean(axis=0), best.std(axis=0) + 0.05
    return mean


def randomized(rng: np.random.Generator) -> Physics:
    return Physics(
        masspole=rng.uniform(0.05, 0.4), length=rng.uniform(0.25, 0.8), force_mag=rng.uniform(6.0, 12.0)
    )


def collect(backup: LinearPolicy, n_steps: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Transitions of the real CartPole-v1 (nominal): random starts over the track, mixed behaviour."""
    import gymnasium as gym

    env = gym.make("CartPole-v1").unwrapped
    S, A, S2 = [], [], []
    env.reset(seed=int(rng.integers(1 << 30)))
    while len(S) < n_steps:
        env.state = rng.uniform([-2.2, -1.5, -0.18, -1.5], [2.2, 1.5, 0.18, 1.5])
        eps = rng.choice([0.0, 0.2, 0.5, 1.0])
        for _ in range(200):
            s = np.array(env.state, dtype=np.float64)
            a = int(rng.integers(2)) if rng.random() < eps else int(backup.act(s)[0])
            _s2, _, term, _, _ = env.step(a)
            S.append(s)
            A.append(a)
            S2.append(np.array(env.state, dtype=np.float64))
            if term:
                break
    env.close()
    return np.array(S), np.array(A), np.array(S2)


def train_ensemble(S, A, S2, members: int, hidden: int, steps: int, seed: int):
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    X = np.concatenate([S, np.eye(2)[A]], axis=1)
    Y = S2 - S
    in_mean, in_std = X.mean(0), X.std(0) + 1e-6
    in_mean[4:], in_std[4:] = 0.0, 1.0  # leave the one-hot action as is
    out_mean, out_std = Y.mean(0), Y.std(0) + 1e-8
    Xn = torch.tensor((X - in_mean) / in_std, dtype=torch.float32)
    Yn = torch.tensor((Y - out_mean) / out_std, dtype=torch.float32)
    sizes = [X.shape[1], hidden, hidden, Y.shape[1]]
    params = []
    for i in range(3):
        W = torch.randn(members, sizes[i], sizes[i + 1]) * np.sqrt(2.0 / sizes[i])
        params += [W.requires_grad_(), torch.zeros(members, 1, sizes[i + 1], requires_grad=True)]
    opt = torch.optim.Adam(params, lr=1e-3)
    n = len(Xn)
    boot = torch.randint(0, n, (members, n))  # each member's bootstrap sample
    for it in range(steps):
        idx = torch.gather(boot, 1, torch.randint(0, n, (members, 512)))
        h = Xn[idx]
        for i in range(3):
            h = torch.baddbmm(params[2 * i + 1], h, params[2 * i])
            if i < 2:
                h = torch.relu(h)
        loss = ((h - Yn[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 1000 == 0:
            for g in opt.param_groups:
                g["lr"] = 1e-3 * (0.5 ** (it / steps * 3))
    Ws = [params[2 * i].detach().numpy() for i in range(3)]
    bs = [params[2 * i + 1].detach().numpy()[:, 0, :] for i in range(3)]
    return Ws, bs, in_mean, in_std, out_mean, out_std, float(loss.detach())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transitions", type=int, default=150_000)
    parser.add_argument("--train-steps", type=int, default=4000)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()

    # The backup must recover from anywhere inside the constraints, under any plausible physics.
    k_backup = cem(randomized, np.array([1.5, 1.0, 0.15, 1.0]), rng)
    backup = LinearPolicy(k_backup)
    save(linear_logits(*backup.weights()), args.out_dir / "backup.onnx")
    # The agent: tuned briefly, on nominal physics, from near-upright starts only.
    k_agent = cem(lambda r: NOMINAL, np.full(4, 0.05), rng, iters=4)
    agent = LinearPolicy(k_agent)
    save(linear_logits(*agent.weights()), args.out_dir / "agent.onnx")
    print(
        f"backup gains {np.round(k_backup, 3).tolist()}, agent gains {np.round(k_agent, 3).tolist()} "
        f"({time.perf_counter() - t0:.0f} s)"
    )

    S, A, S2 = collect(backup, args.transitions, rng)
    Ws, bs, im, isd, om, osd, loss = train_ensemble(
        S, A, S2, members=5, hidden=64, steps=args.train_steps, seed=args.seed
    )
    save(
        mlp_ensemble(Ws, bs, obs_dim=4, n_actions=2, in_mean=im, in_std=isd, out_mean=om, out_std=osd),
        args.out_dir / "dynamics.onnx",
    )
    print(
        f"dynamics ensemble: {len(S)} transitions, final normalised MSE {loss:.4f} "
        f"({time.perf_counter() - t0:.0f} s); wrote backup.onnx, agent.onnx, dynamics.onnx in {args.out_dir}"
    )


if __name__ == "__main__":
    main()
