"""``hold_while``: a rule that decided an episode's step keeps deciding while a second condition holds."""

from __future__ import annotations

import numpy as np
import pytest

from interlock.client.guard import GuardClient
from interlock.engine import Guard
from interlock.episodes import RuleHolds
from interlock.errors import ConfigError
from interlock.server.background import background_server
from interlock.types import CheckInput, Verdict
from tests.support.fixtures import discrete_agent, loaded

# Tilt (obs[2]) of each step: the rule enters above 0.1 and, with the hold, leaves at 0.05 or below.
TILTS = [0.0, 0.15, 0.07, 0.07, 0.03, 0.07]
WITH_HOLD = ["", "tilted", "tilted", "tilted", "", ""]
WITHOUT_HOLD = ["", "tilted", "", "", "", ""]


def hysteresis_agent(hold_while: str | None = "math.abs(obs[2]) > 0.05", **extra_rule) -> dict:
    agent = discrete_agent()
    tilted = agent["policy"]["rules"][1]
    tilted["when"] = "math.abs(obs[2]) > 0.1"
    if hold_while is not None:
        tilted["hold_while"] = hold_while
    tilted.update(extra_rule)
    return agent


def guard_for(agent: dict) -> Guard:
    return Guard(loaded([agent])).load()


def obs(tilt: float) -> np.ndarray:
    return np.array([0.0, 0.0, tilt, 0.0], np.float32)


def fly(g: Guard, tilts, episode_id: str = "ep-1", steps=None) -> list[str]:
    """The deciding rule of each step of one episode, one Check per step."""
    steps = range(len(tilts)) if steps is None else steps
    out = []
    for t, tilt in zip(steps, tilts, strict=True):
        (d,) = g.check([CheckInput("cartpole", obs(tilt), np.int64(1), episode_id=episode_id, step=t)])
        out.append(d.rule)
    return out


def test_hold_keeps_the_rule_until_its_condition_fails():
    assert fly(guard_for(hysteresis_agent()), TILTS) == WITH_HOLD
    assert fly(guard_for(hysteresis_agent(hold_while=None)), TILTS) == WITHOUT_HOLD


def test_held_steps_are_substituted_with_the_rules_fallback():
    g = guard_for(hysteresis_agent())
    fly(g, TILTS[:2])
    (d,) = g.check([CheckInput("cartpole", obs(0.07), np.int64(1), episode_id="ep-1", step=2)])
    assert d.verdict is Verdict.SUBSTITUTE and int(d.action) == 0 and d.fallback == "noop"
    assert any("held" in r and "math.abs(obs[2]) > 0.05" in r for r in d.reasons), d.reasons
    (entered,) = g.check([CheckInput("cartpole", obs(0.15), np.int64(1), episode_id="ep-1", step=3)])
    assert entered.rule == "tilted" and not any("held" in r for r in entered.reasons)


def test_cel_path_gives_the_same_answers():
    # A string comparison is outside the numpy subset: the hold goes row by row through CEL.
    g = guard_for(hysteresis_agent("math.abs(obs[2]) > 0.05 && agent_id == 'cartpole'"))
    assert g.agent("cartpole").policy.rules[1].hold_vectorized is None
    assert fly(g, TILTS) == WITH_HOLD
    fly(g, [0.0, 0.15], episode_id="ep-2")
    (d,) = g.check([CheckInput("cartpole", obs(0.07), np.int64(1), episode_id="ep-2", step=2)])
    assert d.rule == "tilted" and any("held" in r for r in d.reasons)


def test_episodes_are_held_apart_in_one_batch():
    g = guard_for(hysteresis_agent())
    fly(g, TILTS[:2], episode_id="a")  # episode a enters the rule at step 1; b never does
    fly(g, [0.0, 0.0], episode_id="b")
    a, b, none = g.check(
        [
            CheckInput("cartpole", obs(0.07), np.int64(1), episode_id="a", step=2),
            CheckInput("cartpole", obs(0.07), np.int64(1), episode_id="b", step=2),
            CheckInput("cartpole", obs(0.07), np.int64(1), episode_id="", step=2),
        ]
    )
    assert (a.rule, b.rule, none.rule) == ("tilted", "", "")


def test_a_gap_a_restart_or_a_new_episode_holds_nothing():
    g = guard_for(hysteresis_agent())
    assert fly(g, [0.0, 0.15], steps=[0, 1]) == ["", "tilted"]
    assert fly(g, [0.07], steps=[3]) == [""]  # step 2 never came: no hold across a gap
    assert fly(g, [0.15, 0.07], steps=[4, 5]) == ["tilted", "tilted"]
    assert fly(g, [0.07], steps=[0]) == [""]  # the same id from step 0: a new episode
    assert fly(g, [0.07], episode_id="ep-2", steps=[6]) == [""]


