"""Failover: two replicas on one PostgreSQL, clients under load, one replica killed with SIGKILL.

Clients address both replicas (``GuardClient([a, b])``: round_robin plus the UNAVAILABLE
retry policy). After A is killed they carry on against B; every decision a client
received is in the audit log (``record: all``), every escalation id a client received
is in the escalation store and final, and the calls that failed are counted and printed
(docs/operations.md, "Failover", quotes the figures).
"""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest

from interlock import GuardClient
from interlock.audit import AuditQuery, open_backend
from interlock.client.guard import channel_target, service_config
from tests.support.escalation import AGENT, OPERATOR_TOKEN, RISKY, SAFE, example_data, write_config
from tests.support.ops import ServerProcess, needs_postgres, postgres_schema

CLIENTS = 6
CALLS = 60  # per client: 360 Checks, one in five escalating (blocking, 0.2 s, then the fail-safe)
KILL_AFTER = 120  # acknowledged decisions before A is killed


def test_client_targets_and_service_config():
    assert channel_target("127.0.0.1:1") == ("127.0.0.1:1", False)
    assert channel_target(["127.0.0.1:1", "127.0.0.1:2"]) == ("ipv4:127.0.0.1:1,127.0.0.1:2", True)
    assert channel_target(["[::1]:1", "[::1]:2"]) == ("ipv6:[::1]:1,[::1]:2", True)
    assert channel_target("dns:///interlock-headless:50051") == ("dns:///interlock-headless:50051", True)
    with pytest.raises(ValueError, match="dns:///interlock-headless:50051"):
        channel_target(["replica-a:50051", "replica-b:50051"])
    with pytest.raises(ValueError, match="mixes IPv4 and IPv6"):
        channel_target(["127.0.0.1:1", "[::1]:2"])
    assert '"retryableStatusCodes": ["UNAVAILABLE"]' in service_config()
    assert "round_robin" in service_config(round_robin=True) and "round_robin" not in service_config()
    with pytest.raises(ValueError, match="0 to 4"):
        service_config(retries=5)


def test_a_dead_address_in_the_list_costs_no_call(tmp_path, monkeypatch):
    """round_robin skips an address nobody listens on; every call is answered by the live replica."""
    import socket

    monkeypatch.setenv("INTERLOCK_OPERATOR_TOKEN", OPERATOR_TOKEN)  # the example names it; unset is refused

    from interlock.server.background import background_server
    from tests.support.escalation import loaded_from

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # closed again before the client connects
    with (
        background_server(loaded_from(example_data(tmp_path))) as srv,
        GuardClient([dead, f"127.0.0.1:{srv.port}"], agent_id=AGENT, timeout=10) as client,
    ):
        results = [client.check(SAFE, 1, step=i) for i in range(20)]
    assert all(r.allowed for r in results)


@pytest.mark.slow
@needs_postgres
def test_kill_9_of_one_replica_loses_no_acknowledged_decision(tmp_path):
    data = example_data(tmp_path, timeout_seconds=0.2)
    data["server"]["audit"] = {"backend": "postgres", "dsn": "${INTERLOCK_FAILOVER_DSN}", "record": "all"}
    data["escalations"]["store"] = {"kind": "postgres", "dsn": "${INTERLOCK_FAILOVER_DSN}"}
    path = write_config(tmp_path, data)
    acked: list[tuple[str, str]] = []  # (decision_id, escalation_id)
    failed: list[str] = []
    after_kill = [0]
    killed = threading.Event()
    lock = threading.Lock()

    with postgres_schema("interlock_failover") as dsn:
        env = {"INTERLOCK_FAILOVER_DSN": dsn, "INTERLOCK_OPERATOR_TOKEN": OPERATOR_TOKEN}
        with ServerProcess(path, env=env) as a, ServerProcess(path, env=env) as b:

            def agent(k: int) -> None:
                with GuardClient([a.address, b.address], agent_id=AGENT, timeout=10) as client:
                    for i in range(CALLS):
                        obs = RISKY if (i + k) % 5 == 0 else SAFE
                        try:
                            r = client.check(obs, 1, episode_id=f"client-{k}", step=i)
                        except grpc.RpcError as e:
                            with lock:
                                failed.append(f"{e.code().name}: {e.details()}")
                            continue
                        with lock:
                            acked.append((r.decision_id, r.escalation_id))
                            after_kill[0] += killed.is_set()

            threads = [threading.Thread(target=agent, args=(k,)) for k in range(CLIENTS)]
            start = time.monotonic()
            for t in threads:
                t.start()
            while len(acked) < KILL_AFTER and any(t.is_alive() for t in threads):
                time.sleep(0.005)
            a.proc.send_signal(signal.SIGKILL)
            killed.set()
            acked_at_kill = len(acked)
            a.proc.wait(10)
            for t in threads:
                t.join(60)
            seconds = time.monotonic() - start
            assert b.proc.poll() is None, "replica B died too"

        backend = open_backend(dsn)
        backend.open()
        try:
            audited = {r.decision_id for r in backend.query(AuditQuery())}
        finally:
            backend.close()
        import psycopg

        with psycopg.connect(dsn) as conn:
            states = dict(conn.execute("SELECT escalation_id, state FROM interlock_escalations").fetchall())

    decisions = {d for d, _ in acked}
    escalations = {e for _, e in acked if e}
    orphans = sum(1 for s in states.values() if s == 1)
    print(
        f"failover: {CLIENTS} clients x {CALLS} Checks in {seconds:.1f} s; A killed after {acked_at_kill} "
        f"acknowledged; {len(acked)} acknowledged ({after_kill[0]} after the kill, all by B), "
        f"{len(failed)} failed {sorted(set(failed))}; audit holds {len(audited)} records "
        f"({len(audited) - len(decisions)} not acknowledged); {len(escalations)} acknowledged escalations, "
        f"{orphans} left pending by the killed replica"
    )
    assert not any(t.is_alive() for t in threads), "a client hung after the kill"
    assert len(acked) + len(failed) == CLIENTS * CALLS
    assert after_kill[0] >= CLIENTS * CALLS // 2, "clients did not carry on against B"
    missing = decisions - audited
    assert not missing, f"{len(missing)} acknowledged decisions are missing from the audit log"
    assert escalations and escalations <= set(states), "an acknowledged escalation is missing from the store"
    assert all(states[e] != 1 for e in escalations), "an acknowledged escalation is still pending"
    # Retries cover calls in flight on A; at most one call per client can have been refused outright.
    assert len(failed) <= CLIENTS, failed
