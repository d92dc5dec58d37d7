"""Pick the decision log's backend from a path, a DSN or ``server.audit`` (not yet opened)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from interlock.audit.backend import SqlAuditBackend
from interlock.errors import ConfigError
from interlock.storage.env import expand_env
from interlock.storage.postgres import psycopg

if TYPE_CHECKING:
    from interlock.config import AuditConfig


def open_backend(spec: str) -> SqlAuditBackend:
    """A backend for a SQLite path or a ``postgresql://`` DSN (for the CLI and replay); not yet opened."""
    if spec.startswith(("postgresql://", "postgres://")) or "dbname=" in spec:
        from interlock.audit.postgres import PostgresAuditBackend

        psycopg("the audit database is a PostgreSQL DSN")  # fail now, saying so

        return PostgresAuditBackend(spec)
    from interlock.audit.sqlite import SqliteAuditBackend

    return SqliteAuditBackend(Path(spec))


def backend_for_config(cfg: AuditConfig, base_dir: Path, where: str = "server.audit") -> SqlAuditBackend:
    """The backend ``server.audit`` describes; not yet opened."""
    if cfg.backend == "postgres":
        if not cfg.dsn:
            raise ConfigError(
                f"{where}.dsn is required with backend postgres, e.g. '${{INTERLOCK_AUDIT_DSN}}'"
            )
        from interlock.audit.postgres import PostgresAuditBackend

        psycopg(f"{where}.backend is postgres")  # fail now, naming the key that asked for it
        return PostgresAuditBackend(expand_env(cfg.dsn, f"{where}.dsn"))
    from interlock.audit.sqlite import SqliteAuditBackend

    p = Path(cfg.path).expanduser()
    return SqliteAuditBackend(p if p.is_absolute() else base_dir / p, synchronous=cfg.synchronous)
