"""Train the CartPole-v1 example agent with PPO (torch, CPU) and export it to ONNX.

The policy is an MLP ``4 -> 64 -> 64 -> 2`` (tanh) producing action logits; a
separate critic of the same width is used only during training. Training runs
``--num-envs`` CartPole-v1 environments side by side, stops early once greedy
evaluation on held-out seeds reaches ``--target``, and keeps the best policy seen.

The exported file has input ``obs`` float32 ``[batch, 4]`` and output ``logits``
float32 ``[batch, 2]`` with a dynamic ``batch`` axis. After export the script
checks onnxruntime against torch on random observations, then reports the mean
greedy return over ``--eval-episodes`` fresh episodes (seeds never used during
training or model selection) and exits non-zero if it is below ``--min-return``.

Usage (needs the ``train`` extra: ``pip install -e '.[train]'``)::

    python examples/cartpole/train_policy.py                # writes policy.onnx next to this file
    python examples/cartpole/train_policy.py --seed 1 --out /tmp/p.onnx

It took 40-165 s wall on 2 CPU cores shared with other jobs (seeds 0-3).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise SystemExit("train_policy.py needs torch: pip install -e '.[train]' (CPU wheel is enough)") from exc

HERE = Path(__file__).resolve().parent
OBS_DIM = 4
N_ACTIONS = 2
#: Reset seeds: training uses seed*1_000_000 + k, model selection and the final report use these.
SELECT_SEED = 500_000
REPORT_SEED = 900_000


@dataclass
class Hyper:
    """PPO hyper-parameters (defaults tuned for CartPole-v1 on 2 CPU cores)."""

    num_envs: int = 8
    rollout: int = 128
    total_steps: int = 400_000
    lr: float = 2.5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    epochs: int = 4
    minibatches: int = 4
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5


def mlp(out_dim: int, out_gain: float) -> nn.Sequential:
    """An orthogonally initialised MLP ``[batch, 4] -> [batch, out_dim]``.

    Args:
        out_dim: Width of the last layer.
        out_gain: Orthogonal-init gain of the last layer (small for the policy head).
    """
    layers = [nn.Linear(OBS_DIM, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, out_dim)]
    for layer, gain in zip(layers[::2], (np.sqrt(2), np.sqrt(2), out_gain), strict=True):
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class VecCartPole:
    """``n`` CartPole-v1 envs stepped together, with explicit reset on episode end.

    ``step`` returns the observation to act on next ``[n, 4]``, rewards ``[n]``,
    ``done`` ``[n]`` (episode ended, either way) and, for truncated episodes, the
    final observation so the critic can bootstrap from it.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.envs = [gym.make("CartPole-v1") for _ in range(n)]
        self._next_seed = seed
        self.obs = np.stack([self._reset(e) for e in self.envs])
        self.ep_return = np.zeros(n)
        self.finished: list[float] = []

    def _reset(self, env: gym.Env) -> np.ndarray:
        obs, _ = env.reset(seed=self._next_seed)
        self._next_seed += 1
        return obs

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """Step every env with ``actions [n]`` (int)."""
        n = len(self.envs)
        rewards = np.zeros(n, dtype=np.float32)
        done = np.zeros(n, dtype=bool)
        truncated_final: dict[int, np.ndarray] = {}
        for i, env in enumerate(self.envs):
            obs, reward, terminated, truncated, _ = env.step(int(actions[i]))
            rewards[i] = reward
            self.ep_return[i] += reward
            if terminated or truncated:
                done[i] = True
                if truncated and not terminated:
                    truncated_final[i] = obs
                self.finished.append(float(self.ep_return[i]))
                self.ep_return[i] = 0.0
                obs = self._reset(env)
            self.obs[i] = obs
        return self.obs.copy(), rewards, done, truncated_final


