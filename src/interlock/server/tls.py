"""TLS and mutual TLS from PEM files, with certificates swapped in on config reload.

``server.tls: {cert, key, client_ca}``; with ``client_ca`` every client must
present a certificate that CA signed. New certificates apply to new connections
after a reload; existing connections keep theirs.

Example:
    >>> tls = ReloadableTls(cfg.server.tls, loaded.base_dir)      # doctest: +SKIP
    >>> server.add_secure_port("0.0.0.0:50051", tls.credentials())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path

import grpc

from interlock.config import TlsConfig
from interlock.errors import ConfigError

log = logging.getLogger(__name__)


def _resolve(base_dir: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p


def read_tls_files(
    cfg: TlsConfig, base_dir: Path, where: str = "server.tls"
) -> tuple[bytes, bytes, bytes | None]:
    """Read and check the PEM files: the key must match the certificate, the CA must parse.

    Raises:
        ConfigError: a file is missing or unreadable, or is not valid PEM of the right kind.
    """
    cert, key = _resolve(base_dir, cfg.cert), _resolve(base_dir, cfg.key)
    ca = _resolve(base_dir, cfg.client_ca) if cfg.client_ca else None
    data: dict[str, bytes] = {}
    for name, p in (("cert", cert), ("key", key), ("client_ca", ca)):
        if p is None:
            continue
        try:
            data[name] = p.read_bytes()
        except OSError as e:
            raise ConfigError(f"{where}.{name}: cannot read {p}: {e.strerror or e}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as e:
        raise ConfigError(
            f"{where}: {cert} and {key} are not a PEM certificate and its matching private key ({e.reason})"
        ) from None
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except ssl.SSLError as e:
            raise ConfigError(f"{where}.client_ca: {ca} is not a PEM CA certificate ({e.reason})") from None
    return data["cert"], data["key"], data.get("client_ca")


class ReloadableTls:
    """Server credentials whose certificate can be replaced while serving."""

    def __init__(self, cfg: TlsConfig, base_dir: Path) -> None:
        cert, key, ca = read_tls_files(cfg, base_dir)
        self.require_client_auth = ca is not None
        self._current = grpc.ssl_server_certificate_configuration([(key, cert)], ca)
        self._pending: object | None = None
        self._lock = threading.Lock()
        self.generation = 0

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._current, self._fetch, require_client_authentication=self.require_client_auth
        )

    def update(self, cfg: TlsConfig, base_dir: Path) -> None:
        """Read the files again; new handshakes use them. Raises ConfigError (nothing changes then)."""
        cert, key, ca = read_tls_files(cfg, base_dir)
        if (ca is not None) != self.require_client_auth:
            raise ConfigError(
                "server.tls.client_ca was added or removed: switching mutual TLS on or off needs a restart"
            )
        with self._lock:
            self._pending = grpc.ssl_server_certificate_configuration([(key, cert)], ca)
            self.generation += 1

    def _fetch(self):
        """Called by gRPC before each handshake: a new configuration, or None for no change."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending
