"""The audit log: written before answers, group commit, queries, export, retention (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import numpy as np
import pytest

from interlock.audit import AuditQuery, open_backend
from interlock.cli import main
from interlock.server.background import background_server
from interlock.tensors import to_numpy
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.fixtures import box_agent, discrete_agent, loaded
from tests.support.ops import POSTGRES_DSN, TILTED, UPRIGHT, metric_value, needs_postgres, req, write_config


def reset_postgres() -> None:
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS interlock_audit")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=needs_postgres)])
def audit(request, tmp_path):
    """(server.audit section, spec for open_backend) for each backend."""
    if request.param == "sqlite":
        return {"path": "audit/decisions.db"}, str(tmp_path / "audit" / "decisions.db")
    reset_postgres()
    return {"backend": "postgres", "dsn": "${INTERLOCK_TEST_POSTGRES_DSN}"}, POSTGRES_DSN


def read_all(spec: str, **q) -> list:
    b = open_backend(spec)
    b.open()
    try:
        return list(b.query(AuditQuery(**q)))
    finally:
        b.close()


def serve(tmp_path, audit_section, **agent_overrides):
    cfg = loaded(
        [discrete_agent(**agent_overrides), box_agent()], base_dir=tmp_path, server={"audit": audit_section}
    )
    return background_server(cfg)


def test_non_allow_decisions_are_durable_before_the_answer(tmp_path, audit):
    section, spec = audit
    with serve(tmp_path, section) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.GuardStub(ch)
        sub = stub.Check(req(TILTED, episode_id="ep-1", step=7, labels={"site": "lab"}))
        allow = stub.Check(req(UPRIGHT))
        halt_arm = stub.Check(
            req(agent="arm-3", obs=np.zeros(3, np.float32), action=np.array([np.inf, 0], np.float32))
        )
        # Read the log while the server is still up: the records were committed before the answers.
        records = {r.decision_id: r for r in read_all(spec)}
    assert sub.verdict == pb.VERDICT_SUBSTITUTE and allow.verdict == pb.VERDICT_ALLOW
    assert sub.decision_id in records and halt_arm.decision_id in records
    assert allow.decision_id not in records  # plain ALLOWs are not recorded by default
    r = records[sub.decision_id]
    assert (r.agent_id, r.episode_id, r.step, r.verdict, r.rule, r.fallback) == (
        "cartpole",
        "ep-1",
        7,
        "substitute",
        "tilted",
        "noop",
    )
    assert r.config_version == "test-1" and r.labels == {"site": "lab"}
    np.testing.assert_array_equal(r.observation, TILTED)
    assert r.observation.dtype == np.float32
    assert int(r.proposed_action) == 1 and int(r.action) == int(to_numpy(sub.action)) == 0
    assert any(name == "limits.pole_upright" and tripped for name, _, _, tripped in r.signals)
    assert abs(r.time - time.time()) < 60


def test_record_all_and_sampling(tmp_path):
    spec = tmp_path / "all.db"
    with (
        serve(tmp_path, {"path": str(spec), "record": "all"}) as srv,
        grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch,
    ):
        d = pb_grpc.GuardStub(ch).Check(req())
    assert [r.decision_id for r in read_all(str(spec))] == [d.decision_id]

    spec = tmp_path / "sampled.db"
    with (
        serve(tmp_path, {"path": str(spec), "sample_allow": 0.5}) as srv,
        grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch,
    ):
        out = pb_grpc.GuardStub(ch).CheckBatch(pb.CheckBatchRequest(requests=[req()] * 400)).decisions
    assert all(d.verdict == pb.VERDICT_ALLOW for d in out)
    n = len(read_all(str(spec)))
    assert 100 < n < 300, n  # Binomial(400, 0.5): mean 200, sd 10


def test_group_commit_batches_concurrent_writes(tmp_path, audit):
    section, spec = audit
    callers, per_caller = 64, 12
    ids: list[str] = []

    async def drive(port: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.GuardStub(ch)

            async def caller(k: int) -> None:
                for i in range(per_caller):
                    ids.append((await stub.Check(req(TILTED, episode_id=f"c{k}", step=i))).decision_id)

            await asyncio.gather(*(caller(k) for k in range(callers)))

    with serve(tmp_path, section) as srv:
        asyncio.run(drive(srv.port))
        records = metric_value(srv, "interlock_audit_records_total")
        commits = metric_value(srv, "interlock_audit_batch_records_count")
    total = callers * per_caller
    assert records == total == len(set(ids))
    # One transaction per record would give commits == total.
    assert commits < 0.75 * total, f"{commits} transactions for {total} records: writes were not grouped"
    backend = section.get("backend", "sqlite")
    print(f"\ngroup commit ({backend}): {total} records in {commits:.0f} transactions")
    assert {r.decision_id for r in read_all(spec)} == set(ids)


def test_query_export_and_prune_commands(tmp_path, audit, capsys):
    section, spec = audit
    config = tmp_path / "interlock.yaml"
    write_config(config, audit=section)
    with serve(tmp_path, section) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.GuardStub(ch)
        for i in range(5):
            stub.Check(req(TILTED, episode_id="a", step=i))
        stub.Check(req(TILTED, episode_id="b"))
        stub.Check(req(agent="arm-1", obs=np.zeros(3, np.float32), action=np.array([3.0, 0], np.float32)))

    assert main(["audit", "export", "--config", str(config)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 7
    for rec in lines:
        assert {"decision_id", "agent_id", "verdict", "config_version", "time"} <= set(rec)
        assert rec["config_version"] == "test-1" and rec["verdict"] == "substitute"
    assert [r["step"] for r in lines[:5]] == [0, 1, 2, 3, 4]  # oldest first
    assert lines[-1]["observation"] == [0.0, 0.0, 0.0] and lines[-1]["proposed_action"] == [3.0, 0.0]

    assert main(["audit", "export", "--db", spec, "--episode", "a", "--agent", "cartpole"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5
    assert main(["audit", "query", "--config", str(config), "--agent", "arm-1", "--since", "1h"]) == 0
    out = capsys.readouterr().out
    assert "arm-1" in out and "out_of_bounds" in out and "cartpole" not in out
    assert main(["audit", "query", "--db", spec, "--until", "2000-01-01", "--json"]) == 0
    assert capsys.readouterr().out == ""

    assert main(["audit", "prune", "--db", spec, "--keep", "3"]) == 0
    assert "deleted 4 record(s)" in capsys.readouterr().out
    assert len(read_all(spec)) == 3
    assert main(["audit", "prune", "--config", str(config), "--older-than", "0s"]) == 0
    assert read_all(spec) == []


def test_retention_runs_in_the_background(tmp_path):
    spec = tmp_path / "r.db"
    section = {"path": str(spec), "retention": {"max_rows": 10, "interval_seconds": 0.001}}
    with serve(tmp_path, section) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.GuardStub(ch)
        for i in range(30):
            stub.Check(req(TILTED, step=i))
    kept = read_all(str(spec))
    assert len(kept) <= 10 and kept[-1].step == 29
