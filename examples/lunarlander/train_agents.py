"""Train the two LunarLander-v3 agents of the shift study and export them to ONNX.

* ``ppo``: our own agent. Stable-Baselines3 PPO, 2x64 tanh MLP (SB3's default), RL Zoo's
  LunarLander hyper-parameters (16 envs, n_steps 1024, gamma 0.999, GAE 0.98, 4 epochs, entropy
  0.01), trained without wind. Exported as ``ppo_agent.onnx``: ``obs`` float32 [batch, 8] ->
  ``logits`` float32 [batch, 4] (greedy action = argmax).
* ``dqn``: a structurally different agent used ONLY for held-out evaluation ("an agent Interlock has
  never seen"): SB3 DQN, 2x256 ReLU Q-network, RL Zoo's LunarLander hyper-parameters except one
  gradient step per 4 env steps (RL Zoo: 4), for lack of CPU. Exported as
  ``dqn_agent.onnx``: ``obs`` [batch, 8] -> ``q`` [batch, 4] (greedy action = argmax). Neither its data
  nor its returns are used for any design choice in this directory.
* ``a2c``: a second evaluation-only agent of another kind (issue 11 follow-up): SB3 A2C, 2x64 tanh
  MLP, RL Zoo's LunarLander hyper-parameters (8 envs, n_steps 5, gamma 0.995, learning rate 8.3e-4
  decaying linearly, entropy 1e-5), trained without wind. Exported as ``a2c_agent.onnx`` (logits).
  Like the DQN, used for nothing but the final evaluation.
* ``robust``: the Simplex backup: PPO from scratch, each episode in a randomly drawn world (wind
  0-20, turbulence 0-2, main engine x0.5-1.1; ``RandomisedDynamics``), selected on its return in
  wind (15, 1.5). Exported as ``robust_agent.onnx`` (logits). ``--resume-from`` continues a backup;
  ``--main-range`` and ``--wind-range`` narrow its worlds for a specialist (round 14's weak engine,
  round 34's wind: ``--wind-range 10,20`` keeps the wind always on).
* ``ppo_wind``: a wind-robust backup for the response study: our PPO agent's checkpoint trained on
  for 400k more steps in randomised wind (16 envs, wind_power 0-20, turbulence 0-2), selected on
  its return in wind (15, 1.5) on the selection seeds. Exported as ``ppo_wind_agent.onnx`` (logits).

Training stops at ``--timesteps`` or ``--max-minutes``, whichever comes first. Every ``--eval-every``
steps the greedy policy is scored on 10 *selection* episodes (reset seeds 300_000 + k, disjoint from
the development and evaluation seeds of README.md) and the best snapshot is kept. The final report
(mean greedy return and crash rate over 50 development-seed episodes, seeds 0..49) is printed and
written to ``agents.json``.

Seeds (see README.md): SB3 seeds its vector envs with ``--seed`` (1_000_000 for PPO, 2_000_000 for
DQN); later training resets draw from the envs' own generators, not from a listed seed.

Run (one core, nice; each ~10-15 min on a shared 2-core machine)::

    nice -n 10 python examples/lunarlander/train_agents.py ppo
    nice -n 10 python examples/lunarlander/train_agents.py dqn
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np

HERE = Path(__file__).resolve().parent
ENV_ID = "LunarLander-v3"
OBS_DIM = 8
N_ACTIONS = 4
SELECT_SEED = 300_000  # model selection during training
REPORT_SEEDS = range(0, 50)  # development seeds (README.md)
WIND = {"enable_wind": True, "wind_power": 15.0, "turbulence_power": 1.5}


def greedy_episodes(act, seeds, env_kwargs: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run one greedy episode per reset seed.

    Args:
        act: ``[8] float32 -> int`` greedy action.
        seeds: reset seeds.
        env_kwargs: extra ``gym.make`` arguments (e.g. wind).

    Returns:
        ``(returns [n], crashed [n] bool)``; crashed = the terminal step's reward is -100.
    """
    env = gym.make(ENV_ID, **(env_kwargs or {}))
    returns, crashed = [], []
    for s in seeds:
        o, _ = env.reset(seed=int(s))
        total, done, r = 0.0, False, 0.0
        term = False
        while not done:
            o, r, term, trunc, _ = env.step(int(act(o)))
            total += float(r)
            done = term or trunc
        returns.append(total)
        crashed.append(bool(term and r == -100))
    env.close()
    return np.asarray(returns), np.asarray(crashed)


def _sb3_act(model):
    def act(o):
        return int(model.predict(o, deterministic=True)[0])

    return act


