"""The PostgreSQL escalation store: shared by replicas, compare-and-set resolution, reconnects."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import pytest

from tests.support.ops import POSTGRES_DSN, needs_postgres

pytest.importorskip(
    "interlock.escalation.store", reason="the escalation feature's store interface is not merged yet"
)
pytestmark = needs_postgres

from interlock.errors import ConfigError  # noqa: E402
from interlock.escalation.model import Escalation, EscalationState  # noqa: E402
from interlock.escalation.postgres import PostgresEscalationStore  # noqa: E402
from interlock.v1 import interlock_pb2 as pb  # noqa: E402


def escalation(agent: str = "robot-1", **kw) -> Escalation:
    now = time.time()
    return Escalation(
        escalation_id=uuid.uuid4().hex,
        agent_id=agent,
        state=EscalationState.PENDING,
        created_time=kw.pop("created", now),
        deadline_time=now + 30,
        **kw,
    )


@pytest.fixture
def fresh_table():
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS interlock_escalations")


async def test_two_replicas_share_the_queue_and_only_one_answer_wins(fresh_table):
    a, b = PostgresEscalationStore(POSTGRES_DSN), PostgresEscalationStore(POSTGRES_DSN)
    await asyncio.gather(a.open(), b.open())  # concurrent schema creation is serialised
    try:
        e1, e2 = escalation(created=time.time() - 1), escalation("robot-2", step=4)
        await a.create([e1, e2])
        assert [e.escalation_id for e in await b.pending()] == [e1.escalation_id, e2.escalation_id]
        assert (await b.get(e2.escalation_id)).step == 4
        assert [e.escalation_id for e in await b.list(agent_id="robot-2")] == [e2.escalation_id]

        approve = dataclasses.replace(
            e1, state=EscalationState.APPROVED, resolved_time=time.time(), operator="ann"
        )
        expire = dataclasses.replace(e1, state=EscalationState.EXPIRED, resolved_time=time.time())
        results = await asyncio.gather(a.finish(approve), b.finish(expire))
        assert sorted(results) == [False, True]
        final = await a.get(e1.escalation_id)
        assert final.state == (pb.ESCALATION_STATE_APPROVED if results[0] else pb.ESCALATION_STATE_EXPIRED)
        assert [e.escalation_id for e in await b.pending()] == [e2.escalation_id]
        resolved = await b.resolved_since(time.time() - 60)
        assert [e.escalation_id for e in resolved] == ([e1.escalation_id] if results[0] else [])
        assert await a.list(state=pb.ESCALATION_STATE_PENDING, limit=10) == [await a.get(e2.escalation_id)]
        assert [e.escalation_id for e in await a.list(resolved=True)] == [e1.escalation_id]
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_reconnects_after_the_session_is_killed_and_fails_clearly_when_down(fresh_table):
    import psycopg

    store = PostgresEscalationStore(POSTGRES_DSN)
    await store.open()
    try:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND datname = current_database() AND backend_type = 'client backend'"
            )
        e = escalation()
        await store.create([e])
        assert (await store.get(e.escalation_id)).agent_id == "robot-1"
    finally:
        await store.close()
    down = PostgresEscalationStore("postgresql://nobody@127.0.0.1:1/none", connect_timeout=2)
    with pytest.raises(
        ConfigError, match="cannot open the escalation store at postgresql://nobody@127.0.0.1:1"
    ):
        await down.open()


def test_replicas_behind_one_service_share_escalations_through_postgres(fresh_table, tmp_path, monkeypatch):
    """Two real servers, one PostgreSQL queue: an escalation opened on A is answered through B."""
    import grpc
    import numpy as np

    from interlock.client import make_request
    from interlock.server.background import background_server
    from interlock.v1 import interlock_pb2_grpc as pb_grpc
    from tests.support.fixtures import loaded

    token = "operator-token-0123456789abcdef"
    monkeypatch.setenv("INTERLOCK_OPERATOR_TOKEN", token)
    agent = {
        "id": "escalation-demo",
        "observation": {"shape": [2]},
        "action": {"type": "discrete", "n": 2},
        "policy": {"rules": [{"name": "high", "when": "obs[0] > 0.5", "verdict": "escalate"}]},
        "fallbacks": {"safe": {"kind": "constant", "action": 0}},
        "fail_safe": "safe",
        "escalation": {"mode": "deferred", "timeout_seconds": 30, "fallback": "safe"},
    }
    cfg = loaded(
        [agent],
        base_dir=tmp_path,
        escalations={"store": {"kind": "postgres", "dsn": "${INTERLOCK_TEST_POSTGRES_DSN}"}},
    )
    auth = (("authorization", f"Bearer {token}"),)
    with background_server(cfg) as a, background_server(cfg) as b:
        with grpc.insecure_channel(f"127.0.0.1:{a.port}") as ch:
            d = pb_grpc.GuardStub(ch).Check(
                make_request("escalation-demo", np.array([0.9, 0], np.float32), 1)
            )
        assert d.verdict == pb.VERDICT_ESCALATE and d.escalation_id
        with grpc.insecure_channel(f"127.0.0.1:{b.port}") as ch:
            op = pb_grpc.OperatorStub(ch)
            listed = op.ListEscalations(pb.ListEscalationsRequest(), metadata=auth).escalations
            assert [e.escalation_id for e in listed] == [d.escalation_id]
            done = op.ResolveEscalation(
                pb.ResolveEscalationRequest(
                    escalation_id=d.escalation_id, resolution=pb.RESOLUTION_APPROVE, operator="bob"
                ),
                metadata=auth,
            )
            assert done.state == pb.ESCALATION_STATE_APPROVED
        with grpc.insecure_channel(f"127.0.0.1:{a.port}") as ch:
            seen = pb_grpc.OperatorStub(ch).GetEscalation(
                pb.GetEscalationRequest(escalation_id=d.escalation_id), metadata=auth
            )
        assert seen.state == pb.ESCALATION_STATE_APPROVED and seen.operator == "bob"
