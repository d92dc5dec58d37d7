"""`interlock escalations ...` answers a blocking Check (in-process main() and real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from interlock.cli import main
from interlock.client.operator import OperatorClient
from interlock.server.background import background_server
from interlock.types import Verdict
from interlock.v1 import interlock_pb2 as pb
from tests.support.escalation import OPERATOR_TOKEN, AgentCall, example_loaded, wait_for


@pytest.fixture(autouse=True)
def operator_token(monkeypatch):
    monkeypatch.setenv("INTERLOCK_OPERATOR_TOKEN", OPERATOR_TOKEN)
    monkeypatch.delenv("INTERLOCK_AGENT_TOKEN", raising=False)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["escalations", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _pending_id(target: str) -> str:
    with OperatorClient(target) as ops:
        return wait_for(lambda: ops.list(pb.ESCALATION_STATE_PENDING))[0].escalation_id


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "interlock.cli", "escalations", *args]


def test_cli_lists_shows_and_answers_blocking_checks(tmp_path, capsys):
    env = dict(os.environ, INTERLOCK_OPERATOR_TOKEN=OPERATOR_TOKEN)
    with background_server(example_loaded(tmp_path, timeout_seconds=20)) as srv:
        target = f"127.0.0.1:{srv.port}"
        t = ["--target", target]

        call = AgentCall(target, episode_id="ep-cli", step=3)
        eid = _pending_id(target)
        rc, out, _ = _cli(capsys, "list", *t, "--json")
        [listed] = json.loads(out)
        assert rc == 0 and listed["escalation_id"] == eid and listed["state"] == "pending"
        assert listed["observation"] == pytest.approx([0.9, 0.1]) and listed["proposed_action"] == 1
        rc, out, _ = _cli(capsys, "list", *t)
        assert rc == 0 and eid in out and "pending" in out and "high_stakes" in out
        rc, out, _ = _cli(capsys, "show", eid, *t)
        assert rc == 0 and "observation [2] float32" in out and "[0] 0.9" in out
        assert "fail-safe        'safe' -> 0" in out and "action_space.invalid" in out

        # Approve as an operator types it: a separate process, the token from the environment.
        proc = subprocess.run(
            _cmd("approve", eid, *t, "--operator", "dana", "--comment", "via cli"),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert f"{eid}: approved by dana; the agent executes 1" in proc.stdout
        r = call.wait()
        assert r.verdict is Verdict.ALLOW and r.action == 1 and any("via cli" in x for x in r.reasons)

        call = AgentCall(target)
        eid2 = _pending_id(target)
        assert _cli(capsys, "reject", eid2, *t, "--operator", "erin")[0] == 0
        r = call.wait()
        assert r.verdict is Verdict.SUBSTITUTE and r.action == 0

        call = AgentCall(target, action=0)
        eid3 = _pending_id(target)
        rc, out, err = _cli(capsys, "substitute", eid3, *t, "--action", "not json")
        assert rc == 2 and "--action 'not json' is not JSON" in err
        rc, out, err = _cli(capsys, "substitute", eid3, *t, "--action", "7")
        assert rc == 1 and "INVALID_ARGUMENT" in err and "outside the action space" in err
        rc, out, _ = _cli(capsys, "substitute", eid3, *t, "--action", "1")
        assert rc == 0 and "substituted" in out
        r = call.wait()
        assert r.verdict is Verdict.SUBSTITUTE and r.action == 1 and r.fallback == "operator"

        rc, _, err = _cli(capsys, "approve", eid2, *t)
        assert rc == 1 and "FAILED_PRECONDITION" in err and "already rejected by erin" in err
        rc, out, _ = _cli(capsys, "list", *t, "--state", "all", "--json")
        assert sorted(e["state"] for e in json.loads(out)) == ["approved", "rejected", "substituted"]
        rc, _, err = _cli(capsys, "list", *t, "--token", "w" * 24)
        assert rc == 1 and "UNAUTHENTICATED" in err

        # watch: a separate process prints each escalation as it opens and closes.
        with subprocess.Popen(
            _cmd("watch", *t), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as watcher:
            try:
                call = AgentCall(target)
                eid4 = _pending_id(target)
                line = watcher.stdout.readline()
                assert eid4 in line and "pending" in line, line
                with OperatorClient(target) as ops:
                    ops.approve(eid4, operator="frank")
                line = watcher.stdout.readline()
                assert eid4 in line and "approved" in line and "by frank" in line, line
                call.wait()
            finally:
                watcher.terminate()


def test_cli_without_a_token_says_how_to_get_one(monkeypatch, capsys):
    monkeypatch.delenv("INTERLOCK_OPERATOR_TOKEN")
    rc, _, err = _cli(capsys, "list", "--target", "127.0.0.1:1")
    assert rc == 2 and "INTERLOCK_OPERATOR_TOKEN" in err and "--token-file" in err


def test_cli_reports_an_unreachable_server(capsys):
    rc, _, err = _cli(capsys, "list", "--target", "127.0.0.1:1", "--timeout", "1")
    assert rc == 1 and "UNAVAILABLE" in err and "--target" in err