def test_a_retried_step_gets_the_same_answer():
    g = guard_for(hysteresis_agent())
    assert fly(g, [0.0, 0.15, 0.07], steps=[0, 1, 2]) == ["", "tilted", "tilted"]
    assert fly(g, [0.07, 0.07], steps=[2, 2]) == ["tilted", "tilted"]  # held into step 2 again
    assert fly(g, [0.07], steps=[3]) == ["tilted"]


def test_earlier_rules_still_come_first():
    agent = hysteresis_agent()
    agent["policy"]["rules"].insert(0, {"name": "far_right", "when": "obs[0] > 1.0", "verdict": "halt"})
    agent["fail_safe"] = "noop"
    g = guard_for(agent)
    assert fly(g, [0.0, 0.15], steps=[0, 1]) == ["", "tilted"]
    (d,) = g.check(
        [
            CheckInput(
                "cartpole", np.array([2.0, 0, 0.07, 0], np.float32), np.int64(1), episode_id="ep-1", step=2
            )
        ]
    )
    assert d.rule == "far_right" and d.verdict is Verdict.HALT
    assert fly(g, [0.07], steps=[3]) == [""]  # far_right decided step 2: tilted is no longer held


def test_an_unknown_signal_in_hold_while_names_the_config_path():
    with pytest.raises(ConfigError, match=r"rules\[1\]\.hold_while: reads a signal no monitor produces"):
        guard_for(hysteresis_agent("signals.limits.nope > 1.0"))


def test_episode_facts_in_hold_while_need_a_transition_monitor():
    with pytest.raises(ConfigError, match=r"rules\[1\]\.hold_while: reads episode\.shifted"):
        guard_for(hysteresis_agent("episode.shifted"))


def test_the_memory_is_bounded_by_size_and_age():
    now = [0.0]
    holds = RuleHolds(max_episodes=2, ttl_seconds=10.0, clock=lambda: now[0])
    step0 = np.array([0])
    for eid in ["a", "b", "c"]:
        holds.record("x", [eid], step0, np.array([1]), np.array([-1]))
    assert len(holds) == 2  # "a" went first
    assert holds.held("x", ["a", "b", "c"], np.array([1, 1, 1])).tolist() == [-1, 1, 1]
    now[0] = 11.0
    assert holds.held("x", ["b", "c"], np.array([1, 1])).tolist() == [-1, -1]
    holds.record("x", ["d"], step0, np.array([0]), np.array([-1]))
    assert len(holds) == 1  # the expired ones were dropped on the next write


def test_hold_over_grpc_on_loopback(tmp_path):
    with (
        background_server(loaded([hysteresis_agent()], base_dir=tmp_path)) as srv,
        GuardClient(f"127.0.0.1:{srv.port}", agent_id="cartpole") as client,
    ):
        verdicts = [
            client.check(obs(tilt), 1, episode_id="grpc-ep", step=t).verdict for t, tilt in enumerate(TILTS)
        ]
        enter = client.check_batch(
            np.stack([obs(0.15), obs(0.07)]), [1, 1], episode_ids=["grpc-ep", "other"], steps=[6, 0]
        )
        held = client.check_batch(
            np.stack([obs(0.07), obs(0.07)]), [1, 1], episode_ids=["grpc-ep", "other"], steps=[7, 1]
        )
    expected = [Verdict.SUBSTITUTE if rule else Verdict.ALLOW for rule in WITH_HOLD]
    assert verdicts == expected
    assert [r.verdict for r in enter] == [Verdict.SUBSTITUTE, Verdict.ALLOW]
    assert [r.verdict for r in held] == [Verdict.SUBSTITUTE, Verdict.ALLOW]  # CheckBatch rows hold too


def test_replay_decides_an_episode_s_steps_in_order():
    """``interlock replay`` batches recorded traffic; an episode's steps must still see each other's
    decisions, so two interleaved episodes replay exactly as they were served one check at a time."""
    from interlock.replay import ReplayItem, replay

    served = guard_for(hysteresis_agent())
    items, expected = [], []
    for t, tilt in enumerate(TILTS):
        for eid, shift in (("a", 0.0), ("b", 0.08 if t == 1 else 0.0)):  # b enters at step 1 (0.15 + 0.08)
            item = CheckInput("cartpole", obs(tilt + shift), np.int64(1), episode_id=eid, step=t)
            (d,) = served.check([item])
            items.append(ReplayItem(item, d.verdict.label, d.rule))
            expected.append(d.rule)
    assert expected.count("tilted") > 2 * TILTS.count(0.15)  # some were held
    report = replay(guard_for(hysteresis_agent()), items, batch=256)
    assert report.total == len(items) and report.changed == 0
    assert report.new_rules == report.old_rules
