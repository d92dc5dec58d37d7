"""The highway learned-critic exploration (examples/highway/CRITIC.md, HANDOVER_RULE.md round 3; not
shipped): its configs load through Interlock, and its veto fallback is C2's backup choice plus a veto.

Real parts: the committed critic and backup ONNX models, the example's plugins imported by name, and
observations from a real highway-fast-v0 in dense traffic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from interlock.config import load_config
from interlock.engine import Guard
from interlock.types import CheckInput, Verdict

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
HIGHWAY = Path(__file__).resolve().parents[1] / "examples" / "highway"
CONFIGS = sorted(HIGHWAY.glob("interlock_critic*.yaml"))
C2_BACKUP = {"threshold": 3.0, "tie_tolerance": 1.0, "target_speeds": [20, 25, 30], "rank_horizon": 2,
             "scores": "backup_stock.onnx"}


# the example's plugins are modules of examples/highway (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("highway_on_path")


@pytest.fixture(scope="module")
def dense_observations() -> np.ndarray:
    """[N, 25] observations of real dense traffic (stock speeds), random meta-actions, seeds 900000+k."""
    import gymnasium as gym
    import highway_env  # noqa: F401  (registers the environments)
    from shield_study import BASE, DENSITIES, ENV_ID, SPEEDS

    config = {**BASE, "vehicles_density": DENSITIES["dense"],
              "action": {"type": "DiscreteMetaAction", "target_speeds": list(SPEEDS["stock"])}}
    env, out, rng = gym.make(ENV_ID, config=config), [], np.random.default_rng(0)
    for k in range(24):
        obs, _ = env.reset(seed=900_000 + k)  # validate_model.py's range (no agent, no study)
        for _ in range(12):
            out.append(np.asarray(obs, np.float32).reshape(-1))
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(0, 5)))
            if terminated or truncated:
                break
    env.close()
    return np.stack(out)


def test_the_critic_configs_load_and_decide(dense_observations) -> None:
    assert len(CONFIGS) == 6
    for path in CONFIGS:
        guard = Guard(load_config(path)).load()
        obs = dense_observations[:4]
        decisions = guard.check([CheckInput("highway", o, np.int64(0), episode_id="e", step=t)
                                 for t, o in enumerate(obs)])
        assert all(d.verdict in (Verdict.ALLOW, Verdict.SUBSTITUTE) for d in decisions), path.name
        assert all(0 <= int(np.asarray(d.action).reshape(-1)[0]) < 5 for d in decisions), path.name


def test_the_veto_off_is_c2_s_backup_choice_and_on_moves_only_vetoed_choices(dense_observations) -> None:
    from critic import Critic, CriticVetoChoice
    from handover import ShieldedBackup

    obs = dense_observations
    proposals = np.zeros(len(obs), np.int64)
    c2 = ShieldedBackup(**C2_BACKUP)(obs, proposals, None)
    off = CriticVetoChoice(critic_threshold=0.0, propose="scores", **C2_BACKUP)(obs, proposals, None)
    np.testing.assert_array_equal(off, c2)

    p_safe, expected = Critic(HIGHWAY / "critic_stock.onnx")(obs)
    assert p_safe.shape == expected.shape == (len(obs), 5)
    assert ((p_safe >= 0.0) & (p_safe <= 1.0)).all() and (expected >= p_safe - 1e-9).all()
    relative = 0.1  # the committed design's (interlock_critic_veto_backup.yaml)
    on = CriticVetoChoice(critic_threshold=0.0, relative=relative, propose="scores", **C2_BACKUP)(
        obs, proposals, None
    )
    vetoed = p_safe < p_safe.max(axis=1, keepdims=True) - relative
    rows = np.arange(len(obs))
    changed = on != c2
    assert changed.any()  # the critic disagrees with C2 somewhere in dense traffic
    # it changes C2's choice only where that choice is vetoed, and then to one the critic rates safer
    assert vetoed[rows[changed], c2[changed]].all()
    assert (p_safe[rows[changed], on[changed]] > p_safe[rows[changed], c2[changed]]).all()
