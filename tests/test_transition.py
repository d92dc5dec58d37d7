"""The transition monitor, episode state and ``episode.*`` rules, on the real CartPole dynamics ensemble.

Real parts: examples/cartpole/dynamics_ensemble.onnx (obs [B, 4] float32, action [B] int64 ->
delta [5, B, 4]), the example's policy, CartPole-v1 (nominal and shifted through env.unwrapped),
``interlock calibrate`` rolling the policy out, and a loopback server driven by the Gymnasium wrappers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest

from interlock import InterlockVectorWrapper, InterlockWrapper
from interlock.batch import Batch
from interlock.cli.main import main
from interlock.config import load_config
from interlock.engine import Guard
from interlock.episodes import NEVER_SHIFTED, EpisodeState, EpisodeStore
from interlock.errors import ConfigError
from interlock.monitors.calibrate import calibrate
from interlock.monitors.transition import TransitionMonitor
from interlock.server.background import background_server
from interlock.types import CheckInput, Verdict
from tests.support.ensembles import CARTPOLE_EXAMPLE, CARTPOLE_HEAD

EXAMPLE = CARTPOLE_EXAMPLE
MONITOR = """
      - kind: transition
        name: drift
        model: dynamics_ensemble.onnx
        thresholds_file: transition.json
"""
HEAD = CARTPOLE_HEAD
FALLBACKS = """
    fallbacks:
      backup: {kind: onnx_policy, model: backup_policy.onnx, output: logits}
"""


def write_config(directory: Path, rules: str = "[]", name: str = "interlock.yaml") -> Path:
    path = directory / name
    path.write_text(HEAD + MONITOR + f"    policy:\n      rules: {rules}\n" + FALLBACKS)
    return path


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    """A directory with the CartPole models and a transition calibration from 60 nominal episodes."""
    d = tmp_path_factory.mktemp("transition")
    for f in ("dynamics_ensemble.onnx", "policy.onnx", "backup_policy.onnx"):
        shutil.copy(EXAMPLE / f, d / f)
    config = write_config(d)
    report = calibrate(
        config, "cartpole", None, rate=0.01, episode_rate=0.05, env="CartPole-v1",
        policy=str(d / "policy.onnx"), episodes=60, env_seed=0,
    )  # fmt: skip
    [cal] = report.transitions
    assert cal.episodes == {"scale": 21, "threshold": 21, "held_out": 18}
    assert cal.thresholds["shift"] >= cal.drift > 0
    return d


@pytest.fixture(scope="module")
def policy():
    session = ort.InferenceSession(str(EXAMPLE / "policy.onnx"), providers=["CPUExecutionProvider"])
    return lambda obs: int(session.run(None, {"obs": np.asarray(obs, np.float32)[None]})[0].argmax())


def make_env(shift: str | None) -> gym.Env:
    env = gym.make("CartPole-v1")
    shift_env(env, shift)
    return env


def shift_env(env: gym.Env, shift: str | None) -> None:
    u = env.unwrapped
    if shift == "length":  # a pole twice as long (CartPole caches the mass x length product)
        u.length *= 2
        u.polemass_length = u.masspole * u.length
    elif shift == "gravity":
        u.gravity *= 3


def signals(d) -> dict[str, float]:
    return {name: value for name, value, _, _ in d.signals}


def run_episode(guard: Guard, policy, seed: int, shift: str | None, max_steps: int = 500):
    """Steps until done; returns (step of the first shift trip or None, decisions)."""
    [(first, decisions)] = run_episodes(guard, [seed], shift, max_steps)
    return first, decisions


def run_episodes(guard: Guard, seeds: list[int], shift: str | None, max_steps: int = 500):
    """Episodes side by side, all live ones checked in one batch per step (as a vector env would)."""
    session = ort.InferenceSession(str(EXAMPLE / "policy.onnx"), providers=["CPUExecutionProvider"])
    envs = [make_env(shift) for _ in seeds]
    obs = [env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)]
    live = list(range(len(seeds)))
    firsts: list[int | None] = [None] * len(seeds)
    decisions: list[list] = [[] for _ in seeds]
    for t in range(max_steps):
        if not live:
            break
        proposed = session.run(None, {"obs": np.stack([obs[i] for i in live])})[0].argmax(axis=1)
        items = [
            CheckInput("cartpole", obs[i], np.int64(a), episode_id=f"{shift}-{seeds[i]}", step=t)
            for i, a in zip(live, proposed, strict=True)
        ]
        for i, d in zip(list(live), guard.check(items), strict=True):
            decisions[i].append(d)
            assert not d.errors
            if firsts[i] is None and signals(d)["drift.shifted"] > 0:
                firsts[i] = t
            obs[i], _, terminated, truncated, _ = envs[i].step(int(d.action))
            if terminated or truncated:
                live.remove(i)
    return list(zip(firsts, decisions, strict=True))


def test_nominal_episodes_rarely_trip_and_shifted_dynamics_trip(calibrated, policy):
    guard = Guard.from_file(str(calibrated / "interlock.yaml")).load()
    nominal = [
        f for f, _ in run_episodes(guard, list(range(1000, 1020)), None)
    ]  # seeds unseen in calibration
    assert sum(f is not None for f in nominal) <= 2, nominal  # target 5% of episodes
    for shift in ("length", "gravity"):
        trips = [f for f, _ in run_episodes(guard, list(range(2000, 2004)), shift, max_steps=400)]
        assert all(f is not None for f in trips), (shift, trips)
    # the longer pole is plain within a few steps; the first step of an episode never trips
    first, decisions = run_episode(guard, policy, 2100, "length", max_steps=30)
    assert 0 < first < 20
    s0 = signals(decisions[0])
    assert s0["drift.surprise"] == 0.0 and s0["drift.shift"] == 0.0
    assert signals(decisions[5])["drift.surprise"] > guard.agents[0].monitors[0].thresholds["surprise"]


def test_lost_state_restarts_the_statistic_without_error_or_trip(calibrated, policy):
    guard = Guard.from_file(str(calibrated / "interlock.yaml")).load()
    monitor = guard.agents[0].monitors[0]
    env = make_env("length")
    obs, _ = env.reset(seed=7)
    tripped_at = None
    for t in range(200):
        [d] = guard.check([CheckInput("cartpole", obs, np.int64(policy(obs)), episode_id="ep", step=t)])
        s = signals(d)
        if tripped_at is None and s["drift.shifted"]:
            tripped_at = t
            monitor.store.clear()  # as after a restart, another worker or another replica
        elif tripped_at is not None and t == tripped_at + 1:
            assert not d.errors and d.verdict is Verdict.ALLOW
            assert s == {
                "drift.surprise": 0.0,
                "drift.shift": 0.0,
                "drift.shifted": 0.0,
                "drift.residual_bias": 0.0,
                "drift.scored": 0.0,  # the evidence restarts too
            }
        elif tripped_at is not None and t > tripped_at + 1 and s["drift.shifted"]:
            break  # the restarted statistic sees the shift again
        obs, *_ = env.step(int(d.action))
    assert tripped_at is not None and t < 200


def test_the_executed_action_not_the_proposed_one_starts_the_next_transition(calibrated):
    rules = '[{name: always_left, when: "action == 1", verdict: substitute, fallback: left}]'
    config = write_config(calibrated, rules, "substitute.yaml")
    config.write_text(config.read_text() + "      left: {kind: constant, action: 0}\n")
    guard = Guard.from_file(str(config)).load()
    monitor = guard.agents[0].monitors[0]
    model = ort.InferenceSession(str(calibrated / "dynamics_ensemble.onnx"))
    env = make_env(None)
    obs, _ = env.reset(seed=3)
    prev = None
    for t in range(6):
        [d] = guard.check([CheckInput("cartpole", obs, np.int64(1), episode_id="sub", step=t)])
        assert d.verdict is Verdict.SUBSTITUTE and int(d.action) == 0
        if prev is not None:  # the prediction from the executed action 0 gives exactly this surprise
            delta = model.run(None, {"obs": prev[None], "action": np.array([0])})[0].mean(axis=0)[0]
            z = (obs - (prev.astype(np.float64) + delta)) / monitor.scale
            assert signals(d)["drift.surprise"] == pytest.approx(np.sqrt(np.mean(z**2)), rel=1e-4)
            # and the proposed action 1 would have given a far larger one
            wrong = model.run(None, {"obs": prev[None], "action": np.array([1])})[0].mean(axis=0)[0]
            z1 = (obs - (prev.astype(np.float64) + wrong)) / monitor.scale
            assert np.sqrt(np.mean(z1**2)) > 10 * signals(d)["drift.surprise"]
        prev = obs
        obs, *_ = env.step(0)


def rollout(seed: int, steps: int, shift: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[T + 1, 4]`` observations, ``[T + 1]`` alternating actions of a real CartPole run (T <= steps)."""
    env = make_env(shift)
    obs, _ = env.reset(seed=seed)
    out, acts = [obs], [0]
    for t in range(steps):
        obs, _, terminated, _, _ = env.step(acts[-1])
        out.append(obs)
        acts.append((t + 1) % 2)
        if terminated:
            break
    return np.stack(out), np.asarray(acts, np.int64)


