"""Train a small DQN on highway-fast-v0 in nominal traffic and export its Q-network to ONNX.

The agent sees highway-env's default ``Kinematics`` observation (5 vehicles x 5 features:
presence, x, y, vx, vy; the ego row first, in absolute normalised coordinates, the four
nearest vehicles relative to the ego; see ``interlock.yaml`` for the normalisation) and
picks one of 5 discrete meta-actions (0 LANE_LEFT, 1 IDLE, 2 LANE_RIGHT, 3 FASTER, 4 SLOWER).

Nominal traffic (:data:`NOMINAL`): highway-fast-v0 with 20-step episodes, 15 vehicles at
``vehicles_density`` 1 and target speeds 10-30 m/s. Training uses Stable-Baselines3's DQN with
a 2x128 MLP (highway-env's own recipe, scaled down) and stops at ``--timesteps`` or
``--max-minutes``, whichever comes first. highway-env is slow (about 15 steps per second on an
idle core, 3 on a loaded 2-core machine), so the committed agent saw only a few thousand steps:
it is a weak driver (for lack of time, not by design), which leaves the guard plenty to do.

Output: ``agent.onnx`` next to this file, input ``obs`` [batch, 25] (the 5x5 observation
flattened in C order), output ``q`` [batch, 5]; greedy action = argmax.

Robust backup (``--density-range LOW,HIGH``): domain randomisation of the traffic, the LunarLander
``robust`` recipe. :class:`RandomDensity` draws ``vehicles_density`` uniformly in [LOW, HIGH] on every
reset, so the DQN learns to drive in nominal and dense traffic alike; ``--collision-reward`` (default
highway-env's -1) makes a crash cost more against speed. The Simplex handover of
``interlock_handover.yaml`` hands the car to such a backup once its detector sees dense traffic
(HANDOVER_RULE.md).

Run::

    pip install -e '.[train]' highway-env stable-baselines3
    SDL_VIDEODRIVER=dummy python examples/highway/train_agent.py            # ~10 min
    SDL_VIDEODRIVER=dummy python examples/highway/train_agent.py --max-minutes 2 --out /tmp/a.onnx
    # a robust backup for stock target speeds (HANDOVER_RULE.md)
    SDL_VIDEODRIVER=dummy python examples/highway/train_agent.py --target-speeds 20,25,30 \
        --density-range 1.0,2.5 --collision-reward -3 --timesteps 30000 --max-minutes 40 \
        --seed 2 --out examples/highway/backup_stock.onnx
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

HERE = Path(__file__).resolve().parent
ENV_ID = "highway-fast-v0"
#: Nominal traffic; src/interlock/bench/safety/highway.py evaluates in the same configuration.
NOMINAL = {
    "duration": 20,
    "vehicles_count": 15,
    "vehicles_density": 1.0,
    # SLOWER can brake to 10 m/s (highway-env's default target speeds are 20, 25, 30 m/s, too fast to
    # stay behind a slower vehicle); the reward for speed still counts only 20-30 m/s.
    "action": {"type": "DiscreteMetaAction", "target_speeds": [10.0, 15.0, 20.0, 25.0, 30.0]},
}
OBS_DIM = 25
N_ACTIONS = 5


def make_env(config: dict | None = None):
    """highway-fast-v0 with ``config`` over :data:`NOMINAL`; observation [5, 5] float32."""
    import gymnasium as gym
    import highway_env  # noqa: F401  (registers the environments)

    return gym.make(ENV_ID, config={**NOMINAL, **(config or {})})


def random_density_wrapper():
    """:class:`RandomDensity`, defined lazily so that importing this module needs no gymnasium."""
    import gymnasium as gym

    class RandomDensity(gym.Wrapper):
        """Draw ``vehicles_density`` uniformly in ``[low, high]`` before every reset.

        highway-env places the other vehicles at reset with spacing ``1 / vehicles_density``, so a
        config change before ``reset`` sets the traffic of that episode. The draw uses its own
        generator, seeded once, so it does not disturb the environment's seeding.
        """

        def __init__(self, env, low: float, high: float, seed: int) -> None:
            super().__init__(env)
            if not 0 < low <= high:
                raise ValueError(f"density range must satisfy 0 < low <= high, got [{low}, {high}]")
            self.low, self.high = float(low), float(high)
            self.rng = np.random.default_rng(seed)

        def reset(self, **kwargs):
            self.env.unwrapped.config["vehicles_density"] = float(self.rng.uniform(self.low, self.high))
            return self.env.reset(**kwargs)

    return RandomDensity


def train(timesteps: int, max_minutes: float, seed: int, config: dict | None = None,
          density_range: tuple[float, float] | None = None):
    """Train SB3 DQN in :data:`NOMINAL` updated by ``config``; returns the model.

    ``density_range`` (low, high): draw ``vehicles_density`` uniformly per episode (a robust
    backup); None keeps the config's density. Stops early at ``max_minutes`` of wall clock.
    """
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    torch.set_num_threads(1)  # a 2x128 MLP: threads only contend with the simulator

    env = make_env(config)
    if density_range is not None:
        env = random_density_wrapper()(env, *density_range, seed=seed)
    env.reset(seed=seed)
    model = DQN(
        "MlpPolicy",
        env,
        policy_kwargs={"net_arch": [128, 128]},
        learning_rate=5e-4,
        buffer_size=15_000,
        learning_starts=200,
        batch_size=32,
        gamma=0.8,  # highway-env's own DQN recipe (scripts/sb3_highway_dqn.py)
        train_freq=1,
        gradient_steps=1,
        target_update_interval=50,
        exploration_fraction=0.5,
        exploration_final_eps=0.05,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    deadline = time.monotonic() + 60 * max_minutes

    class Budget(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.bar = tqdm(total=timesteps, desc="training DQN", unit="step")
            self.crashes = 0
            self.episodes = 0

        def _on_step(self) -> bool:
            self.bar.update(1)
            for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
                if done:
                    self.episodes += 1
                    self.crashes += bool(info.get("crashed"))
                    self.bar.set_postfix(episodes=self.episodes, crash_rate=self.crashes / self.episodes)
            return time.monotonic() < deadline

    cb = Budget()
    model.learn(total_timesteps=timesteps, callback=cb)
    cb.bar.close()
    return model


def export(model, path: Path) -> None:
    """Write the Q-network as ONNX: ``obs`` [batch, 25] float32 -> ``q`` [batch, 5]."""
    import onnx
    import torch

    q_mlp = model.q_net.q_net.eval()  # the MLP after SB3's Flatten: [batch, 25] -> [batch, 5]
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(q_mlp, (torch.zeros(2, OBS_DIM),), input_names=["obs"],
                                    output_names=["q"], dynamic_shapes=({0: batch},),
                                    dynamo=True, verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def verify(model, path: Path, config: dict | None = None) -> float:
    """Max abs difference between onnxruntime and SB3 on real observations."""
    import onnxruntime as ort
    import torch

    env = make_env(config)
    obs = []
    o, _ = env.reset(seed=12345)
    for _ in range(10):
        obs.append(o.reshape(-1))
        o, _, term, trunc, _ = env.step(int(model.predict(o, deterministic=True)[0]))
        if term or trunc:
            o, _ = env.reset()
    x = np.asarray(obs, dtype=np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"obs": x})[0]
    with torch.no_grad():
        want = model.q_net(torch.as_tensor(x.reshape(-1, 5, 5))).numpy()
    return float(np.abs(got - want).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timesteps", type=int, default=3000, help="Most environment steps (default 3000).")
    p.add_argument("--max-minutes", type=float, default=10.0, help="Wall-clock budget (default 10).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "agent.onnx", help="ONNX file to write.")
    p.add_argument("--target-speeds", type=str, default=None,
                   help="Comma-separated target speeds of the meta-actions in m/s, e.g. "
                        "0,5,10,15,20,25,30 (the CPSS setting); default: NOMINAL's 10-30 m/s.")
    p.add_argument("--density-range", type=str, default=None,
                   help="LOW,HIGH: draw vehicles_density uniformly in [LOW, HIGH] per episode (domain "
                        "randomisation for a robust backup, e.g. 1.0,2.5); default: NOMINAL's 1.0.")
    p.add_argument("--collision-reward", type=float, default=None,
                   help="highway-env's collision_reward while training (its default -1; e.g. -3 for a "
                        "more cautious backup).")
    args = p.parse_args()
    config: dict = {}
    if args.target_speeds:
        speeds = [float(s) for s in args.target_speeds.split(",")]
        config["action"] = {"type": "DiscreteMetaAction", "target_speeds": speeds}
    if args.collision_reward is not None:
        config["collision_reward"] = args.collision_reward
    density_range = None
    if args.density_range:
        low, high = (float(v) for v in args.density_range.split(","))
        density_range = (low, high)
    t0 = time.monotonic()
    model = train(args.timesteps, args.max_minutes, args.seed, config or None, density_range)
    export(model, args.out)
    diff = verify(model, args.out, config or None)
    print(f"trained {model.num_timesteps} steps in {time.monotonic() - t0:.0f} s; wrote {args.out} "
          f"(max |onnx - torch| = {diff:.2e})")


if __name__ == "__main__":
    main()