def greedy_returns(actor: nn.Module, episodes: int, seed: int) -> np.ndarray:
    """Greedy (argmax) returns of ``actor`` in torch, all episodes stepped in one batch.

    Args:
        actor: Maps ``[batch, 4]`` float32 to logits ``[batch, 2]``.
        episodes: Number of episodes; episode ``i`` is reset with ``seed + i``.
        seed: First reset seed.

    Returns:
        float64 ``[episodes]`` returns.
    """
    envs = [gym.make("CartPole-v1") for _ in range(episodes)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    returns = np.zeros(episodes)
    alive = np.ones(episodes, dtype=bool)
    with torch.no_grad():
        while alive.any():
            actions = actor(torch.as_tensor(obs, dtype=torch.float32)).argmax(dim=1).numpy()
            for i in np.flatnonzero(alive):
                obs[i], reward, terminated, truncated, _ = envs[i].step(int(actions[i]))
                returns[i] += reward
                alive[i] = not (terminated or truncated)
    return returns


def train(hp: Hyper, seed: int, target: float, select_episodes: int) -> tuple[nn.Module, dict[str, float]]:
    """Run PPO until greedy selection return reaches ``target`` or the step budget ends.

    Args:
        hp: Hyper-parameters.
        seed: Seeds torch, numpy and the training env resets.
        target: Greedy mean return on the selection seeds that stops training.
        select_episodes: Episodes per selection evaluation.

    Returns:
        The best actor seen (by selection return) and a dict of training figures.
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    actor, critic = mlp(N_ACTIONS, 0.01), mlp(1, 1.0)
    params = list(actor.parameters()) + list(critic.parameters())
    opt = torch.optim.Adam(params, lr=hp.lr, eps=1e-5)
    gen = torch.Generator().manual_seed(seed)

    env = VecCartPole(hp.num_envs, seed=seed * 1_000_000)
    n, t_len = hp.num_envs, hp.rollout
    batch = n * t_len
    updates = hp.total_steps // batch
    obs_buf = torch.zeros(t_len, n, OBS_DIM)
    act_buf = torch.zeros(t_len, n, dtype=torch.long)
    logp_buf = torch.zeros(t_len, n)
    rew_buf = torch.zeros(t_len, n)
    done_buf = torch.zeros(t_len, n)
    val_buf = torch.zeros(t_len, n)

    best_state, best_score = None, -np.inf
    obs = torch.as_tensor(env.obs, dtype=torch.float32)
    steps = 0
    bar = tqdm(total=updates * batch, desc="PPO CartPole-v1", unit="step", smoothing=0.1)
    for update in range(updates):
        for group in opt.param_groups:  # linear learning-rate annealing
            group["lr"] = hp.lr * (1.0 - update / updates)
        # Collect a rollout [t_len, n].
        with torch.no_grad():
            for t in range(t_len):
                logits = actor(obs)
                dist = torch.distributions.Categorical(logits=logits)
                action = torch.multinomial(dist.probs, 1, generator=gen).squeeze(1)
                obs_buf[t], act_buf[t] = obs, action
                logp_buf[t] = dist.log_prob(action)
                val_buf[t] = critic(obs).squeeze(1)
                next_obs, reward, done, truncated_final = env.step(action.numpy())
                reward = torch.as_tensor(reward)
                if truncated_final:  # time limit, not failure: bootstrap from the final state
                    idx = list(truncated_final)
                    final = torch.as_tensor(np.stack([truncated_final[i] for i in idx]), dtype=torch.float32)
                    reward[idx] += hp.gamma * critic(final).squeeze(1)
                rew_buf[t], done_buf[t] = reward, torch.as_tensor(done, dtype=torch.float32)
                obs = torch.as_tensor(next_obs, dtype=torch.float32)
            # Generalised advantage estimation.
            next_value = critic(obs).squeeze(1)
            adv = torch.zeros(t_len, n)
            last = torch.zeros(n)
            for t in reversed(range(t_len)):
                not_done = 1.0 - done_buf[t]
                nv = next_value if t == t_len - 1 else val_buf[t + 1]
                delta = rew_buf[t] + hp.gamma * nv * not_done - val_buf[t]
                last = delta + hp.gamma * hp.gae_lambda * not_done * last
                adv[t] = last
            ret = adv + val_buf
        steps += batch

        # PPO update on the flattened batch [t_len * n].
        b_obs, b_act = obs_buf.reshape(batch, OBS_DIM), act_buf.reshape(batch)
        b_logp, b_adv, b_ret = logp_buf.reshape(batch), adv.reshape(batch), ret.reshape(batch)
        mb = batch // hp.minibatches
        for _ in range(hp.epochs):
            perm = torch.randperm(batch, generator=gen)
            for start in range(0, batch, mb):
                i = perm[start:start + mb]
                dist = torch.distributions.Categorical(logits=actor(b_obs[i]))
                ratio = (dist.log_prob(b_act[i]) - b_logp[i]).exp()
                a = b_adv[i]
                a = (a - a.mean()) / (a.std() + 1e-8)
                pg_loss = torch.max(-a * ratio, -a * ratio.clamp(1 - hp.clip, 1 + hp.clip)).mean()
                v_loss = 0.5 * (critic(b_obs[i]).squeeze(1) - b_ret[i]).pow(2).mean()
                loss = pg_loss + hp.vf_coef * v_loss - hp.ent_coef * dist.entropy().mean()
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
                opt.step()

        recent = float(np.mean(env.finished[-20:])) if env.finished else 0.0
        bar.update(batch)
        bar.set_postfix(train_return=f"{recent:.0f}", best_greedy=f"{max(best_score, 0):.0f}")
        # Model selection: greedy evaluation on held-out seeds once training returns look good.
        if recent >= 0.9 * target or update == updates - 1:
            score = float(greedy_returns(actor, select_episodes, SELECT_SEED).mean())
            if score > best_score:
                best_score = score
                best_state = {k: v.clone() for k, v in actor.state_dict().items()}
            bar.set_postfix(train_return=f"{recent:.0f}", best_greedy=f"{best_score:.0f}")
            if best_score >= target:
                break
    bar.close()
    assert best_state is not None
    actor.load_state_dict(best_state)
    actor.eval()
    return actor, {"env_steps": steps, "updates": update + 1, "selection_return": best_score}


def export_onnx(actor: nn.Module, path: Path) -> None:
    """Export ``actor`` as ``obs [batch, 4] float32 -> logits [batch, 2] float32``.

    Args:
        actor: The trained policy network.
        path: Destination ``.onnx`` file (weights stored inline).
    """
    try:
        batch = torch.export.Dim("batch", min=1)
        with warnings.catch_warnings():  # torch-internal deprecation notes, not actionable here
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(actor, (torch.zeros(2, OBS_DIM),), input_names=["obs"],
                                        output_names=["logits"], dynamic_shapes=({0: batch},),
                                        dynamo=True, verbose=False)
    except ImportError as exc:
        raise SystemExit(f"ONNX export needs onnxscript ({exc}): pip install -e '.[train]'") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)


def verify_onnx(actor: nn.Module, path: Path, seed: int) -> float:
    """Compare onnxruntime with torch on random observations; return the max abs difference.

    Runs batches of 1 and 1024 (the batch axis must be dynamic) of observations
    spread a little wider than CartPole's own range.
    """
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    if (inp.name, inp.type, out.name, out.type) != ("obs", "tensor(float)", "logits", "tensor(float)"):
        raise SystemExit(f"{path}: unexpected signature {inp.name}:{inp.type} -> {out.name}:{out.type}")
    rng = np.random.default_rng(seed)
    scale = np.array([2.4, 3.0, 0.21, 3.0], dtype=np.float32)
    worst = 0.0
    for size in (1, 1024):
        obs = (rng.uniform(-1.5, 1.5, (size, OBS_DIM)) * scale).astype(np.float32)
        (got,) = sess.run(["logits"], {"obs": obs})
        with torch.no_grad():
            want = actor(torch.from_numpy(obs)).numpy()
        if got.shape != (size, N_ACTIONS) or got.dtype != np.float32:
            raise SystemExit(f"{path}: output {got.dtype} {got.shape}, expected float32 ({size}, 2)")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        if not np.array_equal(got.argmax(1), want.argmax(1)):
            raise SystemExit(f"{path}: ONNX and torch pick different actions")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "policy.onnx",
                        help="Where to write the ONNX policy (default: examples/cartpole/policy.onnx).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of torch, numpy, env resets (default 0).")
    parser.add_argument("--total-steps", type=int, default=Hyper.total_steps,
                        help=f"Environment-step budget (default {Hyper.total_steps}); training usually "
                             "stops earlier, once --target is reached.")
    parser.add_argument("--num-envs", type=int, default=Hyper.num_envs, help="Parallel training envs.")
    parser.add_argument("--target", type=float, default=500.0,
                        help="Greedy mean return on the selection seeds that ends training (default 500).")
    parser.add_argument("--select-episodes", type=int, default=20,
                        help="Episodes per model-selection evaluation (default 20).")
    parser.add_argument("--eval-episodes", type=int, default=20,
                        help="Fresh episodes for the final report (default 20).")
    parser.add_argument("--min-return", type=float, default=450.0,
                        help="Exit non-zero if the final mean return is below this (default 450).")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the networks are too small to gain from more).")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # exporter notes about torchvision ops
    hp = Hyper(num_envs=args.num_envs, total_steps=args.total_steps)
    start = time.perf_counter()
    actor, info = train(hp, args.seed, args.target, args.select_episodes)
    train_s = time.perf_counter() - start
    print(f"trained {info['updates']} updates / {info['env_steps']} env steps in {train_s:.0f}s; "
          f"selection greedy return {info['selection_return']:.1f}")

    export_onnx(actor, args.out)
    diff = verify_onnx(actor, args.out, args.seed)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes); onnxruntime matches torch "
          f"(max |diff| {diff:.2e})")

    sys.path.insert(0, str(HERE))
    from evaluate import evaluate, load_session

    returns = evaluate(load_session(args.out), args.eval_episodes, REPORT_SEED)
    print(f"ONNX policy: mean return {returns.mean():.1f} over {len(returns)} fresh episodes "
          f"(min {returns.min():.0f}, max {returns.max():.0f})")
    if returns.mean() < args.min_return:
        raise SystemExit(f"mean return {returns.mean():.1f} < --min-return {args.min_return}: "
                         "train longer (--total-steps) or try another --seed")


if __name__ == "__main__":
    main()
