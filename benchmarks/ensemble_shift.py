"""Evidence: do the ensembles' uncertainty scores separate shifted states from familiar ones?

For each environment (CartPole-v1 and, when box2d is installed, LunarLander-v3):

1. A fixed controller with 10% random actions logs in-distribution episodes: training
   episodes, calibration episodes and test episodes (different seeds).
2. ``interlock ensemble train`` trains three 5-member ensembles (q, dynamics, policy;
   randomized priors) on the training episodes.
3. ``interlock calibrate`` sets every threshold of an ``uncertainty`` monitor config at a
   1% false-alarm rate on the calibration episodes.
4. The Guard's monitors score the in-distribution *test* episodes (false-alarm rate at the
   calibrated thresholds) and episodes run by the same controller in shifted environments
   (changed physics, wind, weaker engines, sensor noise). Per shift and signal it reports
   the AUROC of the score (shifted states vs in-distribution test states, every step of
   every episode) and the share of shifted states flagged at the threshold.

Run (about 3-5 minutes on 2 cores)::

    python -m benchmarks.ensemble_shift              # all environments
    python -m benchmarks.ensemble_shift --env cartpole --json results.json

Needs the ``train`` extra (torch) and, for LunarLander, ``gymnasium[box2d]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import yaml

SIGNALS = ("dynamics.disagreement", "q.q_std", "policy.mutual_info")
RATE = 0.01


def auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    x = np.concatenate([negative, positive])
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_x, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class Shift:
    name: str
    make: Callable[[], gym.Env]
    obs_noise: float = 0.0  # std of Gaussian noise added to each observation, as a share of the data std
    note: str = ""


@dataclass
class EnvSpec:
    name: str
    make: Callable[[], gym.Env]
    controller: Callable[[gym.Env, np.ndarray], int]
    shifts: list[Shift]
    train_episodes: int
    calib_episodes: int
    eval_episodes: int
    max_steps: int
    epochs: int
    results: dict = field(default_factory=dict)


def rollouts(
    make,
    controller,
    episodes: int,
    seed: int,
    epsilon: float = 0.1,
    max_steps: int = 500,
    obs_noise: np.ndarray | float = 0.0,
) -> dict[str, np.ndarray]:
    """Transitions (docs/ensembles.md layout) of ``controller`` with ``epsilon`` random actions.

    With ``obs_noise`` the controller *and* the logged observations see noisy sensors.
    """
    env = make()
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {
        k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "episode")
    }
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        seen = obs + obs_noise * rng.standard_normal(obs.shape)
        for _ in range(max_steps):
            if rng.random() < epsilon:
                action = int(rng.integers(env.action_space.n))
            else:
                action = controller(env, seen)
            nxt, reward, term, trunc, _ = env.step(action)
            seen_next = nxt + obs_noise * rng.standard_normal(nxt.shape)
            for key, v in zip(cols, (seen, action, reward, seen_next, term, trunc, ep), strict=True):
                cols[key].append(v)
            seen = seen_next
            if term or trunc:
                break
    env.close()
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["obs"] = out["obs"].astype(np.float32)
    out["next_obs"] = out["next_obs"].astype(np.float32)
    return out


# --------------------------------------------------------------------------- environments


def _cartpole(**attrs) -> Callable[[], gym.Env]:
    def make() -> gym.Env:
        env = gym.make("CartPole-v1")
        u = env.unwrapped
        for k, v in attrs.items():
            setattr(u, k, v)
        u.total_mass = u.masspole + u.masscart
        u.polemass_length = u.masspole * u.length
        return env

    return make


def _cartpole_controller(env, o) -> int:
    return int(o[2] + 0.5 * o[3] + 0.01 * o[0] + 0.1 * o[1] > 0)


def cartpole() -> EnvSpec:
    return EnvSpec(
        "CartPole-v1",
        _cartpole(),
        _cartpole_controller,
        [
            Shift("short pole (length 0.5 -> 0.1)", _cartpole(length=0.1)),
            Shift("gravity x5 (9.8 -> 49)", _cartpole(gravity=49.0)),
            Shift("sensor noise (0.1 std)", _cartpole(), obs_noise=0.1),
            Shift("sensor noise (0.5 std)", _cartpole(), obs_noise=0.5),
            Shift("sensor noise (1.0 std)", _cartpole(), obs_noise=1.0),
            Shift(
                "weak motor (force 10 -> 2)",
                _cartpole(force_mag=2.0),
                note="control: the controller copes, states stay familiar",
            ),
        ],
        train_episodes=40,
        calib_episodes=20,
        eval_episodes=10,
        max_steps=500,
        epochs=20,
    )


class _Lander:
    """LunarLander-v3 with keyword arguments and (optionally) scaled engine power."""

    def __init__(self, main: float = 1.0, side: float = 1.0, **kwargs) -> None:
        self.main, self.side, self.kwargs = main, side, kwargs

    def __call__(self) -> gym.Env:
        import gymnasium.envs.box2d.lunar_lander as ll

        env = gym.make("LunarLander-v3", **self.kwargs)
        if self.main != 1.0 or self.side != 1.0:
            # the engine powers are module constants read at every step: scale them for this env only
            env = _PowerScaled(env, ll, self.main, self.side)
        return env


class _PowerScaled(gym.Wrapper):
    def __init__(self, env, module, main: float, side: float) -> None:
        super().__init__(env)
        self.module, self.main, self.side = module, main, side

    def step(self, action):
        m, s = self.module.MAIN_ENGINE_POWER, self.module.SIDE_ENGINE_POWER
        self.module.MAIN_ENGINE_POWER, self.module.SIDE_ENGINE_POWER = m * self.main, s * self.side
        try:
            return self.env.step(action)
        finally:
            self.module.MAIN_ENGINE_POWER, self.module.SIDE_ENGINE_POWER = m, s


def _lander_controller(env, o) -> int:
    from gymnasium.envs.box2d.lunar_lander import heuristic

    return int(heuristic(env.unwrapped, o))


def lunarlander() -> EnvSpec:
    return EnvSpec(
        "LunarLander-v3",
        _Lander(),
        _lander_controller,
        [
            Shift("wind 20, turbulence 2", _Lander(enable_wind=True, wind_power=20.0, turbulence_power=2.0)),
            Shift("main engine x0.6", _Lander(main=0.6)),
            Shift("sensor noise (0.1 std)", _Lander(), obs_noise=0.1),
            Shift("sensor noise (0.5 std)", _Lander(), obs_noise=0.5),
            Shift("sensor noise (1.0 std)", _Lander(), obs_noise=1.0),
        ],
        train_episodes=80,
        calib_episodes=80,
        eval_episodes=40,
        max_steps=600,
        epochs=30,
    )


# --------------------------------------------------------------------------- the experiment


def run_env(spec: EnvSpec, work: Path, seed: int = 0, progress: bool = False) -> dict:
    from interlock.batch import Batch
    from interlock.engine import Guard
    from interlock.ensembles.train import TrainConfig, train_ensemble
    from interlock.monitors.calibrate import calibrate

    t0 = time.perf_counter()
    train = rollouts(spec.make, spec.controller, spec.train_episodes, seed, max_steps=spec.max_steps)
    calib = rollouts(spec.make, spec.controller, spec.calib_episodes, seed + 10_000, max_steps=spec.max_steps)
    test = rollouts(spec.make, spec.controller, spec.eval_episodes, seed + 20_000, max_steps=spec.max_steps)
    np.savez(work / "calibration.npz", **calib)
    n_actions = int(train["action"].max()) + 1
    for kind in ("q", "dynamics", "policy"):
        cfg = TrainConfig(
            kind=kind, members=5, epochs=spec.epochs, prior_scale=1.0, seed=seed, n_actions=n_actions
        )
        train_ensemble(train, work / f"{kind}.onnx", cfg, progress=progress)
    config = {
        "agents": [
            {
                "id": "agent",
                "observation": {"shape": [int(train["obs"].shape[1])]},
                "action": {"type": "discrete", "n": n_actions},
                "monitors": [
                    {
                        "kind": "uncertainty",
                        "name": kind,
                        "model": f"{kind}.onnx",
                        "ensemble": kind,
                        "thresholds_file": "thresholds.json",
                    }
                    for kind in ("q", "dynamics", "policy")
                ],
            }
        ]
    }
    (work / "interlock.yaml").write_text(yaml.safe_dump(config))
    calibrate(work / "interlock.yaml", "agent", work / "calibration.npz", rate=RATE, holdout=0.3, seed=seed)
    guard = Guard.from_file(str(work / "interlock.yaml")).load()
    monitors = {m.name: m for m in guard.agents[0].monitors}
    trained = time.perf_counter() - t0

    def score(data: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        batch = Batch(
            "agent", data["obs"], data["action"].astype(np.int64), np.zeros(len(data["obs"]), np.int64)
        )
        out = {}
        for name, m in monitors.items():
            for sig, sb in m.check(batch).items():
                out[f"{name}.{sig}"] = (sb.values, sb.tripped)
        return out

    base = score(test)
    result: dict = {
        "env": spec.name,
        "train_steps": len(train["obs"]),
        "test_steps": len(test["obs"]),
        "false_alarm_rate": {s: float(base[s][1].mean()) for s in base},
        "shifts": [],
        "seconds_to_train_and_calibrate": trained,
    }
    noise_scale = train["obs"].std(axis=0)
    for k, shift in enumerate(spec.shifts):
        data = rollouts(
            shift.make,
            spec.controller,
            spec.eval_episodes,
            seed + 30_000 + 1000 * k,
            max_steps=spec.max_steps,
            obs_noise=shift.obs_noise * noise_scale,
        )
        got = score(data)
        returns = [float(data["reward"][data["episode"] == e].sum()) for e in np.unique(data["episode"])]
        result["shifts"].append(
            {
                "shift": shift.name,
                "note": shift.note,
                "steps": len(data["obs"]),
                "mean_return": float(np.mean(returns)),
                "auroc": {s: auroc(base[s][0], got[s][0]) for s in base},
                "flagged": {s: float(got[s][1].mean()) for s in base},
            }
        )
    test_returns = [float(test["reward"][test["episode"] == e].sum()) for e in np.unique(test["episode"])]
    result["in_distribution_mean_return"] = float(np.mean(test_returns))
    result["seconds"] = time.perf_counter() - t0
    return result


def print_result(r: dict) -> None:
    print(
        f"\n== {r['env']}: {r['train_steps']} training steps, {r['test_steps']} in-distribution test steps "
        f"(mean return {r['in_distribution_mean_return']:.1f}); {r['seconds']:.0f} s"
    )
    far = r["false_alarm_rate"]
    print(
        f"false-alarm rate on in-distribution test episodes (target {RATE:g}, goal <= {1.5 * RATE:g}): "
        + ", ".join(f"{s} {far[s]:.4f}" for s in SIGNALS)
    )
    head = "".join(f" {s:>24s}" for s in SIGNALS)
    print(f"{'shift':34s} {'return':>7s}{head}    (AUROC / share flagged)")
    for sh in r["shifts"]:
        cells = "".join(f" {sh['auroc'][s]:>13.3f} / {sh['flagged'][s]:<8.3f}" for s in SIGNALS)
        print(
            f"{sh['shift']:34s} {sh['mean_return']:7.1f}{cells}"
            + (f"   <- {sh['note']}" if sh["note"] else "")
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", choices=["cartpole", "lunarlander", "all"], default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--progress", action="store_true", help="show training progress bars")
    args = p.parse_args(argv)
    specs = []
    if args.env in ("cartpole", "all"):
        specs.append(cartpole())
    if args.env in ("lunarlander", "all"):
        try:
            import Box2D  # noqa: F401
        except ImportError:
            print("LunarLander skipped: pip install 'gymnasium[box2d]'")
        else:
            specs.append(lunarlander())
    results = []
    for spec in specs:
        with tempfile.TemporaryDirectory(prefix="interlock-shift-") as tmp:
            r = run_env(spec, Path(tmp), seed=args.seed, progress=args.progress)
        print_result(r)
        results.append(r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
