"""Escalations end to end over a real gRPC server: the Operator API, blocking and deferred modes,
deadlines, flood control and metrics (examples/escalation/interlock.yaml, real SQLite)."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest

from interlock import GuardClient
from interlock.client.operator import OperatorClient
from interlock.server.background import background_server
from interlock.tensors import from_numpy, to_numpy
from interlock.types import Verdict
from interlock.v1 import interlock_pb2 as pb
from tests.support.escalation import (
    AGENT,
    OPERATOR_TOKEN,
    RISKY,
    SAFE,
    AgentCall,
    example_data,
    example_loaded,
    loaded_from,
    wait_for,
)

PENDING = pb.ESCALATION_STATE_PENDING


@pytest.fixture(autouse=True)
def operator_token(monkeypatch):
    monkeypatch.setenv("INTERLOCK_OPERATOR_TOKEN", OPERATOR_TOKEN)
    monkeypatch.delenv("INTERLOCK_AGENT_TOKEN", raising=False)


def pending_one(ops: OperatorClient) -> pb.Escalation:
    return wait_for(lambda: ops.list(PENDING))[0]


def metrics_text(srv) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{srv.bound_metrics_port}/metrics").read().decode()


def test_example_config_is_what_the_issue_asks_for():
    from interlock.config import load_config
    from tests.support.escalation import EXAMPLE

    cfg = load_config(EXAMPLE).config
    [agent] = cfg.agents
    assert agent.id == AGENT and agent.observation.shape == [2] and agent.observation.dtype == "float32"
    assert agent.action.type == "discrete" and agent.action.n == 2
    assert agent.escalation.mode == "blocking" and agent.escalation.timeout_seconds == 2.0
    assert cfg.auth.operator_tokens.env == "INTERLOCK_OPERATOR_TOKEN"
    assert agent.fallbacks[agent.escalation.fallback].action == 0
    rule = next(r for r in agent.policy.rules if r.verdict == "escalate")
    assert rule.when == "obs[0] > 0.5"


def test_blocking_check_is_answered_through_the_operator_api(tmp_path):
    with background_server(example_loaded(tmp_path, timeout_seconds=15), metrics_port=0) as srv:
        target = f"127.0.0.1:{srv.port}"
        with OperatorClient(target) as ops:
            call = AgentCall(target, episode_id="ep-1", step=4, labels={"site": "bay 3"})
            esc = pending_one(ops)
            assert (esc.agent_id, esc.episode_id, esc.step, esc.rule) == (AGENT, "ep-1", 4, "high_stakes")
            assert esc.mode == "blocking" and esc.state == PENDING and esc.labels["site"] == "bay 3"
            np.testing.assert_array_equal(to_numpy(esc.observation), RISKY)
            assert to_numpy(esc.proposed_action) == 1 and to_numpy(esc.fallback_action) == 0
            assert esc.fallback == "safe" and esc.deadline_time - esc.created_time == pytest.approx(15)
            assert {s.name for s in esc.signals} == {"action_space.invalid", "action_space.distance"}
            assert ops.get(esc.escalation_id) == esc
            assert call.thread.is_alive(), "a blocking Check must wait for the operator"
            with GuardClient(target, agent_id=AGENT, timeout=5) as other:  # the event loop is not blocked
                assert other.check(SAFE, np.int64(1)).verdict is Verdict.ALLOW
            assert call.thread.is_alive()

            done = ops.approve(esc.escalation_id, operator="alice", comment="clear to go")
            r = call.wait()
            assert r.verdict is Verdict.ALLOW and r.action == 1 and r.escalation_id == esc.escalation_id
            assert any("alice approved" in x and "clear to go" in x for x in r.reasons)
            assert done.state == pb.ESCALATION_STATE_APPROVED and done.operator == "alice"
            # A bare token in a variable is named after its role, never "$VARIABLE".
            assert done.authenticated_as == "operator" and done.resolved_time > 0

            call = AgentCall(target)
            esc = pending_one(ops)
            ops.reject(esc.escalation_id, operator="bob")
            r = call.wait()
            assert r.verdict is Verdict.SUBSTITUTE and r.action == 0 and r.fallback == "safe"
            assert any("bob rejected" in x for x in r.reasons)

            call = AgentCall(target, action=0)
            esc = pending_one(ops)
            ops.substitute(esc.escalation_id, 1, operator="carol")
            r = call.wait()
            assert r.verdict is Verdict.SUBSTITUTE and r.action == 1 and r.fallback == "operator"

            states = [e.state for e in ops.list()]
            assert sorted(states) == [pb.ESCALATION_STATE_APPROVED, pb.ESCALATION_STATE_REJECTED,
                                      pb.ESCALATION_STATE_SUBSTITUTED]  # fmt: skip
        text = metrics_text(srv)
    for outcome in ("approved", "rejected", "substituted"):
        assert f'interlock_escalations_total{{agent="{AGENT}",outcome="{outcome}"}} 1.0' in text
    assert "interlock_escalations_pending 0.0" in text
    assert "interlock_escalation_wait_seconds_count 3.0" in text
    assert f'interlock_decisions_total{{agent="{AGENT}",rule="high_stakes",verdict="allow"}} 1.0' in text


def test_unanswered_blocking_check_times_out_to_the_fail_safe(tmp_path):
    loaded = example_loaded(tmp_path)  # the example as shipped: a 2-second deadline
    assert loaded.config.agents[0].escalation.timeout_seconds == 2.0
    with background_server(loaded, metrics_port=0) as srv:
        target = f"127.0.0.1:{srv.port}"
        call = AgentCall(target)
        r = call.wait()
        assert call.seconds >= 1.9, "the Check should have waited for the deadline"
        assert r.verdict is Verdict.SUBSTITUTE and r.action == 0 and r.fallback == "safe"
        assert any("no operator answered" in x and "within 2 s" in x for x in r.reasons), r.reasons
        with OperatorClient(target) as ops:
            esc = ops.get(r.escalation_id)
            assert esc.state == pb.ESCALATION_STATE_EXPIRED and to_numpy(esc.resolved_action) == 0
            with pytest.raises(grpc.RpcError) as err:
                ops.approve(r.escalation_id)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "expired" in err.value.details()
        assert f'interlock_escalations_total{{agent="{AGENT}",outcome="expired"}} 1.0' in metrics_text(srv)


def test_resolutions_are_final_idempotent_and_checked(tmp_path):
    loaded = example_loaded(tmp_path, mode="deferred", timeout_seconds=60, remember_seconds=0)
    with background_server(loaded) as srv:
        target = f"127.0.0.1:{srv.port}"
        with GuardClient(target, agent_id=AGENT) as agent, OperatorClient(target) as ops:
            first = agent.check(RISKY, np.int64(1)).escalation_id
            a = ops.approve(first, operator="alice", comment="ok")
            again = ops.approve(first, operator="someone else", comment="again")
            assert again == a and again.operator == "alice", "the same resolution twice succeeds, unchanged"
            for conflicting in (lambda: ops.reject(first), lambda: ops.substitute(first, 0)):
                with pytest.raises(grpc.RpcError) as err:
                    conflicting()
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "already approved by alice" in err.value.details()

            second = agent.check(RISKY, np.int64(1)).escalation_id  # remember_seconds 0: a new escalation
            assert second and second != first
            bad = [
                (lambda: ops.substitute(second, 5), "outside the action space"),
                (lambda: ops.substitute(second, 0.5), "dtype float64"),
                (lambda: ops.resolve(second, pb.RESOLUTION_SUBSTITUTE), "needs the operator's action"),
                (lambda: ops.resolve(second, pb.RESOLUTION_UNSPECIFIED), "RESOLUTION_APPROVE"),
                (lambda: ops.resolve(second, pb.RESOLUTION_APPROVE, action=1), "only used with"),
            ]
            for call, words in bad:
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.value.details()
            assert ops.get(second).state == PENDING, "rejected calls must not change the escalation"

            s = ops.substitute(second, 1, operator="bob")
            assert ops.substitute(second, 1) == s
            with pytest.raises(grpc.RpcError) as err:
                ops.substitute(second, 0)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

            with pytest.raises(grpc.RpcError) as err:
                ops.get("esc-does-not-exist")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as err:
                ops.stub.ResolveEscalation(
                    pb.ResolveEscalationRequest(
                        escalation_id=second,
                        resolution=pb.RESOLUTION_SUBSTITUTE,
                        action=pb.Tensor(dtype=pb.DATA_TYPE_INT64, shape=[], data=b"\x01"),
                    ),
                    metadata=ops.metadata,
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bytes" in err.value.details()


def test_deferred_escalation_expires_and_late_answers_are_refused(tmp_path):
    with background_server(example_loaded(tmp_path, mode="deferred", timeout_seconds=0.4)) as srv:
        target = f"127.0.0.1:{srv.port}"
        with GuardClient(target, agent_id=AGENT) as agent, OperatorClient(target) as ops:
            r = agent.check(RISKY, np.int64(1))
            assert r.verdict is Verdict.ESCALATE and r.action == 0 and r.escalation_id
            wait_for(lambda: ops.get(r.escalation_id).state == pb.ESCALATION_STATE_EXPIRED, timeout=5)
            with pytest.raises(grpc.RpcError) as err:
                ops.reject(r.escalation_id)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "expired" in err.value.details()


def test_deferred_mode_answers_at_once_then_follows_the_operator(tmp_path):
    with background_server(example_loaded(tmp_path, mode="deferred", timeout_seconds=60)) as srv:
        target = f"127.0.0.1:{srv.port}"
        with GuardClient(target, agent_id=AGENT) as agent, OperatorClient(target) as ops:
            first = agent.check(RISKY, np.int64(1), step=1)
            assert first.verdict is Verdict.ESCALATE and first.action == 0 and first.fallback == "safe"
            again = agent.check(RISKY, np.int64(1), step=2)
            assert again.verdict is Verdict.ESCALATE and again.escalation_id == first.escalation_id
            assert any("waiting for an operator" in x for x in again.reasons)
            assert len(ops.list(PENDING)) == 1, "later escalations attach to the pending one"
            assert agent.check(SAFE, np.int64(1)).verdict is Verdict.ALLOW

            ops.reject(first.escalation_id, operator="alice")
            later = agent.check(RISKY, np.int64(1), step=3)
            assert later.verdict is Verdict.SUBSTITUTE and later.action == 0
            assert later.escalation_id == first.escalation_id
            assert any("remembered answer" in x and "alice rejected" in x for x in later.reasons)
            assert ops.list(PENDING) == []


def test_deferred_halt_holds_the_agent_until_approval(tmp_path):
    loaded = example_loaded(tmp_path, mode="deferred", timeout_seconds=60, while_pending="halt")
    with background_server(loaded) as srv:
        target = f"127.0.0.1:{srv.port}"
        with GuardClient(target, agent_id=AGENT) as agent, OperatorClient(target) as ops:
            first = agent.check(RISKY, np.int64(1))
            assert first.verdict is Verdict.ESCALATE
            held = agent.check(SAFE, np.int64(1))
            assert held.verdict is Verdict.HALT and held.action == 0 and held.fallback == "safe"
            assert held.escalation_id == first.escalation_id
            ops.approve(first.escalation_id, operator="alice")
            assert agent.check(SAFE, np.int64(1)).verdict is Verdict.ALLOW
            remembered = agent.check(RISKY, np.int64(1))
            assert remembered.verdict is Verdict.ALLOW and remembered.action == 1
            assert any("remembered answer" in x for x in remembered.reasons)


def test_flood_control_per_agent_and_in_total(tmp_path):
    loaded = example_loaded(tmp_path, timeout_seconds=0.5, max_pending=1)
    with background_server(loaded, metrics_port=0) as srv:
        with GuardClient(f"127.0.0.1:{srv.port}", agent_id=AGENT) as agent:
            out = agent.check_batch(np.stack([RISKY, RISKY]), np.array([1, 1]))
        assert [r.verdict for r in out] == [Verdict.SUBSTITUTE, Verdict.SUBSTITUTE]
        assert [r.action for r in out] == [0, 0]
        assert any("no operator answered" in x for x in out[0].reasons)
        assert out[1].escalation_id == "" and any("already has 1 pending" in x for x in out[1].reasons)
        text = metrics_text(srv)
        assert f'interlock_escalations_total{{agent="{AGENT}",outcome="dropped"}} 1.0' in text
        assert f'interlock_escalations_total{{agent="{AGENT}",outcome="expired"}} 1.0' in text

    data = example_data(tmp_path / "total", mode="deferred", timeout_seconds=60)
    data["agents"][0]["id"] = "escalation-*"
    data["escalations"]["max_pending_total"] = 1
    with background_server(loaded_from(data)) as srv:
        with GuardClient(f"127.0.0.1:{srv.port}") as agent:
            a = agent.check(RISKY, np.int64(1), agent_id="escalation-a")
            b = agent.check(RISKY, np.int64(1), agent_id="escalation-b")
        assert a.verdict is Verdict.ESCALATE and a.escalation_id
        assert b.verdict is Verdict.SUBSTITUTE and b.action == 0 and not b.escalation_id
        assert any("max_pending_total" in x for x in b.reasons)


def test_watch_streams_new_and_resolved_escalations(tmp_path):
    loaded = example_loaded(tmp_path, mode="deferred", timeout_seconds=60, remember_seconds=0)
    with background_server(loaded) as srv:
        target = f"127.0.0.1:{srv.port}"
        with GuardClient(target, agent_id=AGENT) as agent, OperatorClient(target) as ops:
            before = agent.check(RISKY, np.int64(1), episode_id="old").escalation_id
            stream = ops.watch(include_pending=True)
            first = next(stream)
            assert first.escalation_id == before and first.state == PENDING
            ops.approve(before)
            resolved = next(stream)
            assert resolved.escalation_id == before and resolved.state == pb.ESCALATION_STATE_APPROVED
            after = agent.check(RISKY, np.int64(1), episode_id="new").escalation_id
            opened = next(stream)
            assert opened.escalation_id == after and opened.episode_id == "new" and opened.state == PENDING
            stream.cancel()


def test_substitute_action_for_a_box_agent_is_checked_against_its_bounds(tmp_path):
    data = example_data(tmp_path, mode="deferred", timeout_seconds=60)
    data["agents"][0]["action"] = {"type": "box", "shape": [2], "low": -1.0, "high": 1.0}
    data["agents"][0]["fallbacks"]["safe"] = {"kind": "constant", "action": [0.0, 0.0]}
    data["agents"][0]["policy"]["rules"][0]["fallback"] = "safe"
    with background_server(loaded_from(data)) as srv:
        target = f"127.0.0.1:{srv.port}"
        with GuardClient(target, agent_id=AGENT) as agent, OperatorClient(target) as ops:
            eid = agent.check(RISKY, np.array([0.5, 0.5], np.float32)).escalation_id
            with pytest.raises(grpc.RpcError) as err:
                ops.substitute(eid, [2.0, 0.0])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outside" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                ops.substitute(eid, [0.1])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "shape" in err.value.details()
            done = ops.substitute(eid, [0.25, -0.5])
            np.testing.assert_allclose(to_numpy(done.resolved_action), [0.25, -0.5])
            assert done.resolved_action.dtype == from_numpy(np.zeros(2, np.float32)).dtype


async def test_a_failing_store_fails_closed_to_the_fail_safe(tmp_path):
    from interlock.engine import Guard
    from interlock.escalation.manager import EscalationManager
    from interlock.escalation.sqlite import SqliteEscalationStore
    from interlock.server.metrics import Metrics
    from interlock.types import CheckInput

    guard = Guard(example_loaded(tmp_path)).load()
    metrics = Metrics()
    manager = EscalationManager(SqliteEscalationStore(tmp_path / "gone.db"), metrics, lambda: guard)
    await manager.start()
    await manager.store.close()  # the disk is gone from under the running server
    [d] = guard.check([CheckInput(AGENT, RISKY, np.int64(1))])
    assert d.verdict is Verdict.ESCALATE
    await manager.handle(guard, [d])
    assert d.verdict is Verdict.SUBSTITUTE and d.action == 0 and d.escalation_id == ""
    assert any("the escalation store failed" in x for x in d.reasons)
    assert manager.pending_count == 0
    dropped = metrics.registry.get_sample_value(
        "interlock_escalations_total", {"agent": AGENT, "outcome": "dropped"}
    )
    assert dropped == 1.0
    await manager.close()
