"""Nothing acknowledged is lost: `interlock serve` killed with SIGKILL and started again on the same store."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from interlock import GuardClient
from interlock.client.operator import OperatorClient
from interlock.escalation.model import Escalation, EscalationState
from interlock.escalation.sqlite import SqliteEscalationStore
from interlock.tensors import to_numpy
from interlock.types import Verdict
from interlock.v1 import interlock_pb2 as pb
from tests.support.escalation import (
    AGENT,
    OPERATOR_TOKEN,
    RISKY,
    AgentCall,
    example_data,
    wait_for,
    write_config,
)

PENDING = pb.ESCALATION_STATE_PENDING


class Serve:
    """``interlock serve`` in a subprocess; ``kill()`` sends SIGKILL (no shutdown code runs)."""

    def __init__(self, config, env) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "interlock.cli", "serve", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+)", line)
        if not match:
            self.proc.kill()
            raise AssertionError(f"serve did not start: {line!r} {self.proc.stderr.read()}")
        self.target = f"127.0.0.1:{match.group(1)}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL


@pytest.fixture
def env():
    e = dict(os.environ, INTERLOCK_OPERATOR_TOKEN=OPERATOR_TOKEN)
    e.pop("INTERLOCK_AGENT_TOKEN", None)
    return e


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_escalation_or_resolution(tmp_path, env, monkeypatch):
    monkeypatch.setenv("INTERLOCK_OPERATOR_TOKEN", OPERATOR_TOKEN)
    data = example_data(tmp_path, mode="deferred", timeout_seconds=120)
    data["agents"].append(dict(data["agents"][0], id="blocking-demo"))
    data["agents"][1]["escalation"] = dict(
        data["agents"][0]["escalation"], mode="blocking", timeout_seconds=20
    )
    config = write_config(tmp_path, data)
    servers: list[Serve] = []
    try:
        # 1. A deferred escalation is acknowledged to the agent (its id is in the answer); then SIGKILL.
        srv = Serve(config, env)
        servers.append(srv)
        with GuardClient(srv.target, agent_id=AGENT) as agent:
            first = agent.check(RISKY, np.int64(1), episode_id="ep-9", step=12, labels={"k": "v"})
        assert first.verdict is Verdict.ESCALATE and first.escalation_id
        srv.kill()

        # 2. After the restart it is still pending with its whole context; answer it, then SIGKILL again.
        srv = Serve(config, env)
        servers.append(srv)
        with OperatorClient(srv.target) as ops:
            [esc] = ops.list(PENDING)
            assert esc.escalation_id == first.escalation_id
            assert (esc.agent_id, esc.episode_id, esc.step, esc.labels["k"]) == (AGENT, "ep-9", 12, "v")
            np.testing.assert_array_equal(to_numpy(esc.observation), RISKY)
            assert to_numpy(esc.proposed_action) == 1 and esc.fallback == "safe"
            ops.approve(esc.escalation_id, operator="alice", comment="after restart")
            # A blocking escalation answered through the API: its resolution must survive too.
            call = AgentCall(srv.target, agent_id="blocking-demo")
            pending = wait_for(lambda: [e for e in ops.list(PENDING) if e.agent_id == "blocking-demo"])
            ops.reject(pending[0].escalation_id, operator="bob")
            blocked = call.wait()
        assert blocked.verdict is Verdict.SUBSTITUTE and blocked.action == 0
        srv.kill()

        # 3. Both resolutions are still there, and the deferred agent follows the remembered approval.
        srv = Serve(config, env)
        servers.append(srv)
        with OperatorClient(srv.target) as ops:
            done = ops.get(first.escalation_id)
            assert done.state == pb.ESCALATION_STATE_APPROVED and done.operator == "alice"
            assert done.comment == "after restart"
            assert ops.get(blocked.escalation_id).state == pb.ESCALATION_STATE_REJECTED
            assert ops.list(PENDING) == []
        with GuardClient(srv.target, agent_id=AGENT) as agent:
            later = agent.check(RISKY, np.int64(1))
        assert later.verdict is Verdict.ALLOW and later.escalation_id == first.escalation_id
        srv.kill()
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.proc.kill()
            s.proc.wait(timeout=10)
            s.proc.stdout.close()
            s.proc.stderr.close()


async def test_sqlite_store_is_wal_durable_and_compare_and_set(tmp_path):
    path = tmp_path / "store.db"
    store = SqliteEscalationStore(path)
    await store.open()
    rec = Escalation(escalation_id="esc-1", agent_id="a", created_time=1.0, deadline_time=9.0)
    await store.create([rec])
    won = dataclasses.replace(rec, state=EscalationState.APPROVED, resolved_time=2.0, operator="alice")
    lost = dataclasses.replace(rec, state=EscalationState.EXPIRED, resolved_time=3.0)
    assert await store.finish(won) is True
    assert await store.finish(lost) is False, "only one final answer may win"
    assert (await store.list(agent_id="a"))[0].operator == "alice"
    assert await store.pending() == []
    assert [e.escalation_id for e in await store.resolved_since(1.5)] == ["esc-1"]
    await store.close()

    conn = sqlite3.connect(path)  # another reader sees WAL mode and the committed row
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT state FROM escalations").fetchone()[0] == pb.ESCALATION_STATE_APPROVED
    conn.execute("PRAGMA user_version=99")
    conn.commit()
    conn.close()
    from interlock.errors import ConfigError

    with pytest.raises(ConfigError, match="newer than this Interlock"):
        await SqliteEscalationStore(path).open()
