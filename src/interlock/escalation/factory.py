"""Pick the escalation store the config asks for (``escalations.store``); not yet opened."""

from __future__ import annotations

from interlock.config import LoadedConfig
from interlock.escalation.store import EscalationStore
from interlock.storage.env import expand_env
from interlock.storage.postgres import psycopg


def open_store(loaded: LoadedConfig) -> EscalationStore:
    """The store the config asks for (not yet opened): ``escalations.store``."""
    cfg = loaded.config.escalations.store
    if cfg.kind == "sqlite":
        from interlock.escalation.sqlite import SqliteEscalationStore

        path = cfg.path if cfg.path == ":memory:" else str(loaded.resolve(cfg.path))
        return SqliteEscalationStore(path)
    if cfg.kind == "postgres":
        from interlock.escalation.postgres import PostgresEscalationStore

        psycopg("escalations.store.kind is postgres")  # fail now, naming the key that asked for it
        return PostgresEscalationStore(expand_env(cfg.dsn, "escalations.store.dsn"))
    raise ValueError(f"unknown escalation store kind {cfg.kind!r}")  # pragma: no cover - config forbids it