@pytest.fixture
def monitor(calibrated):
    guard = Guard.from_file(str(calibrated / "interlock.yaml")).load()
    return guard.agents[0].monitors[0]


def check(monitor: TransitionMonitor, obs, actions, steps, episodes, executed=None):
    from interlock.batch import Batch

    batch = Batch(
        "cartpole", np.asarray(obs, np.float32), np.asarray(actions, np.int64), np.asarray(steps), episodes
    )
    out = monitor.check(batch)
    ex = np.asarray(actions if executed is None else executed, np.int64)
    monitor.after_decide(batch, ex, np.ones(len(ex), bool))
    return {k: v.values for k, v in out.items()}


def test_sequencing_repeat_rewind_skip_and_empty_episode(monitor):
    obs, acts = rollout(5, 6, "length")
    s = [check(monitor, obs[t : t + 1], acts[t : t + 1], [t], ["e"]) for t in range(4)]
    assert s[0]["surprise"][0] == 0 and s[1]["surprise"][0] > 0 and s[3]["shift"][0] > s[2]["shift"][0]
    again = check(monitor, obs[3:4], acts[3:4], [3], ["e"])  # a retried step: same answer, no double count
    assert again["surprise"][0] == s[3]["surprise"][0] and again["shift"][0] == s[3]["shift"][0]
    skipped = check(monitor, obs[5:6], acts[5:6], [5], ["e"])  # step 4 never arrived: nothing to predict
    assert skipped["surprise"][0] == 0 and skipped["shift"][0] == s[3]["shift"][0]
    rewound = check(monitor, obs[1:2], acts[1:2], [1], ["e"])  # back in time: the episode starts afresh
    assert rewound["surprise"][0] == 0 and rewound["shift"][0] == 0
    assert monitor.store.peek("cartpole", "e").first_step == 1
    restart = check(monitor, obs[0:1], acts[0:1], [0], ["e"])  # step 0 always starts fresh
    assert restart["shift"][0] == 0 and monitor.store.peek("cartpole", "e").first_step == 0
    none = check(monitor, obs[:2], acts[:2], [0, 1], ["", ""])  # no episode id: no state, no signal
    assert np.all(none["surprise"] == 0) and monitor.store.peek("cartpole", "") is None


def test_one_batch_with_several_episodes_out_of_order_equals_one_by_one(monitor):
    a_obs, a_act = rollout(11, 4, "gravity")
    b_obs, b_act = rollout(12, 4)
    # one by one, in order
    seq = {}
    for t in range(4):
        for eid, o, a in (("a", a_obs, a_act), ("b", b_obs, b_act)):
            seq[(eid, t)] = check(monitor, o[t : t + 1], a[t : t + 1], [t], [eid])
    monitor.store.clear()
    # the same rows in two batches, each episode twice per batch and in reverse step order
    rows = []
    for lo in (0, 2):
        rows = [("a", lo + 1), ("b", lo + 1), ("a", lo), ("b", lo)]
        obs = [(a_obs if e == "a" else b_obs)[t] for e, t in rows]
        act = [(a_act if e == "a" else b_act)[t] for e, t in rows]
        out = check(monitor, obs, act, [t for _, t in rows], [e for e, _ in rows])
        for i, key in enumerate(rows):
            for sig in ("surprise", "shift", "shifted"):
                # (float32 model: a batch of 4 and a batch of 1 round differently in the 6th digit)
                assert out[sig][i] == pytest.approx(seq[key][sig][0], rel=1e-4), (key, sig)


def test_an_action_outside_the_space_leaves_no_transition_to_predict(monitor):
    from interlock.batch import Batch

    obs, acts = rollout(4, 3)
    check(monitor, obs[0:1], acts[0:1], [0], ["x"])
    b = Batch("cartpole", obs[1:2], np.array([7]), np.array([1]), ["x"])
    monitor.check(b)
    monitor.after_decide(b, np.array([7]), np.array([False]))
    assert check(monitor, obs[2:3], acts[2:3], [2], ["x"])["surprise"][0] == 0


