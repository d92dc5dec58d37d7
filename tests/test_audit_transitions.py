"""Transitions from the audit log (``interlock audit export --agent ID --npz``) for ``interlock calibrate``.

Unit tests pair records built in code (gaps, duplicates, interleaved episodes, HALT without an
action, empty episode ids, box actions). The CLI tests read real SQLite and PostgreSQL logs. The end
to end test serves the CartPole dynamics ensemble in shadow mode with ``record: all`` on loopback,
drives real CartPole-v1 episodes with the example policy through the Gymnasium wrapper, exports the
log as ``.npz``, checks it against the transitions the test saw itself, and calibrates from it.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest

from interlock import InterlockWrapper
from interlock.audit import AuditQuery, AuditRecord, open_backend
from interlock.audit.transitions import transitions_from_records
from interlock.cli.main import main
from interlock.config import load_config
from interlock.ensembles.data import load_transitions
from interlock.server.background import background_server
from tests.support.ensembles import CARTPOLE_EXAMPLE, CARTPOLE_HEAD
from tests.support.ops import needs_postgres, postgres_schema


def rec(
    episode: str,
    step: int,
    obs,
    action=None,
    proposed=None,
    agent: str = "cartpole",
    dtype=np.float32,
    act_dtype=np.int64,
) -> AuditRecord:
    """A record of ``agent`` at ``step`` of ``episode``; ``action`` None: HALT without an action
    (then ``proposed`` must be given); ``proposed`` defaults to the executed action."""
    executed = None if action is None else np.asarray(action, act_dtype)
    return AuditRecord(
        decision_id=uuid.uuid4().hex,
        time=float(step),
        agent_id=agent,
        verdict="allow" if action is not None else "halt",
        config_version="v1",
        observation=np.asarray(obs, dtype),
        proposed_action=np.asarray(proposed if proposed is not None else action, act_dtype),
        action=executed,
        episode_id=episode,
        step=step,
    )


def o(x: float) -> list[float]:
    """A 4-vector observation whose values tell which record it came from."""
    return [x, x + 0.1, x + 0.2, x + 0.3]


# --------------------------------------------------------------------------- pairing


def test_interleaved_episodes_are_paired_in_step_order():
    # two episodes written alternately, b's steps 1 and 2 logged out of order (concurrent writers)
    records = [
        rec("a", 0, o(0), 1),
        rec("b", 0, o(10), 0),
        rec("a", 1, o(1), 0),
        rec("b", 2, o(12), 1),
        rec("b", 1, o(11), 1),
        rec("a", 2, o(2), 1),
    ]
    t = transitions_from_records(records)
    assert t.episode_ids == ["a", "b"]
    np.testing.assert_array_equal(t.episode, [0, 0, 1, 1])
    np.testing.assert_array_equal(t.step, [0, 1, 0, 1])
    np.testing.assert_array_equal(t.obs, np.array([o(0), o(1), o(10), o(11)], np.float32))
    np.testing.assert_array_equal(t.next_obs, np.array([o(1), o(2), o(11), o(12)], np.float32))
    np.testing.assert_array_equal(t.action, [1, 0, 0, 1])
    assert t.obs.dtype == np.float32 and t.action.dtype == np.int64 and t.action.shape == (4,)
    c = t.counts
    assert (c.records, c.episodes, c.episodes_used, c.transitions, c.gaps, c.duplicates) == (6, 2, 2, 4, 0, 0)
    assert t.arrays()["episode_id"].tolist() == ["a", "a", "b", "b"]


def test_gaps_duplicates_and_empty_episode_ids_are_left_out_and_counted():
    records = [
        rec("e", 0, o(0), 1),
        rec("e", 1, o(1), 0),
        rec("e", 1, o(99), 1),  # the same step again: the first decision is kept
        rec("e", 3, o(3), 1),  # step 2 missing: no 1 -> 3 transition
        rec("e", 4, o(4), 0),
        rec("", 5, o(5), 0),  # no episode id: cannot be chained
        rec("", 6, o(6), 0),
        rec("lone", 0, o(7), 1),  # one step: no transition, not an episode of the arrays
    ]
    t = transitions_from_records(records)
    np.testing.assert_array_equal(t.step, [0, 3])
    np.testing.assert_array_equal(t.obs, np.array([o(0), o(3)], np.float32))
    np.testing.assert_array_equal(t.next_obs, np.array([o(1), o(4)], np.float32))
    np.testing.assert_array_equal(t.action, [1, 1])
    c = t.counts
    assert (c.gaps, c.duplicates, c.skipped, c.episodes, c.episodes_used) == (1, 1, 2, 2, 1)
    assert "1 gap(s)" in c.summary() and "2 record(s) without episode_id" in c.summary()


def test_a_halt_without_action_breaks_the_chain_and_the_executed_action_is_used():
    records = [
        rec("e", 0, o(0), action=0, proposed=1),  # SUBSTITUTE: the fallback's 0 was executed
        rec("e", 1, o(1), 1),
        rec("e", 2, o(2), action=None, proposed=1),  # HALT without a fail-safe: nothing executed
        rec("e", 3, o(3), 0),
        rec("e", 4, o(4), 1),
    ]
    t = transitions_from_records(records)
    np.testing.assert_array_equal(t.step, [0, 1, 3])
    np.testing.assert_array_equal(t.action, [0, 1, 0])
    np.testing.assert_array_equal(t.next_obs, np.array([o(1), o(2), o(4)], np.float32))
    assert t.counts.without_action == 1 and t.counts.gaps == 0


def test_box_actions_are_rows_of_the_executed_vector():
    def box(episode, step, obs, executed, proposed):
        return rec(episode, step, obs, action=executed, proposed=proposed, act_dtype=np.float32)

    records = [
        box("p", 0, o(0), [0.5, -0.5], [0.9, -0.9]),  # clipped by a fallback
        box("p", 1, o(1), [0.1, 0.2], [0.1, 0.2]),
        box("p", 2, o(2), [0.0, 0.0], [0.0, 0.0]),
    ]
    t = transitions_from_records(records)
    assert t.action.shape == (2, 2) and t.action.dtype == np.float32
    np.testing.assert_array_equal(t.action, np.array([[0.5, -0.5], [0.1, 0.2]], np.float32))


def test_non_finite_observations_no_records_and_mixed_layouts():
    t = transitions_from_records(
        [rec("e", 0, o(0), 1), rec("e", 1, [np.nan, 0, 0, 0], 1), rec("e", 2, o(2), 1), rec("e", 3, o(3), 0)]
    )
    np.testing.assert_array_equal(t.step, [2])
    assert t.counts.nonfinite == 1

    empty = transitions_from_records([])
    assert empty.obs.shape == (0, 0) and len(empty) == 0 and empty.counts.records == 0

    with pytest.raises(ValueError, match="agents 'cartpole' and 'other'"):
        transitions_from_records([rec("e", 0, o(0), 1), rec("e", 1, o(1), 1, agent="other")])
    with pytest.raises(ValueError, match=r"observation shape \[5\].*--since/--until"):
        transitions_from_records([rec("e", 0, o(0), 1), rec("e", 1, [0, 0, 0, 0, 0], 1)])


# --------------------------------------------------------------------------- CLI on real logs


def write_log(spec: str, records: list[AuditRecord]) -> None:
    backend = open_backend(spec)
    backend.open()
    try:
        backend.write(records)
    finally:
        backend.close()


def test_export_npz_refuses_without_agent_or_with_verdict(tmp_path, capsys):
    db = str(tmp_path / "audit.db")
    write_log(db, [rec("e", 0, o(0), 1), rec("e", 1, o(1), 1)])
    assert main(["audit", "export", "--db", db, "--npz", str(tmp_path / "t.npz")]) == 2
    assert "--npz needs --agent ID" in capsys.readouterr().err
    argv = ["audit", "export", "--db", db, "--agent", "cartpole", "--verdict", "halt", "--npz", "x.npz"]
    assert main(argv) == 2
    assert "--verdict cannot be used with --npz" in capsys.readouterr().err
    assert not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize(
    ("records", "says"),
    [
        ([rec("", 0, o(0), 1), rec("", 1, o(1), 1)], "must send episode_id and step"),
        ([rec("e", 0, o(0), 1), rec("e", 0, o(1), 1), rec("e", 0, o(2), 0)], "sends episode_id but not step"),
        (
            [rec("e", 0, o(0), 1), rec("e", 7, o(7), 1), rec("f", 3, o(3), 1), rec("f", 9, o(9), 1)],
            "set server.audit.record: all for the calibration period",
        ),
        ([rec("e", 0, o(0), 1, agent="other"), rec("e", 1, o(1), 1, agent="other")], "no decision of agent"),
    ],
    ids=["no-episode-ids", "no-steps", "only-some-decisions", "other-agent"],
)
def test_export_npz_without_transitions_fails_saying_why(tmp_path, capsys, records, says):
    db, out = str(tmp_path / "audit.db"), tmp_path / "t.npz"
    write_log(db, records)
    assert main(["audit", "export", "--db", db, "--agent", "cartpole", "--npz", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "interlock: no transitions for agent 'cartpole'" in err and says in err, err
    assert not out.exists()


@needs_postgres
def test_export_npz_from_postgres(tmp_path, capsys):
    records = [rec("e", s, o(s), s % 2) for s in range(5)] + [
        rec("x", s, o(s), 0, agent="other") for s in range(3)
    ]
    out = tmp_path / "pg.npz"
    with postgres_schema() as dsn:
        write_log(dsn, records)
        assert main(["audit", "export", "--db", dsn, "--agent", "cartpole", "--npz", str(out), "-q"]) == 0
    assert "5 record(s), 1 episode(s) (1 with transitions), 4 transition(s)" in capsys.readouterr().err
    data = load_transitions(out)
    np.testing.assert_array_equal(data.get("next_obs"), np.array([o(s) for s in range(1, 5)], np.float32))
    np.testing.assert_array_equal(data.action, [0, 1, 0, 1])


# --------------------------------------------------------------------------- end to end

SERVER = """
server:
  audit: {path: audit.db, record: all}
