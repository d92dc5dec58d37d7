"""TLS and mutual TLS from file paths, with certificates rotated by a config reload."""

from __future__ import annotations

import time

import grpc
import pytest
import yaml

from interlock.config import load_config
from interlock.errors import ConfigError
from interlock.server.background import background_server
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.ops import make_certs, metric_value, req, write_config


def check(port: int, ca: bytes | None, cert: bytes | None = None, key: bytes | None = None):
    """One Check over a fresh TLS channel (a new handshake); returns the Decision or raises RpcError."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        return pb_grpc.GuardStub(ch).Check(req(), timeout=5)


def test_tls_serves_only_encrypted_clients(tmp_path):
    c = make_certs(tmp_path / "pki")
    path = write_config(tmp_path / "i.yaml", tls={"cert": "pki/server.pem", "key": "pki/server.key"})
    with background_server(load_config(path)) as srv:
        assert check(srv.port, c["ca"].read_bytes()).verdict == pb.VERDICT_ALLOW
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch, pytest.raises(grpc.RpcError) as err:
            pb_grpc.GuardStub(ch).Check(req(), timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        other = make_certs(tmp_path / "other")  # a client that trusts another CA refuses the server
        with pytest.raises(grpc.RpcError):
            check(srv.port, other["ca"].read_bytes())


def test_mutual_tls_requires_a_client_certificate_from_the_ca(tmp_path):
    c = make_certs(tmp_path / "pki")
    stranger = make_certs(tmp_path / "stranger")
    path = write_config(
        tmp_path / "i.yaml",
        tls={"cert": "pki/server.pem", "key": "pki/server.key", "client_ca": "pki/ca.pem"},
    )
    ca = c["ca"].read_bytes()
    with background_server(load_config(path)) as srv:
        ok = check(srv.port, ca, c["client"].read_bytes(), c["client_key"].read_bytes())
        assert ok.verdict == pb.VERDICT_ALLOW
        with pytest.raises(grpc.RpcError):
            check(srv.port, ca)  # no client certificate
        with pytest.raises(grpc.RpcError):
            check(srv.port, ca, stranger["client"].read_bytes(), stranger["client_key"].read_bytes())


def test_certificates_are_rotated_by_reload(tmp_path):
    old = make_certs(tmp_path / "pki")
    old_ca = old["ca"].read_bytes()
    path = write_config(
        tmp_path / "i.yaml",
        tls={"cert": "pki/server.pem", "key": "pki/server.key"},
        reload={"poll_seconds": 0.05},
    )
    with background_server(load_config(path)) as srv:
        assert check(srv.port, old_ca).verdict == pb.VERDICT_ALLOW
        # A broken key is rejected at reload: the old certificate keeps serving.
        good_key = (tmp_path / "pki/server.key").read_bytes()
        (tmp_path / "pki/server.key").write_bytes(
            b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n"
        )
        deadline = time.monotonic() + 10
        while metric_value(srv, "interlock_config_reloads_total", result="failure") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert check(srv.port, old_ca).verdict == pb.VERDICT_ALLOW
        (tmp_path / "pki/server.key").write_bytes(good_key)
        # Rotation to a certificate from a new CA: new connections see it.
        make_certs(tmp_path / "pki")
        new_ca = (tmp_path / "pki/ca.pem").read_bytes()
        deadline = time.monotonic() + 10
        while True:
            try:
                check(srv.port, new_ca)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the new certificate was never served"
                time.sleep(0.05)
        with pytest.raises(grpc.RpcError):
            check(srv.port, old_ca)


def test_bad_tls_files_are_config_errors(tmp_path):
    from interlock.server.tls import read_tls_files

    c = make_certs(tmp_path / "pki")
    cfg = write_config(tmp_path / "i.yaml", tls={"cert": "pki/server.pem", "key": "pki/client.key"})
    with pytest.raises(ConfigError, match="not a PEM certificate and its matching private key"):
        read_tls_files(load_config(cfg).config.server.tls, tmp_path)
    cfg = write_config(tmp_path / "i.yaml", tls={"cert": "pki/missing.pem", "key": "pki/server.key"})
    with pytest.raises(ConfigError, match="server.tls.cert: cannot read"):
        read_tls_files(load_config(cfg).config.server.tls, tmp_path)
    assert c["ca"].exists()


def test_operator_service_over_mutual_tls_accepts_operator_certificates(tmp_path, monkeypatch):
    """The Operator service shares the port: mTLS applies to it, and a certificate's CN can be an operator."""
    monkeypatch.delenv("INTERLOCK_OPERATOR_TOKEN", raising=False)
    c = make_certs(tmp_path / "pki", names=("server", "client", "ops-alice"))
    path = write_config(
        tmp_path / "i.yaml",
        tls={"cert": "pki/server.pem", "key": "pki/server.key", "client_ca": "pki/ca.pem"},
    )
    doc = yaml.safe_load(path.read_text())
    doc["auth"] = {"operator_common_names": ["ops-alice"]}
    doc["escalations"] = {"store": {"kind": "sqlite", "path": "esc.db"}}
    path.write_text(yaml.safe_dump(doc))
    ca = c["ca"].read_bytes()

    def list_as(name: str):
        creds = grpc.ssl_channel_credentials(ca, c[f"{name}_key"].read_bytes(), c[name].read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{srv.port}", creds) as ch:
            return pb_grpc.OperatorStub(ch).ListEscalations(pb.ListEscalationsRequest(), timeout=5)

    with background_server(load_config(path)) as srv:
        assert list(list_as("ops-alice").escalations) == []
        with pytest.raises(grpc.RpcError) as err:
            list_as("client")  # a valid client certificate, but not an operator's
        assert err.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