def test_store_is_an_lru_with_ttl_and_exposes_residual_bias():
    now = [0.0]
    store = EpisodeStore(max_episodes=3, ttl_seconds=10.0, clock=lambda: now[0])
    for i in range(4):
        store.put("a", f"e{i}", EpisodeState(first_step=0, step=0, obs=np.zeros(4)))
    assert store.peek("a", "e0") is None and len(store) == 3 and store.evicted == 1
    store.get("a", "e1")  # e1 is now the most recent
    now[0] = 5.0
    store.put("a", "e4", EpisodeState(first_step=0, step=0, obs=np.zeros(4)))
    assert store.peek("a", "e2") is None and store.get("a", "e1") is not None
    now[0] = 14.0  # e3 (seen at 0) is past its TTL; e1 and e4 (seen at 5) are not
    assert store.get("a", "e3") is None and store.get("a", "e4") is not None and store.expired == 1
    st = store.get("a", "e4")
    st.bias, st.weight, st.residuals = np.array([0.5, 0, 0, -1.0]), 0.5, 3
    np.testing.assert_allclose(store.residual_bias("a", ["e4", "nope"], 4), [[1, 0, 0, -2], [0, 0, 0, 0]])
    np.testing.assert_array_equal(store.residual_counts("a", ["e4", "nope"]), [3, 0])
    st.shift_step = 2
    facts = store.facts("a", ["e4", "e4", "nope"], np.array([1, 6, 6]))
    np.testing.assert_array_equal(facts.shifted, [False, True, False])
    np.testing.assert_array_equal(facts.steps_since_shift, [NEVER_SHIFTED, 4, NEVER_SHIFTED])
    np.testing.assert_array_equal(facts.steps, [2, 7, 0])


def test_monitor_residual_bias_follows_a_persistent_offset(monitor):
    obs, acts = rollout(21, 40, "gravity")
    for t in range(len(obs)):
        check(monitor, obs[t : t + 1], acts[t : t + 1], [t], ["g"])
    probe = Batch("cartpole", obs[:2], acts[:2], np.array([0, 0]), ["g", "unknown"])
    bias = monitor.residual_bias(probe)
    assert bias.shape == (2, 4) and np.all(bias[1] == 0)
    # gravity x3 makes the pole fall faster than predicted: the angular velocity residual's mean has the
    # sign of the angle (the pole leans one way under this alternating policy) and is far above its scale
    assert abs(bias[0, 3]) > 5 * monitor.scale[3] and monitor.store.residual_counts("cartpole", ["g"])[0] > 5


# ---------------------------------------------------------------------------- rules


def test_episode_rules_are_typed_at_load_and_need_a_transition_monitor(calibrated, tmp_path):
    bad = {
        '"episode.shiftd"': "undeclared reference to 'episode.shiftd'",
        '"episode.steps > 0.5"': "no matching overload",
    }
    for when, message in bad.items():
        config = write_config(calibrated, f"[{{name: r, when: {when}, verdict: halt}}]", "bad.yaml")
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            Guard.from_file(str(config))
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        HEAD + "      - kind: action_space\n"
        '    policy:\n      rules: [{name: r, when: "episode.shifted", verdict: halt}]\n'
    )
    with pytest.raises(ConfigError, match="transition monitor and this agent has none"):
        Guard.from_file(str(plain))


def test_episode_rules_are_vectorized(calibrated):
    when = "episode.shifted || episode.steps_since_shift < 3 && episode.steps > 1"
    rules = f'[{{name: r, when: "{when}", verdict: halt}}]'
    guard = Guard.from_file(str(write_config(calibrated, rules, "v.yaml")))
    assert guard.agents[0].policy.rules[0].vectorized is not None
    # the server tests below decide through these rules, so they run the numpy form
    guard = Guard.from_file(str(write_config(calibrated, server_rules(), "v2.yaml")))
    assert all(r.vectorized is not None for r in guard.agents[0].policy.rules)


def server_rules() -> str:
    return (
        '[{name: ask_on_shift, when: "episode.shifted && episode.steps_since_shift == 0", verdict: escalate,'
        ' fallback: backup, reason: "the dynamics changed: a person decides"},'
        ' {name: conservative, when: "episode.shifted", verdict: substitute, fallback: backup}]'
    )


def test_a_rule_escalates_once_then_latches_a_conservative_mode_through_a_server(calibrated, policy):
    config = write_config(calibrated, server_rules(), "latch.yaml")
    with background_server(load_config(str(config))) as srv:
        env = InterlockWrapper(make_env("length"), f"127.0.0.1:{srv.port}", agent_id="cartpole")
        obs, _ = env.reset(seed=42)
        verdicts, rules = [], []
        for _ in range(60):
            obs, _, terminated, truncated, info = env.step(policy(obs))
            verdicts.append(info["interlock"]["verdict"])
            rules.append(info["interlock"]["rule"])
            if terminated or truncated:
                break
        env.close()
    trip = verdicts.index("ESCALATE")
    assert 0 < trip < 20 and set(verdicts[:trip]) == {"ALLOW"}
    assert rules[trip] == "ask_on_shift"
    assert set(verdicts[trip + 1 :]) == {"SUBSTITUTE"} and set(rules[trip + 1 :]) == {"conservative"}
    assert len(verdicts) > trip + 10