"""
#: The monitor as shipped with a reference calibration (docs/shift.md's CartPole numbers), inline.
SHIPPED = """
      - kind: transition
        name: drift
        model: dynamics_ensemble.onnx
        residual_scale: [2.1e-5, 8.7e-4, 2.2e-5, 1.3e-3]
        drift: 1.63
        thresholds: {surprise: 3.30, shift: 249}
"""
#: The same monitor reading the file `interlock calibrate` writes.
CALIBRATED = """
      - kind: transition
        name: drift
        model: dynamics_ensemble.onnx
        thresholds_file: transition.json
"""
#: Shadow mode, and a rule that would substitute a push left whenever the pole leans a little.
SHADOW = """
      - kind: rules
        name: limits
        constraints: {upright: "math.abs(obs[2]) < 0.02"}
    shadow: true
    policy:
      rules:
        - {name: leaning, when: "tripped.limits.upright", verdict: substitute, fallback: left}
    fallbacks:
      left: {kind: constant, action: 0}
"""
EPISODE_STEPS = 40
SEEDS = [(11, 12), (13, 14), (15, 16), (17, 18)]


def run_pair(port: int, policy, seeds: tuple[int, int]) -> list[dict[str, list]]:
    """Two CartPole-v1 episodes stepped alternately through two wrappers (so the log interleaves
    them); per episode the observations, executed actions and next observations the env produced."""
    envs = [
        InterlockWrapper(
            gym.make("CartPole-v1", max_episode_steps=EPISODE_STEPS),
            f"127.0.0.1:{port}",
            agent_id="cartpole",
        )
        for _ in seeds
    ]
    seen: list[dict[str, list]] = [{"obs": [], "action": [], "next_obs": [], "verdict": []} for _ in seeds]
    obs = [env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)]
    live = [0, 1]
    while live:
        for i in list(live):
            nxt, _, terminated, truncated, info = envs[i].step(policy(obs[i]))
            seen[i]["obs"].append(obs[i])
            seen[i]["action"].append(info["interlock"]["action"])
            seen[i]["next_obs"].append(nxt)
            seen[i]["verdict"].append(info["interlock"]["verdict"])
            obs[i] = nxt
            if terminated or truncated:
                live.remove(i)
    for env in envs:
        env.close()
    return seen


def test_shadow_traffic_exported_as_npz_calibrates_the_transition_monitor(tmp_path, capsys):
    for f in ("dynamics_ensemble.onnx", "policy.onnx"):
        shutil.copy(CARTPOLE_EXAMPLE / f, tmp_path / f)
    serve_cfg = tmp_path / "serve.yaml"
    serve_cfg.write_text(SERVER + CARTPOLE_HEAD + SHIPPED + SHADOW)
    calib_cfg = tmp_path / "interlock.yaml"
    calib_cfg.write_text(SERVER + CARTPOLE_HEAD + CALIBRATED + SHADOW)
    session = ort.InferenceSession(str(tmp_path / "policy.onnx"), providers=["CPUExecutionProvider"])

    def policy(obs) -> int:
        return int(session.run(None, {"obs": np.asarray(obs, np.float32)[None]})[0].argmax())

    with background_server(load_config(str(serve_cfg))) as srv:
        episodes = [ep for seeds in SEEDS for ep in run_pair(srv.port, policy, seeds)]

    # shadow mode: every answer was ALLOW with the policy's action, though some would have been SUBSTITUTE
    assert {v for ep in episodes for v in ep["verdict"]} == {"ALLOW"}
    log = open_backend(str(tmp_path / "audit.db"))
    log.open()
    would = [r for r in log.query(AuditQuery(agent_id="cartpole")) if r.shadow_verdict == "substitute"]
    log.close()
    assert would and all(int(r.action) == int(r.proposed_action) for r in would)

    out = tmp_path / "own_traffic.npz"
    argv = ["audit", "export", "--config", str(serve_cfg), "--agent", "cartpole", "--npz", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    steps = sum(len(ep["obs"]) for ep in episodes)
    assert f"{steps} record(s), 8 episode(s) (8 with transitions), {steps - 8} transition(s)" in err
    assert f"{steps}/{steps}" in err  # the progress bar over the records
    assert "gap" not in err and "duplicate" not in err

    # the file holds exactly the env's transitions, but each episode's last step (Interlock never saw
    # the observation that followed it)
    data = load_transitions(out)
    nxt, episode, step = data.get("next_obs"), data.episodes(), data.get("step")
    got = {}
    for e in np.unique(episode):
        rows = np.flatnonzero(episode == e)
        np.testing.assert_array_equal(step[rows], np.arange(len(rows)))
        got[data.obs[rows[0]].tobytes()] = (data.obs[rows], data.action[rows], nxt[rows])
    assert len(got) == 8
    for ep in episodes:
        obs, action, next_obs = got[np.asarray(ep["obs"][0], np.float32).tobytes()]
        np.testing.assert_array_equal(obs, np.asarray(ep["obs"][:-1], np.float32))
        np.testing.assert_array_equal(action, np.asarray(ep["action"][:-1], np.int64))
        np.testing.assert_array_equal(next_obs, np.asarray(ep["next_obs"][:-1], np.float32))
    assert data.action.dtype == np.int64 and data.obs.shape == (steps - 8, 4)

    argv = ["calibrate", "--config", str(calib_cfg), "--agent", "cartpole", "--data", str(out), "-q"]
    assert main(argv) == 0
    entry = json.loads((tmp_path / "transition.json").read_text())["monitors"]["drift"]
    assert entry["kind"] == "transition" and sum(entry["episodes"].values()) == 8
    assert entry["thresholds"]["shift"] >= entry["drift"] > 0 and len(entry["residual_scale"]) == 4
    # the calibrated config now loads and serves
    with background_server(load_config(str(calib_cfg))):
        pass


def test_export_npz_path_is_written_as_given(tmp_path, capsys):
    db = str(tmp_path / "audit.db")
    write_log(db, [rec("e", 0, o(0), 1), rec("e", 1, o(1), 0)])
    out = tmp_path / "sub" / "transitions"  # no .npz suffix: numpy must not append one
    assert main(["audit", "export", "--db", db, "--agent", "cartpole", "--npz", str(out), "-q"]) == 0
    assert out.is_file() and not Path(f"{out}.npz").exists()
    assert load_transitions(out).obs.shape == (1, 4)
    assert "next: interlock calibrate" in capsys.readouterr().err
