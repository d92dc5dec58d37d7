"""Helpers for the operations tests: config files on disk, certificates, a server subprocess."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interlock.client import make_request
from tests.support.fixtures import box_agent, discrete_agent

UPRIGHT = np.array([0.0, 0.0, 0.01, 0.0], np.float32)
TILTED = np.array([0.0, 0.0, 0.15, 0.0], np.float32)
POSTGRES_DSN = os.environ.get("INTERLOCK_TEST_POSTGRES_DSN")
needs_postgres = pytest.mark.skipif(
    not POSTGRES_DSN,
    reason="INTERLOCK_TEST_POSTGRES_DSN is unset: run `source .ci/postgres-setup.sh` to start PostgreSQL",
)


def req(obs=UPRIGHT, action=1, agent="cartpole", **kw):
    return make_request(agent, obs, action, **kw)


def write_config(
    path: Path,
    agents: list[dict[str, Any]] | None = None,
    version: str | None = "v1",
    **server: Any,
) -> Path:
    """Write a YAML config with the test agents; ``server`` keys go under ``server:``."""
    doc: dict[str, Any] = {
        "agents": agents if agents is not None else [discrete_agent(), box_agent()],
        "server": {"port": 0, "metrics_port": None, **server},
    }
    if version is not None:
        doc["version"] = version
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)  # atomic, as the docs advise for hot reload
    return path


# --------------------------------------------------------------------------- certificates


def make_certs(folder: Path, names: tuple[str, ...] = ("server", "client")) -> dict[str, Path]:
    """A CA and certificates it signs (SAN 127.0.0.1 and localhost), as PEM files in ``folder``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k, p: Path) -> None:
        p.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"interlock test CA {now.timestamp()}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    out = {"ca": folder / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name in names:
        k = key()
        usage = (
            ExtendedKeyUsageOID.SERVER_AUTH if name.startswith("server") else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        out[name] = folder / f"{name}.pem"
        out[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_key"] = folder / f"{name}.key"
        write_key(k, out[f"{name}_key"])
    return out


# --------------------------------------------------------------------------- a server process


class ServerProcess:
    """``interlock serve`` as a subprocess (so it can be SIGTERMed, SIGHUPed or killed -9)."""

    def __init__(self, config: Path, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "interlock.cli", "serve", "--config", str(config), "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: list[str] = []
        self._rest: str | None = None
        deadline = time.monotonic() + 60
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("server exited:\n" + "".join(self.lines))
            self.lines.append(line)
            m = re.search(r"on [\d.]+:(\d+); metrics (?:on :(\d+)|off)", line)
            if m:
                self.port = int(m.group(1))
                self.metrics_port = None if m.group(2) is None else int(m.group(2))
                break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + "".join(self.lines))
        self.address = f"127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def output(self) -> str:
        """Everything the process printed (waits for it to exit)."""
        if self._rest is None:
            self._rest = self.proc.stdout.read() or ""
        return "".join(self.lines) + self._rest

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self.output()
        self.proc.stdout.close()


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def metric_value(server, name: str, **labels: str) -> float:
    """A sample's value from a server's registry (0 when absent)."""
    v = server.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if v is None else v


@contextmanager
def postgres_schema(prefix: str = "interlock_test") -> Iterator[str]:
    """A fresh PostgreSQL schema for one test; yields a DSN whose ``search_path`` is that schema.

    The stores' tables are unqualified, so servers given this DSN keep their tables apart from
    other tests on the same database (the schema is dropped afterwards).
    """
    import uuid
    from urllib.parse import quote

    import psycopg

    assert POSTGRES_DSN, "needs INTERLOCK_TEST_POSTGRES_DSN"
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in POSTGRES_DSN else "?"
    try:
        yield f"{POSTGRES_DSN}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
