"""InterlockWrapper on real Gymnasium environments through a real server."""

import asyncio

import gymnasium as gym
import numpy as np
import pytest

from interlock import AsyncGuardClient, GuardClient, InterlockVectorWrapper, InterlockWrapper
from interlock.server.background import background_server
from tests.support.fixtures import discrete_agent, loaded


def test_wrapper_executes_the_decided_action(server):
    env = InterlockWrapper(gym.make("CartPole-v1"), f"127.0.0.1:{server.port}", agent_id="cartpole")
    shadow = gym.make("CartPole-v1")  # replays the executed actions to prove what was executed
    obs, _ = env.reset(seed=3)
    shadow.reset(seed=3)
    substituted = 0
    for _ in range(200):
        obs, _, terminated, truncated, info = env.step(1)  # always push right: the pole tips over
        decision = info["interlock"]
        executed = 1 if decision["verdict"] == "ALLOW" else decision["action"]
        if abs(decision["signals"]["limits.pole_upright"]["value"]) > 0:
            assert decision["verdict"] == "SUBSTITUTE" and decision["action"] == 0
            substituted += 1
        shadow_obs, *_ = shadow.step(executed)
        np.testing.assert_array_equal(obs, shadow_obs)
        if terminated or truncated:
            break
    assert substituted > 0
    assert env.verdict_counts["SUBSTITUTE"] == substituted
    env.close()


def test_halt_truncates_without_stepping(tmp_path):
    cfg = loaded([discrete_agent(policy={"rules": [], "default": "halt"})], base_dir=tmp_path)
    with background_server(cfg) as srv:
        env = InterlockWrapper(gym.make("CartPole-v1"), f"127.0.0.1:{srv.port}", agent_id="cartpole")
        obs0, _ = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(1)
        assert truncated and not terminated and reward == 0.0
        np.testing.assert_array_equal(obs, obs0)
        assert info["interlock"]["verdict"] == "HALT" and info["interlock"]["action"] is None
        env.close()


class CountingClient(GuardClient):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.columns_calls = 0

    def check_columns(self, *a, **kw):
        self.columns_calls += 1
        return super().check_columns(*a, **kw)


def test_vector_env_uses_one_check_columns_per_step(server):
    venv = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
    client = CountingClient(f"127.0.0.1:{server.port}", agent_id="cartpole")
    with pytest.raises(TypeError, match="use InterlockVectorWrapper"):
        InterlockWrapper(venv, client=client)  # vector envs take their own wrapper class (Gymnasium's rule)
    env = InterlockVectorWrapper(venv, client=client)
    env.reset(seed=0)
    checked_steps = 0
    for _ in range(30):
        _, _, _, _, infos = env.step(np.ones(4, dtype=np.int64))
        assert len(infos["interlock"]) == 4
        checked_steps += any(d is not None for d in infos["interlock"])  # None: a sub-env being reset
    assert client.columns_calls == checked_steps > 20
    assert env.verdict_counts.get("SUBSTITUTE", 0) > 0
    env.close()


def test_wrapper_rejects_unsupported_spaces():
    env = gym.make("CartPole-v1")
    env.action_space = gym.spaces.MultiBinary(3)
    with pytest.raises(TypeError, match="supports Discrete and Box action spaces"):
        InterlockWrapper(env, "127.0.0.1:1", agent_id="x")
    with pytest.raises(ValueError, match="agent_id is required"):
        InterlockWrapper(gym.make("CartPole-v1"), "127.0.0.1:1")


def test_async_client(server):
    async def run():
        async with AsyncGuardClient(f"127.0.0.1:{server.port}", agent_id="cartpole") as client:
            one = await client.check(np.zeros(4, np.float32), 1)
            many = await client.check_batch(np.array([[0, 0, 0.15, 0], [0, 0, 0, 0]], np.float32), [1, 1])
            return one, many

    one, many = asyncio.run(run())
    assert one.allowed and int(one.action) == 1
    assert [r.verdict.name for r in many] == ["SUBSTITUTE", "ALLOW"]


def test_client_never_turns_failure_into_allow():
    import grpc

    with GuardClient("127.0.0.1:1", agent_id="cartpole", timeout=0.5) as client, pytest.raises(grpc.RpcError):
        client.check(np.zeros(4, np.float32), 1)


class RecordingClient(GuardClient):
    """Keeps every row the wrapper sends: (episode_id, step, observation)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.rows: list[tuple[str, int, np.ndarray]] = []

    def check_columns(self, obs, actions, **kw):
        for o, e, s in zip(obs, kw["episode_ids"], kw["steps"], strict=True):
            self.rows.append((e, int(s), np.array(o)))
        return super().check_columns(obs, actions, **kw)


def test_vector_env_does_not_check_the_step_gymnasium_resets(tmp_path):
    # Gymnasium's NEXT_STEP autoreset: the step after an episode ends resets that sub-environment and
    # ignores its action. Checking it would log an action never executed and chain the last observation
    # of one episode to the first of the next (a false transition for transition monitors).
    cfg = loaded([discrete_agent(policy={"rules": [], "default": "allow"})], base_dir=tmp_path)
    with background_server(cfg) as srv:
        venv = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
        client = RecordingClient(f"127.0.0.1:{srv.port}", agent_id="cartpole")
        env = InterlockVectorWrapper(venv, client=client)
        env.reset(seed=[0, 1, 2])
        ended = np.zeros(3, dtype=bool)
        episodes_ended = unchecked = 0
        for _ in range(60):  # always push right: episodes end after about 10 steps
            _, _, terminated, truncated, infos = env.step(np.ones(3, dtype=np.int64))
            for i, d in enumerate(infos["interlock"]):
                assert (d is None) == ended[i]  # exactly the resetting step goes unchecked
                unchecked += d is None
            ended = terminated | truncated
            episodes_ended += int(ended.sum())
        env.close()
    assert episodes_ended >= 9 and unchecked >= 6
    episodes: dict[str, list[tuple[int, np.ndarray]]] = {}
    for episode, step, obs in client.rows:
        episodes.setdefault(episode, []).append((step, obs))
    assert len(episodes) >= 9
    for rows in episodes.values():
        assert [s for s, _ in rows] == list(range(len(rows)))  # 0, 1, 2, ...: no step twice, no gap
        # the first row is a reset observation (CartPole draws each value in +-0.05), never the last
        # observation of the previous episode (pole past 12 degrees or cart off the track)
        assert np.abs(rows[0][1]).max() <= 0.05
