"""Without psycopg, the message names the config key that asked for PostgreSQL (issue 10, item 9).

Before, every store said "server.audit.backend is postgres", also when only ``escalations.store`` was.
"""

from __future__ import annotations

import sys

import pytest

from interlock.audit.factory import backend_for_config, open_backend
from interlock.config import AuditConfig, LoadedConfig, parse_config
from interlock.errors import ConfigError
from interlock.escalation.factory import open_store
from tests.support.fixtures import discrete_agent


@pytest.fixture
def no_psycopg(monkeypatch):
    """``import psycopg`` fails as it does when the extra is not installed."""
    monkeypatch.setitem(sys.modules, "psycopg", None)


def test_escalation_store_names_its_own_key(tmp_path, no_psycopg):
    cfg = parse_config(
        {
            "agents": [discrete_agent()],
            "escalations": {"store": {"kind": "postgres", "dsn": "postgresql://db.invalid/interlock"}},
        }
    )
    with pytest.raises(ConfigError) as err:
        open_store(LoadedConfig(cfg, tmp_path, "v1", "interlock.yaml"))
    assert err.value.message.startswith("escalations.store.kind is postgres but psycopg is not installed")
    assert "server.audit" not in err.value.message and "interlock[postgres]" in err.value.message


def test_audit_backend_names_its_own_key(tmp_path, no_psycopg):
    audit = AuditConfig(backend="postgres", dsn="postgresql://db.invalid/interlock")
    with pytest.raises(ConfigError, match=r"^server\.audit\.backend is postgres but psycopg is not"):
        backend_for_config(audit, tmp_path)
    with pytest.raises(ConfigError, match="the audit database is a PostgreSQL DSN but psycopg"):
        open_backend("postgresql://db.invalid/interlock")
