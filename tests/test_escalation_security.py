"""Who may answer escalations: operator tokens, agent tokens, mTLS; tokens never reach the logs."""

from __future__ import annotations

import logging
import shutil
import subprocess

import grpc
import numpy as np
import pytest

from interlock import GuardClient
from interlock.config import AuthConfig, TokenSourceConfig
from interlock.engine import Guard
from interlock.errors import ConfigError
from interlock.escalation.manager import EscalationManager
from interlock.escalation.sqlite import SqliteEscalationStore
from interlock.server.auth import AuthInterceptor, Credentials
from interlock.server.background import background_server
from interlock.server.metrics import Metrics
from interlock.server.operator_servicer import OperatorServicer, add_operator_service
from interlock.types import Verdict
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.escalation import (
    AGENT,
    AGENT_TOKEN,
    OPERATOR_TOKEN,
    RISKY,
    AgentCall,
    example_data,
    example_loaded,
    loaded_from,
    wait_for,
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _operator_calls(stub: pb_grpc.OperatorStub, metadata, escalation_id: str = "esc-x"):
    """Every Operator method once with ``metadata``; yields (name, status code or OK)."""
    calls = {
        "ListEscalations": lambda: stub.ListEscalations(pb.ListEscalationsRequest(), metadata=metadata),
        "GetEscalation": lambda: stub.GetEscalation(
            pb.GetEscalationRequest(escalation_id=escalation_id), metadata=metadata
        ),
        "ResolveEscalation": lambda: stub.ResolveEscalation(
            pb.ResolveEscalationRequest(escalation_id=escalation_id, resolution=pb.RESOLUTION_APPROVE),
            metadata=metadata,
        ),
        "WatchEscalations": lambda: next(
            iter(stub.WatchEscalations(pb.WatchEscalationsRequest(include_pending=True), metadata=metadata))
        ),
    }
    for name, call in calls.items():
        try:
            call()
            yield name, grpc.StatusCode.OK
        except grpc.RpcError as e:
            yield name, e.code()


def test_operator_and_agent_credentials_are_enforced(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("INTERLOCK_OPERATOR_TOKEN", OPERATOR_TOKEN)
    monkeypatch.setenv("INTERLOCK_AGENT_TOKEN", AGENT_TOKEN)
    data = example_data(tmp_path, timeout_seconds=15)
    data["auth"]["agent_tokens"] = {"env": "INTERLOCK_AGENT_TOKEN"}
    with background_server(loaded_from(data)) as srv:
        target = f"127.0.0.1:{srv.port}"
        with grpc.insecure_channel(target) as ch:
            ops = pb_grpc.OperatorStub(ch)
            for metadata, want in [
                (None, UNAUTHENTICATED),
                (_bearer("not-a-valid-token-at-all"), UNAUTHENTICATED),
                ((("authorization", f"Basic {OPERATOR_TOKEN}"),), UNAUTHENTICATED),
                (_bearer(AGENT_TOKEN), DENIED),
            ]:
                got = dict(_operator_calls(ops, metadata))
                assert got == dict.fromkeys(got, want), (metadata is None, got)

            # The Guard service: agent tokens only.
            for token, want in [("", UNAUTHENTICATED), (OPERATOR_TOKEN, DENIED), ("x" * 20, UNAUTHENTICATED)]:
                with GuardClient(target, agent_id=AGENT, token=token) as agent:
                    with pytest.raises(grpc.RpcError) as err:
                        agent.check(RISKY, np.int64(1))
                    assert err.value.code() == want
                    assert OPERATOR_TOKEN not in err.value.details()

            # Streams and batches are guarded the same way.
            from interlock.client import make_request

            with GuardClient(target, agent_id=AGENT) as agent:  # agent token from $INTERLOCK_AGENT_TOKEN
                [streamed] = list(agent.check_stream([make_request(AGENT, np.zeros(2, np.float32), 1)]))
                assert streamed.verdict is Verdict.ALLOW
                assert agent.check_batch(np.zeros((2, 2), np.float32), np.array([1, 1]))[1].allowed
            with GuardClient(target, agent_id=AGENT, token="") as anonymous:
                with pytest.raises(grpc.RpcError) as err:
                    list(anonymous.check_stream([make_request(AGENT, np.zeros(2, np.float32), 1)]))
                assert err.value.code() == UNAUTHENTICATED

            # An agent with its token escalates, and cannot approve its own escalation.
            call = AgentCall(target)  # token from $INTERLOCK_AGENT_TOKEN
            listed = wait_for(
                lambda: (
                    ops.ListEscalations(
                        pb.ListEscalationsRequest(), metadata=_bearer(OPERATOR_TOKEN)
                    ).escalations
                )
            )
            eid = listed[0].escalation_id
            got = dict(_operator_calls(ops, _bearer(AGENT_TOKEN), eid))
            assert set(got.values()) == {DENIED}
            assert call.thread.is_alive(), "the agent is still waiting: its approval attempt changed nothing"
            ops.ResolveEscalation(
                pb.ResolveEscalationRequest(
                    escalation_id=eid, resolution=pb.RESOLUTION_APPROVE, operator="alice"
                ),
                metadata=_bearer(OPERATOR_TOKEN),
            )
            r = call.wait()
            assert r.verdict is Verdict.ALLOW and any("alice approved" in x for x in r.reasons)
    assert caplog.records, "expected the server to log something"
    assert OPERATOR_TOKEN not in caplog.text and AGENT_TOKEN not in caplog.text


def test_token_files_names_and_bad_tokens(tmp_path, monkeypatch):
    monkeypatch.delenv("INTERLOCK_OPERATOR_TOKEN", raising=False)
    tokens = tmp_path / "operators.tokens"
    tokens.write_text(f"# operators\nalice {OPERATOR_TOKEN}\n\n{'b' * 20}\n")
    auth = AuthConfig(operator_tokens=TokenSourceConfig(file=str(tokens)))
    creds = Credentials.from_config(auth)
    assert creds.operator(f"Bearer {OPERATOR_TOKEN}").name == "alice"
    assert creds.operator("bearer " + "b" * 20).role == "operator"
    assert creds.has_operators and not creds.agents_required

    short = tmp_path / "short.tokens"
    short.write_text("alice tooshort\n")
    with pytest.raises(ConfigError, match="shorter than 16"):
        Credentials.from_config(AuthConfig(operator_tokens=TokenSourceConfig(file=str(short))))
    with pytest.raises(ConfigError, match="cannot read the operator token file"):
        Credentials.from_config(AuthConfig(operator_tokens=TokenSourceConfig(file=str(tmp_path / "missing"))))
    with pytest.raises(ConfigError, match="different tokens"):
        Credentials.from_config(
            AuthConfig(
                operator_tokens=TokenSourceConfig(env="OPS"), agent_tokens=TokenSourceConfig(env="AGENTS")
            ),
            environ={"OPS": OPERATOR_TOKEN, "AGENTS": OPERATOR_TOKEN},
        )
    with pytest.raises(ConfigError) as err:
        Credentials.from_config(AuthConfig(), environ={"INTERLOCK_OPERATOR_TOKEN": "tiny-tok"})
    assert "tiny-tok" not in err.value.message, "an error must never echo a token"


def test_server_without_operator_credentials_still_fails_safe(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("INTERLOCK_OPERATOR_TOKEN", raising=False)
    caplog.set_level(logging.WARNING)
    data = example_data(tmp_path, timeout_seconds=0.3)
    del data["auth"]  # the default $INTERLOCK_OPERATOR_TOKEN may be absent; a written source may not
    with background_server(loaded_from(data)) as srv:
        r = AgentCall(f"127.0.0.1:{srv.port}").wait()
        assert r.verdict is Verdict.SUBSTITUTE and r.action == 0
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            got = dict(_operator_calls(pb_grpc.OperatorStub(ch), _bearer("y" * 24)))
        assert set(got.values()) == {UNAUTHENTICATED}
    assert "no operator credential is configured" in caplog.text


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_certs(d) -> None:
    """A throw-away CA, a server certificate for 127.0.0.1 and client certificates for alice and mallory."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca",
             cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, cn in [("server", "localhost"), ("alice", "alice"), ("mallory", "mallory")]:
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        extra = ["-extfile", "san.ext"] if name == "server" else []
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", *extra, cwd=d)  # fmt: skip


@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl CLI not installed (needed to make test certs)"
)
async def test_operator_identity_from_a_client_certificate(tmp_path):
    _make_certs(tmp_path)
    loaded = example_loaded(tmp_path, mode="deferred", timeout_seconds=60)
    guard = Guard(loaded).load()
    metrics = Metrics()
    manager = EscalationManager(SqliteEscalationStore(tmp_path / "mtls.db"), metrics, lambda: guard)
    await manager.start()
    creds = Credentials([], [("robot", AGENT_TOKEN)], operator_common_names=["alice"])
    server = grpc.aio.server(interceptors=[AuthInterceptor(creds, metrics.reject)])
    add_operator_service(OperatorServicer(manager, metrics), server)
    read = lambda name: (tmp_path / name).read_bytes()  # noqa: E731
    server_creds = grpc.ssl_server_credentials(
        [(read("server.key"), read("server.pem"))], root_certificates=read("ca.pem"), require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", server_creds)
    await server.start()
    try:
        # Open a real escalation through the manager, as the Guard path does.
        from interlock.types import CheckInput

        [d] = guard.check([CheckInput(AGENT, RISKY, np.int64(1))])
        await manager.handle(guard, [d])
        assert d.verdict is Verdict.ESCALATE and d.escalation_id

        async def resolve_as(client: str, metadata=None) -> grpc.StatusCode:
            channel_creds = grpc.ssl_channel_credentials(
                read("ca.pem"), read(f"{client}.key"), read(f"{client}.pem")
            )
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_creds) as ch:
                stub = pb_grpc.OperatorStub(ch)
                req = pb.ResolveEscalationRequest(
                    escalation_id=d.escalation_id, resolution=pb.RESOLUTION_APPROVE
                )
                try:
                    done = await stub.ResolveEscalation(req, metadata=metadata)
                except grpc.aio.AioRpcError as e:
                    return e.code()
                assert done.authenticated_as == "alice" and done.operator == "alice"
                return grpc.StatusCode.OK

        assert await resolve_as("mallory") == UNAUTHENTICATED
        assert await resolve_as("alice", _bearer(AGENT_TOKEN)) == DENIED, (
            "an agent token never becomes operator"
        )
        assert await resolve_as("alice") == grpc.StatusCode.OK
    finally:
        await server.stop(0)
        await manager.close()