def test_vector_env_episodes_are_kept_apart_through_a_server(calibrated):
    config = write_config(calibrated, server_rules(), "vector.yaml")
    venv = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    shift_env(venv.envs[1], "length")  # only sub-environment 1 is shifted
    session = ort.InferenceSession(str(calibrated / "policy.onnx"))
    with background_server(load_config(str(config))) as srv:
        wrapped = InterlockVectorWrapper(venv, f"127.0.0.1:{srv.port}", agent_id="cartpole")
        obs, _ = wrapped.reset(seed=[1, 2, 3])
        seen = [set(), set(), set()]
        for _ in range(40):
            actions = session.run(None, {"obs": obs.astype(np.float32)})[0].argmax(axis=1)
            obs, _, term, trunc, infos = wrapped.step(actions)
            for i, d in enumerate(infos["interlock"]):
                seen[i].add(d["verdict"])
            assert not (term | trunc).any()
        wrapped.close()
    assert seen[0] == {"ALLOW"} and seen[2] == {"ALLOW"}
    assert seen[1] == {"ALLOW", "ESCALATE", "SUBSTITUTE"}


# ---------------------------------------------------------------------------- calibration CLI


def test_calibrate_cli_reads_recorded_episodes_and_shows_progress(calibrated, tmp_path, capsys):
    env = gym.make("CartPole-v1")
    obs_l, act_l, ep_l = [], [], []
    for e in range(8):  # whole episodes without next_obs: the next row of the episode follows
        obs, _ = env.reset(seed=100 + e)
        for t in range(60):
            a = t % 2
            obs_l.append(obs)
            act_l.append(a)
            ep_l.append(e)
            obs, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                break
    data = tmp_path / "episodes.npz"
    np.savez(data, obs=np.stack(obs_l), action=np.asarray(act_l), episode=np.asarray(ep_l))
    for f in ("dynamics_ensemble.onnx", "backup_policy.onnx"):
        shutil.copy(calibrated / f, tmp_path / f)
    config = write_config(tmp_path)
    code = main(["calibrate", "--config", str(config), "--agent", "cartpole", "--data", str(data)])
    out = capsys.readouterr()
    assert code == 0 and "predicting (drift)" in out.err  # the tqdm bar
    assert "shift (CUSUM): drift" in out.out and "per-episode FAR" in out.out
    guard = Guard.from_file(str(config)).load()  # the monitor loads what it wrote
    m = guard.agents[0].monitors[0]
    assert m.scale.shape == (4,) and np.all(m.scale > 0) and m.thresholds["shift"] >= m.drift
    few = tmp_path / "few.npz"
    np.savez(few, obs=np.stack(obs_l)[:50], action=np.asarray(act_l)[:50], episode=np.asarray(ep_l)[:50])
    assert main(["calibrate", "--config", str(config), "--agent", "cartpole", "--data", str(few), "-q"]) == 2
    assert "at least 6" in capsys.readouterr().err


def test_a_shield_reads_the_transition_monitors_residual_bias(calibrated):
    """The shield's online correction (``correction: {monitor: drift}``) is the transition monitor's bias."""
    text = (calibrated / "interlock.yaml").read_text()
    shield = """      - kind: reachability
        name: shield
        model: {kind: dynamics_ensemble, model: dynamics_ensemble.onnx, predicts: delta}
        backup_policy: {model: backup_policy.onnx, output: logits}
        constraints: {pole: "math.abs(obs[2]) < 0.2"}
        horizon: 5
        correction: {monitor: drift}
"""
    path = calibrated / "with_shield.yaml"
    path.write_text(text.replace("    policy:\n", shield + "    policy:\n", 1))
    guard = Guard.from_file(str(path)).load()
    transition, reach = guard.agents[0].monitors
    assert reach.correction is transition
    obs, acts = rollout(21, 40, "gravity")
    for t in range(len(obs)):
        guard.check([CheckInput("cartpole", obs[t], acts[t], episode_id="g", step=t)])
    probe = Batch("cartpole", obs[:1], acts[:1], np.array([0]), ["g"])
    bias = reach.correction.residual_bias(probe)
    assert abs(bias[0, 3]) > 5 * transition.scale[3]  # the shifted world's offset reaches the shield
