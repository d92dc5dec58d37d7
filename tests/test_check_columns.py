"""CheckColumns gives the same decisions as CheckBatch, row by row, on a real loopback server (issue 13).

Each case sends identical rows through CheckBatch and CheckColumns on two servers with the same
config (fresh state each: escalation stores and audit logs are compared side by side) and checks
verdicts, actions, rules, fallbacks, reasons, signals, audit records and metric counts.
"""

from __future__ import annotations

import math
import re

import grpc
import numpy as np
import pytest

from interlock.audit import AuditQuery, open_backend
from interlock.client import GuardClient
from interlock.client.guard import make_batch_request
from interlock.server.background import background_server
from interlock.types import Verdict
from tests.support.escalation import AGENT, OPERATOR_TOKEN, RISKY, SAFE, example_data, loaded_from
from tests.support.fixtures import box_agent, discrete_agent, loaded

UPRIGHT = [0.0, 0.0, 0.01, 0.0]
TILTED = [0.0, 0.0, 0.3, 0.0]


def decision_metrics(srv) -> dict[tuple, float]:
    """Every sample of the decision counters (decisions, internal errors, shadow) of one server."""
    out = {}
    for family in srv.metrics.registry.collect():
        if family.name in ("interlock_decisions", "interlock_internal_errors", "interlock_shadow_decisions"):
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    out["latency_count"] = srv.metrics.registry.get_sample_value("interlock_decision_duration_seconds_count")
    return out


def both(cfg_a, cfg_b, agent_id, obs, acts, episode_ids=None, steps=None):
    """(CheckBatch results, CheckColumns result, the two servers' metrics)."""
    with background_server(cfg_a) as a, background_server(cfg_b) as b:
        with GuardClient(f"127.0.0.1:{a.port}", agent_id=agent_id) as ca:
            batch = ca.check_batch(obs, acts, episode_ids=episode_ids, steps=steps)
        with GuardClient(f"127.0.0.1:{b.port}", agent_id=agent_id) as cb:
            cols = cb.check_columns(obs, acts, episode_ids=episode_ids, steps=steps)
        return batch, cols, decision_metrics(a), decision_metrics(b)


