"""Faults: a raising ONNX session, a full or read-only audit disk, an unreachable store.

Each must fail closed as configured (never an unchecked ALLOW, never an answer
that was not recorded) and be visible in metrics. Disk faults use a real tiny
tmpfs (needs root to mount); the store outage cuts a real TCP proxy in front of
PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import uuid

import grpc
import numpy as np
import pytest

from interlock.audit import AuditQuery, open_backend
from interlock.errors import Unavailable
from interlock.server.background import background_server
from interlock.tensors import to_numpy
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.fixtures import discrete_agent, linear_model, loaded
from tests.support.ops import POSTGRES_DSN, TILTED, UPRIGHT, metric_value, needs_postgres, req


def test_onnx_session_raising_fails_closed(tmp_path):
    # The backup policy expects 5 inputs; the agent sends 4: onnxruntime raises at run time.
    linear_model(tmp_path / "bad.onnx", np.ones((5, 2), np.float32))
    agent = discrete_agent(fail_safe="noop")
    agent["fallbacks"]["backup"] = {"kind": "onnx_policy", "model": "bad.onnx", "output": "logits"}
    agent["policy"]["rules"][1]["fallback"] = "backup"
    agent["policy"]["rules"].append(
        {"name": "always_escalate", "when": "true", "verdict": "escalate", "fallback": "backup"}
    )
    with (
        background_server(loaded([agent], base_dir=tmp_path)) as srv,
        grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch,
    ):
        stub = pb_grpc.GuardStub(ch)
        d = stub.Check(req(TILTED))
        assert d.verdict == pb.VERDICT_HALT and to_numpy(d.action).size == 0
        assert any("fallback 'backup' failed" in r for r in d.reasons)
        d = stub.Check(req(UPRIGHT))  # the escalation's fallback raises too: HALT, not ALLOW
        assert d.verdict == pb.VERDICT_HALT
        errors = metric_value(
            srv, "interlock_internal_errors_total", agent="cartpole", stage="fallback:backup"
        )
    assert errors == 2


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs mounted at tmp_path/disk (root only)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill the disk needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_audit_disk_full_fails_closed_then_recovers(tmp_path, tiny_disk):
    cfg = loaded([discrete_agent()], base_dir=tmp_path, server={"audit": {"path": str(tiny_disk / "a.db")}})
    with background_server(cfg) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.GuardStub(ch)
        assert stub.Check(req(TILTED)).verdict == pb.VERDICT_SUBSTITUTE
        fill(tiny_disk / "filler")
        failures = 0
        for i in range(50):  # the WAL has some slack; the disk is full within a few records
            try:
                stub.Check(req(TILTED, step=i, labels={"pad": "x" * 4000}))
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
                assert "audit log could not record the decision (disk_full" in e.details()
                failures += 1
                break
        assert failures == 1
        assert metric_value(srv, "interlock_audit_errors_total", kind="disk_full") >= 1
        assert stub.Check(req(UPRIGHT)).verdict == pb.VERDICT_ALLOW  # plain ALLOWs need no record
        os.remove(tiny_disk / "filler")
        assert stub.Check(req(TILTED)).verdict == pb.VERDICT_SUBSTITUTE  # recovered

        # The file is deleted under the open connection (log rotation gone wrong): SQLite would go on
        # writing into the unlinked file; the backend notices and starts a new file at the path.
        os.remove(tiny_disk / "a.db")
        d = stub.Check(req(TILTED, episode_id="after-delete"))
        b = open_backend(str(tiny_disk / "a.db"))
        b.open()
        assert [r.decision_id for r in b.query(AuditQuery())] == [d.decision_id]
        b.close()


def test_read_only_audit_disk_stops_the_server_from_starting(tmp_path, tiny_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    cfg = loaded([discrete_agent()], base_dir=tmp_path, server={"audit": {"path": str(tiny_disk / "a.db")}})
    with (
        pytest.raises(Unavailable, match=r"cannot open the audit log at .*a\.db: OperationalError"),
        background_server(cfg),
    ):
        pass


def test_audit_fail_mode_open_answers_and_counts(tmp_path, tiny_disk):
    cfg = loaded(
        [discrete_agent()],
        base_dir=tmp_path,
        server={"audit": {"path": str(tiny_disk / "a.db"), "fail_mode": "open"}},
    )
    with background_server(cfg) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.GuardStub(ch)
        fill(tiny_disk / "filler")
        for i in range(50):
            assert (
                stub.Check(req(TILTED, step=i, labels={"pad": "x" * 4000})).verdict == pb.VERDICT_SUBSTITUTE
            )
        assert metric_value(srv, "interlock_audit_errors_total", kind="disk_full") >= 1


class Proxy:
    """A loopback TCP proxy that can be cut (connections reset, new ones refused) and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for s in self.conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self.conns.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@needs_postgres
def test_postgres_outage_fails_closed_and_recovers(tmp_path):
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    info = conninfo_to_dict(POSTGRES_DSN)
    proxy = Proxy((info.get("host", "127.0.0.1"), int(info.get("port", 5432))))
    dsn = make_conninfo(POSTGRES_DSN, host="127.0.0.1", port=str(proxy.port))
    os.environ["INTERLOCK_TEST_PROXIED_DSN"] = dsn
    cfg = loaded(
        [discrete_agent()],
        base_dir=tmp_path,
        server={"audit": {"backend": "postgres", "dsn": "${INTERLOCK_TEST_PROXIED_DSN}"}},
    )
    try:
        with background_server(cfg) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = pb_grpc.GuardStub(ch)
            assert stub.Check(req(TILTED)).verdict == pb.VERDICT_SUBSTITUTE

            # The database kills our session (failover, restart): reconnected and retried transparently.
            with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                    "AND datname = current_database() AND backend_type = 'client backend'"
                ).fetchall()
            assert killed and all(k for (k,) in killed)
            ok = stub.Check(req(TILTED, episode_id="after-terminate"))
            assert ok.verdict == pb.VERDICT_SUBSTITUTE

            proxy.cut()  # the network to the database is gone
            with pytest.raises(grpc.RpcError) as err:
                stub.Check(req(TILTED))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "audit log could not record" in err.value.details()
            assert metric_value(srv, "interlock_audit_errors_total", kind="unreachable") >= 1
            proxy.restore()
            back = stub.Check(req(TILTED, episode_id=uuid.uuid4().hex))
            assert back.verdict == pb.VERDICT_SUBSTITUTE
        with psycopg.connect(POSTGRES_DSN) as conn:
            ids = {r[0] for r in conn.execute("SELECT decision_id FROM interlock_audit")}
        assert {ok.decision_id, back.decision_id} <= ids
    finally:
        proxy.close()
        os.environ.pop("INTERLOCK_TEST_PROXIED_DSN", None)


def test_unreachable_audit_store_stops_the_server_from_starting(tmp_path):
    cfg = loaded(
        [discrete_agent()],
        base_dir=tmp_path,
        server={
            "audit": {"backend": "postgres", "dsn": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"}
        },
    )
    pytest.importorskip("psycopg")
    with (
        pytest.raises(Unavailable, match=r"cannot open the audit log at postgresql://nobody@127.0.0.1:1"),
        background_server(cfg),
    ):
        pass