def wind_vec_env(seed: int):
    """16 LunarLander-v3 envs with randomised wind: env i has wind_power 20*i/15, turbulence 2*i/15."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    def maker(i: int):
        def make():
            return Monitor(gym.make(ENV_ID, enable_wind=i > 0, wind_power=20.0 * i / 15,
                                    turbulence_power=2.0 * i / 15))

        return make

    env = DummyVecEnv([maker(i) for i in range(16)])
    env.seed(seed)
    return env


class RandomisedDynamics(gym.Wrapper):
    """Domain randomisation for the robust backup: each episode draws its own world.

    wind_power ~ U(0, 20) and turbulence_power ~ U(0, 2) (wind off in a quarter of episodes), and
    the main engine's power x U(0.5, 1.1). Gymnasium reads ``MAIN_ENGINE_POWER`` from its module at
    every ``step()``, so it is set before each step of this env (``DummyVecEnv`` steps its envs one
    after another, so envs do not see each other's value).

    With ``wind_range`` (a wind specialist, round 34) the wind is always on, wind_power ~ U(*wind_range)
    and turbulence_power ~ U(*wind_range) / 10 (the shift's 15 / 1.5 keeps that ratio).
    """

    def __init__(self, env: gym.Env, seed: int, main_range: tuple[float, float] = (0.5, 1.1),
                 wind_range: tuple[float, float] | None = None) -> None:
        super().__init__(env)
        self.rng = np.random.default_rng(seed)
        self.main_range = main_range
        self.wind_range = wind_range
        self.main_scale = 1.0

    def reset(self, **kwargs):
        rng = self.rng
        lander = self.env.unwrapped
        if self.wind_range is None:
            lander.enable_wind = bool(rng.random() > 0.25)
            lander.wind_power = float(rng.uniform(0.0, 20.0))
            lander.turbulence_power = float(rng.uniform(0.0, 2.0))
        else:
            lander.enable_wind = True
            lander.wind_power = float(rng.uniform(*self.wind_range))
            lander.turbulence_power = float(rng.uniform(*self.wind_range)) / 10.0
        self.main_scale = float(rng.uniform(*self.main_range))
        return self.env.reset(**kwargs)

    def step(self, action):
        from interlock.bench.safety.lunarlander import main_engine_power

        with main_engine_power(self.main_scale):
            return self.env.step(action)


def robust_vec_env(seed: int, main_range: tuple[float, float] = (0.5, 1.1),
                   wind_range: tuple[float, float] | None = None):
    """16 LunarLander-v3 envs, each episode in a randomly drawn world (``RandomisedDynamics``)."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    def maker(i: int):
        return lambda: Monitor(RandomisedDynamics(gym.make(ENV_ID), seed + 1000 + i, main_range,
                                                        wind_range))

    env = DummyVecEnv([maker(i) for i in range(16)])
    env.seed(seed)
    return env


def build(kind: str, seed: int, main_range: tuple[float, float] = (0.5, 1.1),
          wind_range: tuple[float, float] | None = None):
    """A fresh SB3 model (``ppo`` or ``dqn``) on LunarLander-v3 without wind, or (``ppo_wind``) our PPO
    agent's checkpoint ``data/ppo_agent.zip`` set up to continue training in randomised wind."""
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.env_util import make_vec_env

    if kind == "ppo_wind":
        return PPO.load(HERE / "data" / "ppo_agent.zip", env=wind_vec_env(seed), device="cpu", seed=seed)

    if kind == "a2c":
        from stable_baselines3 import A2C

        start_lr = 8.3e-4
        return A2C(
            "MlpPolicy",
            make_vec_env(ENV_ID, n_envs=8, seed=seed),
            n_steps=5,
            gamma=0.995,
            learning_rate=lambda progress: start_lr * progress,  # RL Zoo: lin_0.00083
            ent_coef=1e-5,
            seed=seed,
            device="cpu",
            verbose=0,
        )
    if kind in ("ppo", "robust"):
        if kind == "robust":
            env = robust_vec_env(seed, main_range, wind_range)
        else:
            env = make_vec_env(ENV_ID, n_envs=16, seed=seed)
        return PPO(
            "MlpPolicy",
            env,
            n_steps=1024,
            batch_size=64,
            gae_lambda=0.98,
            gamma=0.999,
            n_epochs=4,
            ent_coef=0.01,
            seed=seed,
            device="cpu",
            verbose=0,
        )
    env = make_vec_env(ENV_ID, n_envs=1, seed=seed)
    return DQN(
        "MlpPolicy",
        env,
        learning_rate=6.3e-4,
        batch_size=128,
        buffer_size=50_000,
        learning_starts=0,
        gamma=0.99,
        target_update_interval=250,
        train_freq=4,
        gradient_steps=1,  # RL Zoo uses 4 (-1); 1 is 4x cheaper, which a shared 2-core machine needs
        exploration_fraction=0.12,
        exploration_final_eps=0.1,
        policy_kwargs={"net_arch": [256, 256]},
        seed=seed,
        device="cpu",
        verbose=0,
    )


def train(
    kind: str,
    timesteps: int,
    max_minutes: float,
    seed: int,
    eval_every: int,
    log,
    resume: str | None = None,
    main_range: tuple[float, float] = (0.5, 1.1),
    select_world: str = "wind",
    wind_range: tuple[float, float] | None = None,
    select_episodes: int | None = None,
):
    """Train with a wall-clock budget; returns ``(best model snapshot, its selection return, steps)``.

    ``resume``: the stem of a checkpoint in ``data/`` to continue from; ``main_range``: the robust
    backup's main-engine scale range; ``select_world``: where snapshots are compared (robust / ppo_wind:
    ``wind`` or ``weak_main``, 20 episodes there; other kinds: the nominal world); ``wind_range``: the
    robust backup's wind, always on (:class:`RandomisedDynamics`); ``select_episodes``: selection
    episodes per snapshot instead of the default 10 (20 for weak_main)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    from interlock.bench.safety.lunarlander import main_engine_power

    model = build(kind, seed, main_range, wind_range)
    if resume:
        if kind not in ("ppo", "robust"):
            raise SystemExit("--resume is implemented for ppo and robust only")
        model = PPO.load(HERE / "data" / f"{resume}.zip", env=model.get_env(), device="cpu", seed=seed)
        log(f"resumed from data/{resume}.zip ({model.num_timesteps} steps)")
    shifted = kind in ("ppo_wind", "robust")
    n_select = select_episodes or (20 if shifted and select_world == "weak_main" else 10)
    select_seeds = range(SELECT_SEED, SELECT_SEED + n_select)
    deadline = time.monotonic() + 60 * max_minutes
    best = {"ret": -np.inf, "params": None, "steps": 0}

    class Select(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next_eval = eval_every

        def _on_training_start(self) -> None:  # a resumed model starts counting where it left off
            self.next_eval = self.model.num_timesteps + eval_every

        def _evaluate(self) -> None:
            weak = shifted and select_world == "weak_main"
            with main_engine_power(0.6 if weak else 1.0):
                rets, crashes = greedy_episodes(_sb3_act(self.model), select_seeds,
                                                WIND if shifted and not weak else None)
            log(f"{kind} step {self.num_timesteps}: selection return {rets.mean():.1f}, "
                f"crashes {crashes.mean():.0%}")
            if rets.mean() > best["ret"]:
                best.update(ret=float(rets.mean()), params=copy.deepcopy(self.model.policy.state_dict()),
                            steps=self.num_timesteps)

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self.next_eval += eval_every
                self._evaluate()
            if time.monotonic() > deadline:
                log(f"{kind}: wall-clock budget of {max_minutes} min reached at step {self.num_timesteps}")
                self._evaluate()
                return False
            return True

        def _on_training_end(self) -> None:
            if self.num_timesteps > best["steps"]:
                self._evaluate()

    model.learn(total_timesteps=timesteps, callback=Select(), reset_num_timesteps=not resume)
    model.policy.load_state_dict(best["params"])
    return model, best["ret"], best["steps"]


def export(model, kind: str, path: Path) -> float:
    """Write ``obs [batch, 8] -> logits|q [batch, 4]`` and return max |onnx - torch| on real states."""
    import onnx
    import onnxruntime as ort
    import torch

    policy = model.policy.eval()
    if kind.startswith("ppo") or kind in ("robust", "a2c"):  # actor-critic policies: logits

        class Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.extractor = policy.mlp_extractor.policy_net
                self.head = policy.action_net

            def forward(self, obs):
                return self.head(self.extractor(obs))

        net, out_name = Logits(), "logits"
    else:
        net, out_name = policy.q_net.q_net, "q"  # after SB3's Flatten: [batch, 8] -> [batch, 4]
    net = net.eval()
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.zeros(2, OBS_DIM),), input_names=["obs"],
                                    output_names=[out_name], dynamic_shapes=({0: batch},),
                                    dynamo=True, verbose=False)
    program.save(str(path), external_data=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    env = gym.make(ENV_ID)
    o, _ = env.reset(seed=SELECT_SEED - 1)
    xs = []
    for _ in range(200):
        xs.append(o)
        o, _, term, trunc, _ = env.step(int(model.predict(o, deterministic=True)[0]))
        if term or trunc:
            o, _ = env.reset()
    x = np.asarray(xs, np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"obs": x})[0]
    with torch.no_grad():
        want = net(torch.as_tensor(x)).numpy()
    agree = (got.argmax(1) == np.array([model.predict(v, deterministic=True)[0] for v in x])).mean()
    if agree < 1.0:
        raise SystemExit(f"exported {path} disagrees with SB3's greedy action on {1 - agree:.1%} of states")
    return float(np.abs(got - want).max())


def _wind_report(model) -> dict:
    rets, crashes = greedy_episodes(_sb3_act(model), REPORT_SEEDS, WIND)
    return {"dev_wind_mean_return_50ep": float(rets.mean()),
            "dev_wind_crash_rate_50ep": float(crashes.mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["ppo", "dqn", "ppo_wind", "robust", "a2c"])
    p.add_argument("--timesteps", type=int, default=None, help="default: ppo 1M, dqn 250k, ppo_wind 400k")
    p.add_argument("--max-minutes", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=None, help="default: ppo 1_000_000, dqn 2_000_000")
    p.add_argument("--eval-every", type=int, default=None, help="default: ppo 100_000, dqn 25_000")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--resume", action="store_true",
                   help="continue from data/<kind>_agent.zip (written by an earlier run)")
    p.add_argument("--resume-from", default=None,
                   help="continue from data/<NAME>.zip instead (e.g. robust2_agent; implies --resume)")
    p.add_argument("--main-range", default="0.5,1.1",
                   help="robust: the main engine's power scale range per episode (default 0.5,1.1)")
    p.add_argument("--select-world", choices=["wind", "weak_main"], default="wind",
                   help="robust / ppo_wind: the world snapshots are selected in (weak_main: main x0.6)")
    p.add_argument("--wind-range", default=None,
                   help="robust: wind always on, wind_power drawn in LOW,HIGH per episode and turbulence in "
                        "LOW/10,HIGH/10 (default: wind off in a quarter of episodes, else 0-20 / 0-2)")
    p.add_argument("--select-episodes", type=int, default=None,
                   help="selection episodes per snapshot (default 10; 20 with --select-world weak_main)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    kind = args.kind
    default_steps = {
        "ppo": 1_000_000, "dqn": 250_000, "ppo_wind": 400_000, "robust": 2_000_000, "a2c": 1_000_000
    }
    timesteps = args.timesteps or default_steps[kind]
    default_seed = {
        "ppo": 1_000_000, "dqn": 2_000_000, "ppo_wind": 3_000_000, "robust": 4_000_000, "a2c": 5_000_000
    }[kind]
    seed = default_seed if args.seed is None else args.seed
    resume = args.resume_from or (f"{kind}_agent" if args.resume else None)
    if resume:
        seed += 1  # a continued run gets fresh env seeds
    lo, hi = (float(v) for v in args.main_range.split(","))
    default_every = {"ppo": 100_000, "dqn": 25_000, "ppo_wind": 100_000, "robust": 100_000, "a2c": 50_000}
    eval_every = args.eval_every or default_every[kind]
    out = args.out or HERE / f"{kind}_agent.onnx"
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.0f}s] {msg}", flush=True)

    model, sel_ret, steps = train(
        kind, timesteps, args.max_minutes, seed, eval_every, log, resume, (lo, hi), args.select_world,
        tuple(float(v) for v in args.wind_range.split(",")) if args.wind_range else None,
        args.select_episodes,
    )
    (HERE / "data").mkdir(exist_ok=True)
    model.save(HERE / "data" / f"{out.stem}.zip")  # SB3 checkpoint (not committed), saved before the export
    diff = export(model, kind, out)
    rets, crashes = greedy_episodes(_sb3_act(model), REPORT_SEEDS)
    summary = {
        "kind": kind,
        "onnx": out.name,
        "seed": seed,
        "snapshot_steps": steps,
        "trained_steps": int(model.num_timesteps),
        "selection_return_10ep": sel_ret,
        "dev_mean_return_50ep": float(rets.mean()),
        "dev_crash_rate_50ep": float(crashes.mean()),
        **_wind_report(model),
        "max_abs_onnx_minus_torch": diff,
        "wall_seconds": round(time.monotonic() - t0),
    }
    log(json.dumps(summary))
    report = HERE / "agents.json"
    allr = json.loads(report.read_text()) if report.exists() else {}
    allr[out.stem.removesuffix("_agent")] = summary  # dqn_dev_agent.onnx -> "dqn_dev"
    report.write_text(json.dumps(allr, indent=2) + "\n")


if __name__ == "__main__":
    main()