#: An escalation's deadline in its reason: the two paths run a moment apart, so it may differ by a second.
_DEADLINE = re.compile(r"answer by \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _plain(reasons: list[str], escalation_id: str) -> list[str]:
    reasons = [_DEADLINE.sub("answer by <deadline>", x) for x in reasons]
    return [x.replace(escalation_id, "ESC") if escalation_id else x for x in reasons]


def assert_same(batch, cols) -> None:
    assert len(cols) == len(batch)
    for i, r in enumerate(batch):
        c = cols.result(i)
        got = (c.verdict, c.rule, c.fallback, _plain(c.reasons, c.escalation_id))
        assert got == (r.verdict, r.rule, r.fallback, _plain(r.reasons, r.escalation_id)), i
        assert Verdict(int(cols.verdicts[i])) is r.verdict
        if r.action is None:
            assert not cols.has_action[i] and c.action is None
        else:
            assert cols.has_action[i]
            np.testing.assert_array_equal(cols.actions[i], r.action)
        # CheckBatch leaves out signals of monitors that did not run on a row; columns carry NaN there.
        for name, s in r.signals.items():
            if name == "shadow.would_verdict":
                assert int(cols.shadow_verdicts[i]) == int(s.value)
                continue
            j = cols.signal_names.index(name)
            assert math.isclose(cols.signals[i, j], s.value) or (
                math.isnan(s.value) and math.isnan(cols.signals[i, j])
            )
            assert bool(cols.tripped[i, j]) == s.tripped and cols.thresholds[j] == pytest.approx(
                s.threshold, nan_ok=True
            )
        assert c.decision_id == f"{cols.batch_id}-{i}"


def test_discrete_rows_allow_substitute_and_invalid_actions(tmp_path):
    cfg = loaded([discrete_agent(fail_safe="noop")], base_dir=tmp_path)
    obs = np.array([UPRIGHT, TILTED, UPRIGHT, TILTED, UPRIGHT], np.float32)
    acts = np.array([1, 1, 7, -1, 0], np.int64)  # rows 2 and 3 are outside the action space
    batch, cols, ma, mb = both(cfg, cfg, "cartpole", obs, acts, [f"e{i}" for i in range(5)], list(range(5)))
    assert_same(batch, cols)
    assert [r.verdict.name for r in batch] == ["ALLOW", "SUBSTITUTE", "SUBSTITUTE", "SUBSTITUTE", "ALLOW"]
    assert set(cols.details) == {1, 2, 3}, "plain ALLOW rows carry no per-row detail"
    assert ma == mb and ma["latency_count"] == 5


def test_invalid_actions_without_a_rule_fail_closed_alike(tmp_path):
    agent = box_agent(monitors=[], policy={"rules": [], "default": "allow"}, fail_safe="hold")
    cfg = loaded([agent], base_dir=tmp_path)
    obs = np.zeros((4, 3), np.float32)
    acts = np.array([[0.5, 0.5], [3.0, 0.0], [np.nan, 0.0], [-0.2, 0.9]], np.float32)
    batch, cols, ma, mb = both(cfg, cfg, "arm-1", obs, acts)
    assert_same(batch, cols)
    assert [r.verdict.name for r in batch] == ["ALLOW", "SUBSTITUTE", "SUBSTITUTE", "ALLOW"]
    assert "outside the action space" in cols.reasons(1)[0]
    assert ma == mb


def test_halt_without_fail_safe_has_no_action(tmp_path):
    agent = discrete_agent(
        policy={"rules": [{"name": "tilted", "when": "tripped.limits.pole_upright", "verdict": "halt"}]}
    )
    cfg = loaded([agent], base_dir=tmp_path)
    obs = np.array([UPRIGHT, TILTED], np.float32)
    batch, cols, ma, mb = both(cfg, cfg, "cartpole", obs, np.array([1, 1]))
    assert_same(batch, cols)
    assert batch[1].action is None and cols.details[1].no_action and ma == mb


def test_shadow_mode_matches(tmp_path):
    cfg = loaded([discrete_agent(shadow=True)], base_dir=tmp_path)
    obs = np.array([UPRIGHT, TILTED, UPRIGHT], np.float32)
    acts = np.array([1, 0, 9], np.int64)  # row 2: outside the space keeps its verdict even in shadow mode
    batch, cols, ma, mb = both(cfg, cfg, "cartpole", obs, acts)
    assert_same(batch, cols)
    assert [r.verdict.name for r in batch][:2] == ["ALLOW", "ALLOW"]
    assert batch[1].reasons[0].startswith("shadow mode: would have answered SUBSTITUTE")
    assert int(cols.shadow_verdicts[1]) == int(Verdict.SUBSTITUTE)
    assert ma == mb and any(k[0] == "interlock_shadow_decisions_total" for k in ma if isinstance(k, tuple))


def test_escalation_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERLOCK_OPERATOR_TOKEN", OPERATOR_TOKEN)  # the example names it; unset is refused
    cfg_a = loaded_from(example_data(tmp_path / "a", mode="deferred"))
    cfg_b = loaded_from(example_data(tmp_path / "b", mode="deferred"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    obs = np.stack([SAFE, RISKY, SAFE, RISKY])
    batch, cols, ma, mb = both(cfg_a, cfg_b, AGENT, obs, np.array([1, 1, 1, 1]))
    assert_same_except_escalation_ids(batch, cols)
    assert batch[1].verdict is Verdict.ESCALATE and cols.result(1).escalation_id
    assert ma == mb


def assert_same_except_escalation_ids(batch, cols) -> None:
    assert_same(batch, cols)
    for i, r in enumerate(batch):
        assert bool(r.escalation_id) == bool(cols.result(i).escalation_id)
    # Later rows of the same rule attach to the pending escalation, on both paths.
    assert batch[1].escalation_id == batch[3].escalation_id
    assert cols.result(1).escalation_id == cols.result(3).escalation_id


def audit_rows(path) -> list[dict]:
    b = open_backend(str(path))
    b.open()
    try:
        recs = list(b.query(AuditQuery()))
    finally:
        b.close()
    keep = (
        "verdict",
        "shadow_verdict",
        "rule",
        "fallback",
        "reasons",
        "signals",
        "errors",
        "episode_id",
        "step",
    )
    rows = []
    for r in recs:
        row = {k: getattr(r, k) for k in keep}
        row["observation"] = r.observation.tolist()
        row["proposed_action"] = r.proposed_action.tolist()
        row["action"] = None if r.action is None else r.action.tolist()
        rows.append(row)
    return sorted(rows, key=lambda r: r["step"])


def test_audit_records_non_allow_rows_in_full(tmp_path):
    def cfg(name):
        return loaded(
            [discrete_agent(fail_safe="noop")], base_dir=tmp_path, server={"audit": {"path": f"{name}.db"}}
        )

    obs = np.array([UPRIGHT, TILTED, UPRIGHT, TILTED], np.float32)
    acts = np.array([1, 1, 5, 0], np.int64)
    batch, cols, ma, mb = both(cfg("a"), cfg("b"), "cartpole", obs, acts, ["ep"] * 4, [0, 1, 2, 3])
    assert_same(batch, cols)
    a, b = audit_rows(tmp_path / "a.db"), audit_rows(tmp_path / "b.db")
    assert a == b and [r["step"] for r in a] == [1, 2, 3]
    assert a[0]["signals"] and a[0]["reasons"] and a[0]["observation"] == pytest.approx(TILTED)
    assert ma == mb


def test_unreadable_rows_fail_alone_with_checks_message(tmp_path):
    cfg = loaded([discrete_agent()], base_dir=tmp_path)
    obs = np.array([UPRIGHT, [0.0, np.nan, 0.0, 0.0], TILTED], np.float32)
    with background_server(cfg) as srv, GuardClient(f"127.0.0.1:{srv.port}", agent_id="cartpole") as c:
        cols = c.check_columns(obs, np.array([1, 1, 1]))
        with pytest.raises(grpc.RpcError) as single:
            c.check(obs[1], np.int64(1))
        with pytest.raises(grpc.RpcError) as whole:  # CheckBatch refuses the whole batch
            c.stub.CheckBatch(make_batch_request("cartpole", obs, np.array([1, 1, 1])))
        assert whole.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        row = cols.details[1]
        assert Verdict(int(cols.verdicts[1])) is Verdict.HALT and row.no_action
        assert row.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert row.error.message == single.value.details().replace("observation ", "observations[1] ", 1)
        assert [Verdict(int(v)).name for v in cols.verdicts] == ["ALLOW", "HALT", "SUBSTITUTE"]
        assert (
            srv.metrics.registry.get_sample_value(
                "interlock_requests_rejected_total", {"reason": "non_finite"}
            )
            == 3.0
        )  # the column row, the single Check and the refused CheckBatch


@pytest.mark.parametrize(
    ("obs", "acts", "steps", "message"),
    [
        (
            np.zeros((2, 5), np.float32),
            np.array([1, 1]),
            None,
            "observations has shape [2, 5]; expected [N, 4]",
        ),
        (np.zeros((2, 4), np.float32), np.array([1, 1, 1]), None, "actions has shape [3]; expected [2]"),
        (np.zeros((2, 4), np.float32), np.array([1.0, 1.0]), None, "actions has dtype float64"),
        (
            np.zeros((2, 4), np.int64),
            np.array([1, 1]),
            None,
            "observations has dtype int64; expected float32",
        ),
        (np.zeros((2, 4), np.float32), np.array([1, 1]), [1, 2, 3], "steps has 3 entries"),
    ],
)
def test_malformed_batches_are_refused_with_a_clear_status(server, obs, acts, steps, message):
    with GuardClient(f"127.0.0.1:{server.port}", agent_id="cartpole") as c:
        with pytest.raises(grpc.RpcError) as e:
            c.check_columns(obs, acts, steps=steps)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details()
        assert c.check_columns(np.zeros((1, 4), np.float32), np.array([1])).verdicts.tolist() == [1]
