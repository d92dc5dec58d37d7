"""Credential sources (issue 10, items 2, 6, 7, 8): written sources must deliver, every token has a
name, tokens follow hot reload, and the console's HTTP API speaks HTTP.

Real parts only: ``interlock serve`` in a subprocess, a real gRPC server on loopback, the console's
HTTP endpoint, the SQLite audit log.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from interlock.audit import AuditQuery
from interlock.audit.factory import open_backend
from interlock.client.operator import OperatorClient
from interlock.config import AuthConfig, TokenSourceConfig, load_config, parse_config
from interlock.errors import ConfigError
from interlock.server.auth import Credentials
from interlock.server.background import background_server
from interlock.server.console.server import NEEDS_BEARER
from interlock.types import Verdict
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.escalation import (
    AGENT_TOKEN,
    OPERATOR_TOKEN,
    AgentCall,
    example_data,
    loaded_from,
    wait_for,
)
from tests.support.ops import metric_value, req, write_config

TOKEN_A = "agent-a-" + "a" * 24
TOKEN_B = "agent-b-" + "b" * 24
TOKEN_C = "agent-c-" + "c" * 24
BOB_TOKEN = "bob-token-" + "5" * 24


def _serve(config: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """``interlock serve`` as a user runs it; a server that starts is killed after ``timeout``."""
    return subprocess.run(
        [sys.executable, "-m", "interlock.cli", "serve", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize(
    ("auth", "files", "env", "named"),
    [
        ({"agent_tokens": {"env": "SOME_VAR"}}, {}, {}, "SOME_VAR is not set"),
        ({"agent_tokens": {"env": "SOME_VAR"}}, {}, {"SOME_VAR": "  "}, "SOME_VAR is empty"),
        ({"operator_tokens": {"env": "OPS_VAR"}}, {}, {}, "OPS_VAR is not set"),
        ({"operator_tokens": {"file": "ops.tokens"}}, {}, {}, "ops.tokens: No such file"),
        (
            {"agent_tokens": {"file": "agents.tokens"}},
            {"agents.tokens": "# nobody yet\n\n"},
            {},
            "holds no token",
        ),
    ],
    ids=[
        "agent-env-unset",
        "agent-env-empty",
        "operator-env-unset",
        "operator-file-missing",
        "agent-file-empty",
    ],
)
def test_serve_refuses_a_written_credential_source_that_delivers_nothing(tmp_path, auth, files, env, named):
    """Before: serve started without a word and a Check with no token was ALLOWed."""
    path = write_config(tmp_path / "interlock.yaml")
    doc = yaml.safe_load(path.read_text())
    doc["auth"] = auth
    path.write_text(yaml.safe_dump(doc))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    ours = ("SOME_VAR", "OPS_VAR", "INTERLOCK_OPERATOR_TOKEN")
    base = {k: v for k, v in os.environ.items() if k not in ours}
    done = _serve(path, {**base, **env})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "interlock: config error:" in done.stderr and named in done.stderr, done.stderr
    assert "serving" not in done.stdout


def test_the_default_operator_variable_may_be_absent_but_a_written_one_may_not():
    assert not Credentials.from_config(AuthConfig(), environ={}).has_operators  # nothing written: fine
    auth = AuthConfig.model_validate({"operator_tokens": {"env": "INTERLOCK_OPERATOR_TOKEN"}})
    with pytest.raises(ConfigError, match="INTERLOCK_OPERATOR_TOKEN is not set"):
        Credentials.from_config(auth, environ={})
    with pytest.raises(ConfigError, match="more than one word") as err:
        Credentials.from_config(auth, environ={"INTERLOCK_OPERATOR_TOKEN": f"alice {OPERATOR_TOKEN}"})
    assert OPERATOR_TOKEN not in err.value.message
    with pytest.raises(ConfigError, match="no 'env' is set"):
        parse_config({"agents": [{"id": "x"}], "auth": {"operator_tokens": {"file": "f", "name": "alice"}}})


def _agent_config(tmp_path: Path, version: str, agent_tokens: dict) -> Path:
    # Built beside the served file and moved over it in one step: the server polls every 50 ms and must
    # never see the intermediate config without `auth:` (which would turn agent tokens off).
    draft = write_config(tmp_path / "draft.yaml", version=version, reload={"poll_seconds": 0.05})
    doc = yaml.safe_load(draft.read_text())
    doc["auth"] = {"agent_tokens": agent_tokens}
    draft.write_text(yaml.safe_dump(doc))
    path = tmp_path / "interlock.yaml"
    os.replace(draft, path)
    return path


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _code(stub_call) -> grpc.StatusCode:
    try:
        stub_call()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def _wait_reloads(srv, result: str, before: float) -> None:
    deadline = time.monotonic() + 30  # generous: a reload loads every model, and CI machines are shared
    while metric_value(srv, "interlock_config_reloads_total", result=result) == before:
        assert time.monotonic() < deadline, f"no reload {result} was counted"
        time.sleep(0.02)


def test_tokens_are_reread_on_reload_and_a_source_gone_bad_is_rejected(tmp_path, monkeypatch, caplog):
    """Before: tokens were read at start only, so a revoked token kept working until a restart."""
    caplog.set_level(logging.INFO, logger="interlock.server.reload")
    monkeypatch.delenv("UNSET_AGENT_VAR", raising=False)
    tokens = tmp_path / "agents.tokens"
    tokens.write_text(f"robot-a {TOKEN_A}\n")
    path = _agent_config(tmp_path, "v1", {"file": "agents.tokens"})
    with background_server(load_config(path)) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.GuardStub(ch)

        def check(token: str | None):
            return lambda: stub.Check(req(), metadata=_bearer(token) if token else None, timeout=5)

        assert _code(check(TOKEN_A)) == grpc.StatusCode.OK
        assert _code(check(None)) == grpc.StatusCode.UNAUTHENTICATED

        # Revoke A, issue B, with a config change: the reload re-reads the token file.
        successes = metric_value(srv, "interlock_config_reloads_total", result="success")
        tmp = tokens.with_suffix(".tmp")
        tmp.write_text(f"robot-b {TOKEN_B}\n# robot-a revoked\n")
        os.replace(tmp, tokens)
        _agent_config(tmp_path, "v2", {"file": "agents.tokens"})
        _wait_reloads(srv, "success", successes)
        wait_for(lambda: stub.Check(req(), metadata=_bearer(TOKEN_B)).config_version == "v2")
        assert _code(check(TOKEN_A)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(check(TOKEN_B)) == grpc.StatusCode.OK
        reloaded = [r for r in caplog.records if "config reloaded" in r.getMessage()]
        assert reloaded and all(r.levelno == logging.INFO for r in reloaded)

        # A change of the token file alone is watched too.
        tmp.write_text(f"robot-b {TOKEN_B}\nrobot-c {TOKEN_C}\n")
        os.replace(tmp, tokens)
        wait_for(lambda: _code(check(TOKEN_C)) == grpc.StatusCode.OK)

        # The token file emptied, then a config naming an unset variable: both rejected, B still works.
        for broken in ("empty file", "unset variable"):
            failures = metric_value(srv, "interlock_config_reloads_total", result="failure")
            if broken == "empty file":
                tokens.write_text("# everyone revoked by mistake\n")
            else:
                tokens.write_text(f"robot-b {TOKEN_B}\n")
                _agent_config(tmp_path, "v3", {"env": "UNSET_AGENT_VAR"})
            _wait_reloads(srv, "failure", failures)
            assert _code(check(TOKEN_B)) == grpc.StatusCode.OK, broken
            assert _code(check(None)) == grpc.StatusCode.UNAUTHENTICATED, broken
            served = stub.Check(req(), metadata=_bearer(TOKEN_B))
            assert served.config_version == "v2", broken
        messages = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
        assert "holds no token" in messages and "UNSET_AGENT_VAR is not set" in messages


def _http(url: str, token: str | None = None, header: str | None = None) -> tuple[int, dict, dict]:
    headers = {"Authorization": header or f"Bearer {token}"} if (token or header) else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as res:
            return res.status, dict(res.headers), json.loads(res.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_operator_names_not_variables_show_in_resolutions_reasons_audit_and_console(tmp_path, monkeypatch):
    """Before: the operator from $INTERLOCK_OPERATOR_TOKEN was called '$INTERLOCK_OPERATOR_TOKEN'."""
    monkeypatch.setenv("INTERLOCK_OPERATOR_TOKEN", OPERATOR_TOKEN)  # the client sends it
    monkeypatch.setenv("OPS_ALICE", OPERATOR_TOKEN)
    monkeypatch.setenv("INTERLOCK_AGENT_TOKEN", AGENT_TOKEN)
    (tmp_path / "operators.tokens").write_text(f"bob {BOB_TOKEN}\n")
    data = example_data(tmp_path, timeout_seconds=20)
    data["auth"] = {
        "operator_tokens": {"env": "OPS_ALICE", "name": "alice", "file": str(tmp_path / "operators.tokens")},
        "agent_tokens": {"env": "INTERLOCK_AGENT_TOKEN"},
    }
    data["server"]["console_port"] = 0
    data["server"]["audit"] = {"path": str(tmp_path / "audit.db")}
    with background_server(loaded_from(data)) as srv:
        target = f"127.0.0.1:{srv.port}"
        console = f"http://127.0.0.1:{srv.console_port}"
        assert _http(f"{console}/api/whoami", OPERATOR_TOKEN)[2] == {"name": "alice", "via": "token"}
        assert _http(f"{console}/api/whoami", BOB_TOKEN)[2]["name"] == "bob"

        # alice approves without typing a name: the token's name is the operator's.
        call = AgentCall(target, episode_id="ep-names")
        with OperatorClient(target) as ops:  # token from $INTERLOCK_OPERATOR_TOKEN
            esc = wait_for(lambda: ops.list(pb.ESCALATION_STATE_PENDING))[0]
            done = ops.approve(esc.escalation_id)
            assert (done.operator, done.authenticated_as) == ("alice", "alice")
            r = call.wait()
            assert r.verdict is Verdict.ALLOW and any("alice approved" in x for x in r.reasons), r.reasons
            with OperatorClient(target, token=BOB_TOKEN) as bob, pytest.raises(grpc.RpcError) as err:
                bob.reject(esc.escalation_id)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "already approved by alice" in err.value.details()

    reasons = " ".join(
        x
        for rec in _audit_records(tmp_path / "audit.db")
        if rec.escalation_id == esc.escalation_id
        for x in rec.reasons
    )
    assert "alice approved" in reasons and "$" not in reasons, reasons


def _audit_records(path: Path) -> list:
    backend = open_backend(str(path))
    backend.open()
    try:
        return list(backend.query(AuditQuery()))
    finally:
        backend.close()


def test_a_bare_token_in_a_variable_is_named_after_its_role():
    auth = AuthConfig(
        operator_tokens=TokenSourceConfig(env="OPS"),
        agent_tokens=TokenSourceConfig(env="AGENTS", name="robot-7"),
    )
    creds = Credentials.from_config(auth, environ={"OPS": OPERATOR_TOKEN, "AGENTS": AGENT_TOKEN})
    assert creds.operator(f"Bearer {OPERATOR_TOKEN}").name == "operator"
    assert creds.agent(f"Bearer {AGENT_TOKEN}").name == "robot-7"


def test_console_401_speaks_http_not_grpc(tmp_path, monkeypatch):
    """Before: the console's 401 spoke of gRPC metadata and `interlock escalations --token`."""
    monkeypatch.setenv("INTERLOCK_OPERATOR_TOKEN", OPERATOR_TOKEN)
    data = example_data(tmp_path)
    data["server"]["console_port"] = 0
    with background_server(loaded_from(data)) as srv:
        url = f"http://127.0.0.1:{srv.console_port}/api/escalations"
        for header in (None, "Basic abc", "Bearer ", f"Bearer {'x' * 24}"):
            status, headers, body = _http(url, header=header)
            assert status == 401, header
            assert "Authorization: Bearer TOKEN" in body["error"], body
            for grpc_talk in ("metadata", "--token", "GuardClient", "interlock escalations"):
                assert grpc_talk not in body["error"], body
            assert headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert _http(url, header=None)[2]["error"] == NEEDS_BEARER
        assert _http(url, OPERATOR_TOKEN)[0] == 200
