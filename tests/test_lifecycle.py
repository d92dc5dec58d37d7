"""Concurrency limits, client deadlines and graceful shutdown on SIGTERM."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from interlock.audit import AuditQuery, open_backend
from interlock.server.background import background_server
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.fixtures import box_agent, discrete_agent, loaded
from tests.support.ops import TILTED, ServerProcess, health_status, metric_value, req, write_config


def held_stream(stub, release: threading.Event, answers: list):
    """A CheckStream that sends one request, then holds the call open until ``release``."""

    def requests():
        yield req()
        release.wait()

    def run():
        answers.extend(stub.CheckStream(requests()))

    t = threading.Thread(target=run)
    t.start()
    return t


def test_concurrency_limit_gives_resource_exhausted_and_health_still_answers(tmp_path):
    cfg = loaded([discrete_agent(), box_agent()], base_dir=tmp_path, server={"max_concurrent_rpcs": 2})
    release = threading.Event()
    answers: list = []
    with background_server(cfg) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.GuardStub(ch)
        holders = [held_stream(stub, release, answers) for _ in range(2)]
        deadline = time.monotonic() + 5
        while metric_value(srv, "interlock_rpcs_in_flight") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(req(), timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 2 concurrent calls (server.max_concurrent_rpcs)" in err.value.details()
        assert metric_value(srv, "interlock_requests_rejected_total", reason="concurrency") == 1
        assert health_status(ch) == health_pb2.HealthCheckResponse.SERVING  # probes are exempt
        release.set()
        for t in holders:
            t.join()
        assert len(answers) == 2
        assert stub.Check(req()).verdict == pb.VERDICT_ALLOW
        assert metric_value(srv, "interlock_rpcs_in_flight") == 0


def test_client_deadline_ends_the_wait_for_a_blocked_audit_store(tmp_path):
    db = tmp_path / "audit.db"
    cfg = loaded([discrete_agent()], base_dir=tmp_path, server={"audit": {"path": str(db)}})
    with background_server(cfg) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.GuardStub(ch)
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # the audit writer now waits up to its busy timeout (5 s)
        try:
            start = time.monotonic()
            call = stub.Check.future(req(TILTED), timeout=1.0)
            while metric_value(srv, "interlock_rpcs_in_flight") < 1:  # the server is waiting on the store
                assert time.monotonic() - start < 1.0, "the call never reached the server"
                time.sleep(0.005)
            with pytest.raises(grpc.RpcError) as err:
                call.result()
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # The server stopped waiting at the deadline too, while the store is still locked.
            while metric_value(srv, "interlock_rpcs_in_flight") > 0:
                assert time.monotonic() - start < 3.0, "the call kept waiting past the client's deadline"
                time.sleep(0.01)
            took = time.monotonic() - start
            print(f"\ndeadline 1.0 s: the server let go after {took:.2f} s (lock held 5 s)")
            assert metric_value(srv, "interlock_requests_rejected_total", reason="deadline_exceeded") == 1
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert stub.Check(req(TILTED), timeout=5).verdict == pb.VERDICT_SUBSTITUTE


def test_sigterm_drains_finishes_in_flight_calls_flushes_audit_and_exits(tmp_path):
    path = write_config(
        tmp_path / "interlock.yaml",
        audit={"path": "audit.db"},
        drain_seconds=1.0,
        grace_seconds=10.0,
    )
    n = 20
    sent_sigterm = threading.Event()
    with ServerProcess(path) as server, grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.GuardStub(ch)
        assert health_status(ch) == health_pb2.HealthCheckResponse.SERVING

        def slow_requests():
            for i in range(n):
                if i == 3:
                    server.signal(signal.SIGTERM)
                    sent_sigterm.set()
                time.sleep(0.1)
                yield req(TILTED, step=i)

        statuses: list[int] = []

        def probe():
            sent_sigterm.wait()
            with grpc.insecure_channel(server.address) as other:
                for _ in range(20):
                    try:
                        statuses.append(health_status(other))
                    except grpc.RpcError:
                        break
                    time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()
        out = list(stub.CheckStream(slow_requests(), timeout=30))
        prober.join()
        assert server.proc.wait(30) == 0
    assert len(out) == n and all(d.verdict == pb.VERDICT_SUBSTITUTE for d in out)
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    assert "shutting down" in server.output()
    b = open_backend(str(tmp_path / "audit.db"))
    b.open()
    stored = {r.decision_id for r in b.query(AuditQuery())}
    b.close()
    assert {d.decision_id for d in out} <= stored
