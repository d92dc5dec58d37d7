"""examples/lunarlander/interlock.yaml: loads, guards real LunarLander-v3 steps through a real server,
detects wind from what happens next and hands over to the robust backup; round 3b's config
(simplex_dev/interlock_r3.yaml) shields a fast descent near the ground (docs/shift.md)."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest

from interlock.config import load_config
from interlock.engine import Guard
from interlock.gym import InterlockWrapper
from interlock.server.background import background_server
from interlock.types import CheckInput, Verdict

pytest.importorskip("Box2D", reason="LunarLander-v3 needs Box2D: pip install -e '.[dev]' (box2d wheel)")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lunarlander"
CONFIG = EXAMPLE / "interlock.yaml"
#: Round 3b's config (adaptive shield before the trip), kept as the record of rounds 1-3.
CONFIG_R3 = EXAMPLE / "simplex_dev" / "interlock_r3.yaml"
WIND = {"enable_wind": True, "wind_power": 15.0, "turbulence_power": 1.5}


def signals(decision) -> dict[str, tuple[float, bool]]:
    return {name: (value, tripped) for name, value, _, tripped in decision.signals}


@pytest.fixture(scope="module")
def agent() -> ort.InferenceSession:
    return ort.InferenceSession(str(EXAMPLE / "ppo_agent.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def detector() -> Guard:
    """The example's transition monitor alone, in shadow mode: the agent's actions are executed, so
    the detector sees the agent as it is (what the benchmark's unguarded runs do)."""
    from interlock.bench.safety import lunarlander

    lunarlander.EXAMPLE = EXAMPLE
    return lunarlander._guard(guarded=False)


def test_the_config_loads_with_the_pinned_agent_and_monitors() -> None:
    loaded = load_config(CONFIG)
    (agent,) = loaded.config.agents
    assert agent.id == "lunarlander"
    assert agent.observation.shape == [8] and agent.observation.dtype == "float32"
    assert agent.action.type == "discrete" and agent.action.n == 4
    kinds = {m.name: m.kind for m in agent.monitors}
    assert kinds == {
        "action_space": "action_space",
        "drift": "transition",
        "engine": "transition",
        "thrust": "transition",
    }
    rules = [r.name for r in agent.policy.rules]
    assert rules == [
        "invalid", "dynamics_shifted", "weak_engine", "wind", "handover", "probe", "probe_more",
        "probe_evidence",
    ]
    guard = Guard(loaded).load()  # models, thresholds (sha256 of the ensemble checked), CEL, fallbacks
    (runtime,) = guard.agents
    (drift,) = [m for m in runtime.monitors if m.name == "drift"]
    assert drift.drift == 2.0  # set in the config (simplex_dev/RULE.md, round 4)
    assert drift.thresholds["shift"] > drift.drift  # from thresholds.json


def run_episode(
    detector: Guard, agent: ort.InferenceSession, world: dict, seed: int, steps: int, episode: str
) -> tuple[list[float], int]:
    """The agent alone for up to ``steps`` steps; (surprise per step, step of the first shift trip or -1)."""
    env = gym.make("LunarLander-v3", **world)
    obs, _ = env.reset(seed=seed)
    surprise, trip = [], -1
    for t in range(steps):
        (logits,) = agent.run(None, {"obs": obs[None].astype(np.float32)})
        action = int(logits.argmax())
        (d,) = detector.check([CheckInput("lunarlander", obs, np.int64(action), episode_id=episode, step=t)])
        s = signals(d)
        surprise.append(s["drift.surprise"][0])
        if trip < 0 and s["drift.shift"][1]:
            trip = t
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    env.close()
    return surprise, trip


def test_wind_is_more_surprising_than_nominal_and_the_shift_trips(detector, agent) -> None:
    # Development seeds (examples/lunarlander/README.md): wind 2000+, nominal 7000+.
    nominal, nominal_trip = run_episode(detector, agent, {}, 7000, 1000, "nominal-7000")
    windy, trip = run_episode(detector, agent, WIND, 2007, 200, "wind-2007")
    assert len(nominal) > 500 and nominal_trip == -1  # a whole calm episode (854 steps), no trip
    assert np.mean(windy) > 4 * np.mean(nominal)  # 3.2 against 0.42 with the round-4 model
    # With the round-4 model the evidence is strong: this seed trips at step 7 (round 3b: 192).
    assert 0 < trip < 50


def first_trips(detector: Guard, agent: ort.InferenceSession, world: str, seed: int) -> dict[str, int]:
    """Our PPO alone for one episode of ``world``; the step each monitor's ``shift`` first tripped."""
    from interlock.bench.safety import lunarlander

    spec = lunarlander.WORLDS[world]
    trips: dict[str, int] = {}
    with lunarlander.main_engine_power(spec["main_power_scale"]):
        env = gym.make("LunarLander-v3", **spec["kwargs"])
        obs, _ = env.reset(seed=seed)
        for t in range(1000):
            (logits,) = agent.run(None, {"obs": obs[None].astype(np.float32)})
            action = int(logits.argmax())
            (d,) = detector.check(
                [CheckInput("lunarlander", obs, np.int64(action), episode_id=f"{world}-{seed}", step=t)]
            )
            for name, (_, tripped) in signals(d).items():
                if name.endswith(".shift") and tripped:
                    trips.setdefault(name, t)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
        env.close()
    return trips


def test_a_weak_main_engine_trips_the_signed_monitors_and_calm_flight_trips_nothing(detector, agent) -> None:
    # Development seeds: main engine x0.6 11000+, nominal 7000+. Under the weak engine every main-engine
    # step's vy residual is biased (about -1.1 scale units): the signed CUSUMs add it up while the squared
    # surprise of `drift` stays calm. `thrust` watches that one stream, so its threshold is the thrust
    # noise's (6.1, against `engine`'s 55, set by other streams) and it trips far sooner (25 vs 117 here).
    weak = first_trips(detector, agent, "weak_main", 11000)
    assert set(weak) == {"thrust.shift", "engine.shift"}
    assert 0 < weak["thrust.shift"] < 60 and weak["thrust.shift"] + 40 < weak["engine.shift"] < 250
    assert first_trips(detector, agent, "nominal", 7000) == {}  # a whole calm episode (853 steps)


def test_the_shield_replaces_an_action_that_crashes_a_fast_descent() -> None:
    guard = Guard(load_config(CONFIG_R3)).load()
    # 0.42 above the pad, falling at 0.7 (obs units): firing a side engine, then the agent's policy,
    # breaks the near-ground speed limit within the 8-step horizon under some member; the main engine
    # keeps every member inside. (Horizon 20 reached the limit from 0.7 / 0.9; 8 steps do not.)
    falling = np.array([0.0, 0.42, 0.0, -0.7, 0.0, 0.0, 0.0, 0.0], np.float32)
    (d,) = guard.check([CheckInput("lunarlander", falling, np.int64(1), episode_id="fall", step=0)])
    s = signals(d)
    assert s["shield.unsafe"][1] and d.rule == "unsafe"
    assert d.verdict is Verdict.SUBSTITUTE and int(d.action) == 2
    assert 0 < s["shield.safe_count"][0] < 4
    (d,) = guard.check([CheckInput("lunarlander", falling, np.int64(2), episode_id="fall2", step=0)])
    assert d.verdict is Verdict.ALLOW and int(d.action) == 2
    # A calm hover high above the pad: every action is safe, the agent's stands.
    calm = np.array([0.0, 1.2, 0.0, -0.1, 0.0, 0.0, 0.0, 0.0], np.float32)
    (d,) = guard.check([CheckInput("lunarlander", calm, np.int64(0), episode_id="calm", step=0)])
    assert d.verdict is Verdict.ALLOW and signals(d)["shield.safe_count"][0] == 4


def test_real_lunarlander_steps_through_a_loopback_server(agent) -> None:
    with background_server(load_config(CONFIG)) as srv:
        env = InterlockWrapper(
            gym.make("LunarLander-v3", **WIND), f"127.0.0.1:{srv.port}", agent_id="lunarlander"
        )
        replay = gym.make("LunarLander-v3", **WIND)  # replays the executed actions
        obs, _ = env.reset(seed=2001)
        replay.reset(seed=2001)
        verdicts, tripped_now = [], []
        for _ in range(60):
            (logits,) = agent.run(None, {"obs": obs[None].astype(np.float32)})
            proposed = int(logits.argmax())
            obs, _, terminated, truncated, info = env.step(proposed)
            decision = info["interlock"]
            verdicts.append(decision["verdict"])
            assert set(decision["signals"]) >= {"drift.surprise", "drift.shift", "drift.shifted"}
            live = [decision["signals"][f"{m}.shift"]["tripped"] for m in ("drift", "engine", "thrust")]
            tripped_now.append(any(live))
            executed = proposed if decision["verdict"] == "ALLOW" else int(decision["action"])
            replayed, *_ = replay.step(executed)
            np.testing.assert_array_equal(obs, replayed)
            if terminated or truncated:
                break
        # The agent flies until the wind trips the detector, a person is told once (deferred: the
        # backup's action at once), then the backup drives while a shift statistic is above its
        # threshold (round 13), the agent when none is.
        trip = verdicts.index("ESCALATE")
        assert trip > 0 and set(verdicts[:trip]) == {"ALLOW"}
        assert verdicts.count("ESCALATE") == 1 and len(verdicts) > trip + 1
        for verdict, live in zip(verdicts[trip + 1 :], tripped_now[trip + 1 :], strict=True):
            assert verdict == ("SUBSTITUTE" if live else "ALLOW")
        assert "SUBSTITUTE" in verdicts[trip + 1 :]
        env.close()
        replay.close()


def test_mean_sq_and_clip_combine_normalised_residuals() -> None:
    from interlock.monitors.transition import surprise_of

    residual = np.array([[0.3, 0.0, 0.8]])  # z = 3, 0, 4 with the scale below
    scale = np.array([0.1, 1.0, 0.2])
    assert surprise_of(residual, scale, aggregate="mean_sq")[0] == pytest.approx(25 / 3)
    assert surprise_of(residual, scale, aggregate="mean_sq", clip=9.0)[0] == pytest.approx(6.0)
    assert surprise_of(residual, scale, aggregate="rms", clip=9.0)[0] == pytest.approx(6.0**0.5)
    assert surprise_of(residual, scale, aggregate="max", clip=9.0)[0] == pytest.approx(3.0)
    assert surprise_of(residual, scale, np.array([0, 2]), "mean_sq", 9.0)[0] == pytest.approx(9.0)


def test_a_calibration_made_with_another_clip_is_refused(tmp_path) -> None:
    from interlock.errors import ConfigError

    text = CONFIG.read_text()
    models = ("dynamics_ensemble_r4.onnx", "robust2_agent.onnx", "robust2_weak_agent.onnx",
              "robust2_wind_agent.onnx")
    for name in (*models, "thresholds.json"):
        text = text.replace(f" {name}", f" {EXAMPLE / name}")
    assert "clip: 25\n" in text
    (tmp_path / "same.yaml").write_text(text)
    Guard(load_config(tmp_path / "same.yaml")).load()
    (tmp_path / "other.yaml").write_text(text.replace("clip: 25\n", "clip: 4\n"))
    with pytest.raises(ConfigError, match="calibrated with clip=25.0, the config says 4.0"):
        Guard(load_config(tmp_path / "other.yaml")).load()


def test_per_agent_calibration_gives_the_guard_the_agent_s_own_thresholds(tmp_path) -> None:
    """`--calibrate-episodes` (simplex_dev/RULE.md "Round 7"): the transition monitors calibrated on the
    guarded agent's own calm episodes (development seeds), read by the guard instead of the committed file;
    `--backup` swaps the backup policy."""
    import json

    from interlock.bench.safety import lunarlander

    lunarlander.EXAMPLE = EXAMPLE
    path = lunarlander.calibrate_for_agent("ppo", tmp_path, episodes=12, seed=20000, episode_rate=0.1)
    own = json.loads(path.read_text())["monitors"]
    committed = json.loads((EXAMPLE / "thresholds.json").read_text())["monitors"]
    assert set(own) == {"drift", "engine", "thrust"}
    guard = lunarlander._guard(guarded=True, overrides=lunarlander.Overrides(path, "dqn_agent.onnx"))
    (runtime,) = guard.agents
    backup = runtime.fallbacks["backup"]
    assert backup.model == "dqn_agent.onnx" and backup.ready  # --backup (round 8), loaded
    for m in (m for m in runtime.monitors if m.name in own):
        assert m.thresholds["shift"] == pytest.approx(own[m.name]["thresholds"]["shift"])
        assert m.thresholds["shift"] != pytest.approx(committed[m.name]["thresholds"]["shift"])
    with pytest.raises(ValueError, match="not an ONNX policy"):
        lunarlander.calibrate_for_agent("heuristic", tmp_path, episodes=12, seed=20000, episode_rate=0.1)
    with pytest.raises(ValueError, match="evaluation range"):
        lunarlander.calibrate_for_agent("ppo", tmp_path, episodes=20, seed=99990, episode_rate=0.1)


def test_after_a_calm_burst_decays_the_agent_drives_again(agent) -> None:
    """Round 13's live handover: a short burst of impossible observations (vx off by +-0.5 for eight
    steps of a calm episode, as a glitching sensor would give) trips `drift`; a person is told once, the
    backup drives while the statistic is above its threshold, and once the calm transitions have let it
    decay the agent's own actions are allowed again, though `episode.shifted` stays true."""
    guard = Guard(load_config(CONFIG)).load()
    env = gym.make("LunarLander-v3")
    obs, _ = env.reset(seed=7000)  # development seed; this calm episode trips nothing alone (above)
    verdicts, shifted = [], []
    for t in range(160):
        seen = obs.copy()
        if 40 <= t < 48:
            seen[2] += 0.5 * (-1) ** t
        (logits,) = agent.run(None, {"obs": seen[None].astype(np.float32)})
        (d,) = guard.check(
            [CheckInput("lunarlander", seen, np.int64(int(logits.argmax())), episode_id="burst", step=t)]
        )
        verdicts.append(d.verdict.name)
        shifted.append(signals(d)["drift.shifted"][0])
        obs, _, terminated, truncated, _ = env.step(int(np.asarray(d.action).reshape(-1)[0]))
        assert not (terminated or truncated)
    env.close()
    trip = verdicts.index("ESCALATE")
    assert 40 < trip < 50 and set(verdicts[:trip]) == {"ALLOW"} and verdicts.count("ESCALATE") == 1
    back = trip + 1 + verdicts[trip + 1 :].index("ALLOW")
    assert set(verdicts[trip + 1 : back]) == {"SUBSTITUTE"} and back < trip + 40
    assert set(verdicts[back:]) == {"ALLOW"} and min(shifted[trip:]) == 1.0


PROBE_CONFIGS = (
    "interlock_r15_probe",
    "interlock_r15_probe_only",
    "interlock_r17_gated_probe",
    "interlock_r18_probe",
    "interlock_r19_probe_more",
    "interlock_r27_hold",
    "interlock_r28_release",
)


@pytest.mark.parametrize(
    "name", ["interlock_r11_thrust", "interlock_r13_live", "interlock_r14_weak", *PROBE_CONFIGS]
)
def test_the_round_configs_kept_as_the_record_still_load(name) -> None:
    """simplex_dev/RULE.md's rounds 11 and 13-22 name these configs: they load, with their models and the
    committed thresholds (paths relative to simplex_dev/), and differ from the shipped one as recorded."""
    guard = Guard(load_config(EXAMPLE / "simplex_dev" / f"{name}.yaml")).load()
    (runtime,) = guard.agents
    assert [m.name for m in runtime.monitors] == ["action_space", "drift", "engine", "thrust"]
    assert ("backup_weak" in runtime.fallbacks) == (name == "interlock_r14_weak")
    assert ("probe_main" in runtime.fallbacks) == (name in PROBE_CONFIGS)


def _fly(
    guard: Guard, policy: ort.InferenceSession, seed: int, scale: float, steps: int, world: dict | None = None
) -> list:
    """``steps`` steps of ``policy`` (greedy) behind ``guard`` with the main engine at ``scale``, in the
    LunarLander-v3 made with ``world``'s keyword arguments (e.g. wind): per step (proposed action,
    decision)."""
    from interlock.bench.safety.lunarlander import main_engine_power

    env, out = gym.make("LunarLander-v3", **(world or {})), []
    name = policy.get_inputs()[0].name
    with main_engine_power(scale):
        obs, _ = env.reset(seed=seed)
        for t in range(steps):
            proposed = int(policy.run(None, {name: obs[None].astype(np.float32)})[0].argmax())
            (d,) = guard.check(
                [CheckInput("lunarlander", obs, np.int64(proposed), episode_id=f"{seed}-{scale}", step=t)]
            )
            out.append((proposed, d))
            obs, _, terminated, truncated, _ = env.step(int(np.asarray(d.action).reshape(-1)[0]))
            if terminated or truncated:
                break
    env.close()
    return out


def test_the_probe_fires_the_main_engine_only_for_an_agent_that_does_not() -> None:
    """The shipped config's preflight probe (round 18, simplex_dev/RULE.md): a DQN that has not fired the
    main engine by step 8 gets it fired at steps 8-11 (thrust.scored counts them); at main x0.6 the
    statistic after them is over the early bar and the backup drives, a person is told once at the trip;
    in the calm world the DQN gets its control back. An A2C agent that fires the main engine itself is
    never probed."""
    guard = Guard(load_config(CONFIG)).load()
    dqn, a2c = (
        ort.InferenceSession(str(EXAMPLE / f"{n}_agent.onnx"), providers=["CPUExecutionProvider"])
        for n in ("dqn", "a2c")
    )
    seed = 7001  # development seed
    for scale in (1.0, 0.6):
        flight = _fly(guard, dqn, seed, scale, 40)
        proposed = [p for p, _ in flight]
        verdicts = [d.verdict.name for _, d in flight]
        reasons = [d.reasons[0] if d.reasons else "" for _, d in flight]
        scored = [signals(d)["thrust.scored"][0] for _, d in flight]
        assert 2 not in proposed[:8] and set(verdicts[:8]) == {"ALLOW"}
        probed = [t for t, (_, d) in enumerate(flight) if d.rule == "probe"]
        assert probed == [t for t in range(8, 12) if proposed[t] != 2] and len(probed) >= 3
        assert all(r.startswith("preflight") for t, r in enumerate(reasons) if t in probed)
        assert [int(np.asarray(flight[t][1].action).reshape(-1)[0]) for t in probed] == [2] * len(probed)
        assert scored[12] == 4.0 and not any(signals(d)["thrust.scored"][1] for _, d in flight)
        later = verdicts[12:]
        if scale == 0.6:
            assert later[0] == "SUBSTITUTE" and "ESCALATE" in later and "ALLOW" not in later
        else:
            assert "ESCALATE" not in verdicts and later.count("ALLOW") > len(later) // 2
    flight = _fly(guard, a2c, 7000, 1.0, 40)  # it fires the main engine at steps 2, 3, 5 and 7
    assert 2 in [p for p, _ in flight[:8]]
    assert not any(d.reasons and d.reasons[0].startswith("preflight") for _, d in flight)


H_W = 2.3967  # the shipped probe_evidence bar (round 18)


def test_the_probe_goes_on_while_its_evidence_is_undecided() -> None:
    """Round 19's probe_more (shipped from round 22, simplex_dev/RULE.md): at steps 12-15 the main engine
    is fired again only while thrust.shift is in (1.0, h_w] after the probe. At main x0.6 (seed 7000)
    one more transition takes the statistic over h_w, the backup drives and a person is told; in calm
    flight (seed 7016) the statistic falls back and the DQN drives again."""
    guard = Guard(load_config(CONFIG)).load()
    dqn = ort.InferenceSession(str(EXAMPLE / "dqn_agent.onnx"), providers=["CPUExecutionProvider"])
    for seed, scale in ((7000, 0.6), (7016, 1.0)):  # development seeds
        flight = _fly(guard, dqn, seed, scale, 40)
        rules = [d.rule for _, d in flight]
        more = [t for t, r in enumerate(rules) if r == "probe_more"]
        assert rules[8:12] == ["probe"] * 4 and more and set(more) <= set(range(12, 16))
        for t in more:  # the rule's window, read from the signals the decision carries
            d = flight[t][1]
            assert 1.0 < signals(d)["thrust.shift"][0] <= H_W
            assert int(np.asarray(d.action).reshape(-1)[0]) == 2 and flight[t][0] != 2
        values = [signals(d) for _, d in flight]
        expected = [  # the rule's condition, evaluated here on what each decision reports
            t
            for t in range(12, 16)
            if flight[t][0] != 2
            and 1.0 < values[t]["thrust.shift"][0] <= H_W
            and values[t]["thrust.scored"][0] <= t - 8
            and not any(values[t][f"{m}.shifted"][0] for m in ("drift", "engine", "thrust"))
        ]
        assert more == expected
        verdicts = [d.verdict.name for _, d in flight]
        after = verdicts[more[-1] + 1 :]
        if scale == 0.6:
            assert signals(flight[more[-1] + 1][1])["thrust.shift"][0] > H_W
            assert "ESCALATE" in after and "ALLOW" not in after
        else:
            assert "ESCALATE" not in verdicts and after.count("ALLOW") > len(after) // 2


def test_the_backup_keeps_the_lander_while_the_probe_s_evidence_stands() -> None:
    """Round 27's hold (shipped as lunarlander-9, simplex_dev/RULE.md): at main x0.6 (development seed
    7028) probe_evidence's window of 12 main-engine transitions ends over h_w but under the trip
    threshold. Round 22's config then gives the DQN its control back at step 21 and, since the DQN does
    not fire the main engine, the statistic never moves again; with hold_while the backup keeps the
    lander while the statistic is over 1.0 and the lander airborne, its main-engine steps take the
    statistic to the trip, and the handover follows; without it the trip waits for the DQN to brake."""
    dqn = ort.InferenceSession(str(EXAMPLE / "dqn_agent.onnx"), providers=["CPUExecutionProvider"])
    held_config = Guard(load_config(CONFIG)).load()
    round22 = Guard(load_config(EXAMPLE / "simplex_dev" / "interlock_r19_probe_more.yaml")).load()
    flight, before = (_fly(g, dqn, 7028, 0.6, 60) for g in (held_config, round22))
    held = [t for t, (_, d) in enumerate(flight) if any(r.startswith("held") for r in d.reasons)]
    assert held and held[0] > 12
    for t in held:  # entered through `when` first; held only while hold_while's condition holds
        d, s = flight[t][1], signals(flight[t][1])
        assert d.rule == "probe_evidence" and flight[t - 1][1].rule == "probe_evidence"
        assert not (4.0 <= s["thrust.scored"][0] <= 12.0 and s["thrust.shift"][0] > H_W)
        assert s["thrust.shift"][0] > 1.0 and d.verdict is Verdict.SUBSTITUTE
    after = flight[held[-1] + 1][1]
    assert after.rule == "dynamics_shifted" and signals(after)["thrust.shift"][1]  # the trip came
    assert [d.verdict for _, d in before[held[0] : held[-1] + 1]] == [Verdict.ALLOW] * len(held)
    trip_before = next(t for t, (_, d) in enumerate(before) if signals(d)["thrust.shift"][1])
    assert trip_before > held[-1] + 10  # without the hold the trip waits for the DQN to brake itself


def _with_thresholds(config: Path, thresholds: Path) -> Guard:
    """``config`` with every transition monitor reading ``thresholds`` (an agent's own calibration)."""
    from interlock.bench.safety.lunarlander import with_thresholds

    return Guard(with_thresholds(load_config(config), thresholds)).load()


def test_a_false_trip_at_touchdown_no_longer_holds_a_landed_lander() -> None:
    """Round 28 (shipped as lunarlander-10, simplex_dev/RULE.md): dqn_holdout5, calm, development seed
    53044, its own thresholds. engine's statistic crosses its threshold just before touchdown; on the
    ground nothing is scored, so it stays there. Round 27's config keeps the backup in charge of the
    landed lander until the 1000-step limit; the shipped one releases the handover while the lander is
    down and at rest, and the DQN has its landed lander back (it keeps nudging a side engine, so the
    episode still runs to the limit, but as the agent's own)."""
    thresholds = EXAMPLE / "simplex_dev" / "r24_thresholds" / "thresholds_dqn_holdout5.json"
    policy = ort.InferenceSession(
        str(EXAMPLE / "dqn_holdout5_agent.onnx"), providers=["CPUExecutionProvider"]
    )
    name = policy.get_inputs()[0].name

    def fly(guard: Guard) -> list[tuple[np.ndarray, str]]:
        env, out = gym.make("LunarLander-v3"), []
        obs, _ = env.reset(seed=53044)
        for t in range(1000):
            proposed = int(policy.run(None, {name: obs[None].astype(np.float32)})[0].argmax())
            (d,) = guard.check([CheckInput("lunarlander", obs, np.int64(proposed), episode_id="ep", step=t)])
            out.append((obs, d.rule))
            obs, _, terminated, truncated, _ = env.step(int(np.asarray(d.action).reshape(-1)[0]))
            if terminated or truncated:
                break
        env.close()
        return out

    def at_rest(o: np.ndarray) -> bool:
        return bool(o[6] > 0.5 and o[7] > 0.5 and abs(o[2]) < 0.05 and abs(o[3]) < 0.05)

    held = fly(_with_thresholds(EXAMPLE / "simplex_dev" / "interlock_r27_hold.yaml", thresholds))
    released = fly(_with_thresholds(CONFIG, thresholds))
    trip = next(t for t, (_, rule) in enumerate(held) if rule == "dynamics_shifted")
    assert trip == next(t for t, (_, rule) in enumerate(released) if rule == "dynamics_shifted")
    assert len(held) == 1000 and sum(at_rest(o) and r == "handover" for o, r in held) > 500
    assert not any(at_rest(o) and r == "handover" for o, r in released)
    assert sum(r == "handover" for _, r in released) < 100  # the agent drives the landed lander
    assert any(r == "handover" for _, r in released[trip:])  # airborne after the trip, the backup drives
    assert not any(r == "weak_engine" for _, r in released)  # engine's trip: the general backup (round 32)


def _greedy(policy: ort.InferenceSession, obs: np.ndarray) -> int:
    return int(policy.run(None, {policy.get_inputs()[0].name: obs[None].astype(np.float32)})[0].argmax())


def _specialist_drives_after_the_trip(
    shipped: list, before: list, rule: str, fallback: str, specialist: ort.InferenceSession,
    general: ort.InferenceSession, handover_steps: int,
) -> int:
    """Both flights (per step (proposed, decision); the shipped config and an earlier one) trip at the same
    step. After it the shipped config's ``rule`` substitutes ``fallback`` for at least 5 steps, each of its
    actions ``specialist``'s own greedy one; the earlier config hands over to the general backup
    (``handover`` for ``handover_steps`` steps, its first action ``general``'s). Returns the trip step."""
    trip = next(t for t, (_, d) in enumerate(shipped) if d.rule == "dynamics_shifted")
    assert trip == next(t for t, (_, d) in enumerate(before) if d.rule == "dynamics_shifted")
    after = [d for _, d in shipped[trip + 1 :]]
    assert len(after) > 5 and [d.rule for d in after[:5]] == [rule] * 5
    for d in after:
        if d.rule == rule:
            assert d.fallback == fallback and d.verdict is Verdict.SUBSTITUTE
            assert int(np.asarray(d.action).reshape(-1)[0]) == _greedy(specialist, d.observation)
    assert [d.rule for _, d in before[trip + 1 : trip + 1 + handover_steps]] == ["handover"] * handover_steps
    first = before[trip + 1][1]
    assert int(np.asarray(first.action).reshape(-1)[0]) == _greedy(general, first.observation)
    return trip


def test_after_a_thrust_trip_the_weak_engine_backup_drives() -> None:
    """Round 32 (shipped as lunarlander-11, simplex_dev/RULE.md): at main x0.6 (development seed 7028) the
    DQN's episode trips thrust, not drift. From the step after the trip the weak-engine specialist
    (robust2_weak_agent.onnx) drives instead of the general backup, its own greedy action executed;
    round 28's config hands the same episode to the general backup. (Since round 34 the shipped config
    also has the wind rule, which a thrust-only trip does not reach.)"""
    dqn, weak, general = (
        ort.InferenceSession(str(EXAMPLE / f"{n}_agent.onnx"), providers=["CPUExecutionProvider"])
        for n in ("dqn", "robust2_weak", "robust2")
    )
    shipped = _fly(Guard(load_config(CONFIG)).load(), dqn, 7028, 0.6, 80)
    round28 = Guard(load_config(EXAMPLE / "simplex_dev" / "interlock_r28_release.yaml")).load()
    before = _fly(round28, dqn, 7028, 0.6, 80)
    trip = _specialist_drives_after_the_trip(shipped, before, "weak_engine", "backup_weak", weak, general, 5)
    s = signals(shipped[trip][1])
    assert s["thrust.shift"][1] and not s["drift.shift"][1]  # the main engine's stream, not wind's


def test_after_a_drift_trip_the_wind_backup_drives() -> None:
    """Round 34 (shipped as lunarlander-12, simplex_dev/RULE.md): in wind (development seed 7103) our PPO's
    episode trips drift at step 9. From the step after the trip the wind specialist
    (robust2_wind_agent.onnx) drives, its own greedy action executed; round 32's config hands the same
    episode to the general backup."""
    ppo, wind, general = (
        ort.InferenceSession(str(EXAMPLE / f"{n}_agent.onnx"), providers=["CPUExecutionProvider"])
        for n in ("ppo", "robust2_wind", "robust2")
    )
    world = {"enable_wind": True, "wind_power": 15.0, "turbulence_power": 1.5}
    shipped = _fly(Guard(load_config(CONFIG)).load(), ppo, 7103, 1.0, 60, world)
    round32 = Guard(load_config(EXAMPLE / "simplex_dev" / "interlock_r32_release.yaml")).load()
    before = _fly(round32, ppo, 7103, 1.0, 60, world)
    trip = _specialist_drives_after_the_trip(shipped, before, "wind", "backup_wind", wind, general, 3)
    assert trip == 9 and signals(shipped[trip][1])["drift.shift"][1]
