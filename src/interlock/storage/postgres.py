"""PostgreSQL helpers for the stores: the driver (an optional extra), the schema lock, DSN redaction."""

from __future__ import annotations

import re
from types import ModuleType

from interlock.errors import ConfigError

#: Advisory lock that serialises schema creation between replicas starting at once.
SCHEMA_LOCK = 0x1A7E_A0D1


def psycopg(wanted_by: str = "a PostgreSQL store is configured") -> ModuleType:
    """The psycopg module; raises ConfigError naming who asked for it and how to install it.

    Args:
        wanted_by: What asked for PostgreSQL, as the start of the message, e.g.
            ``"escalations.store.kind is postgres"``. The factories call this first with
            the config key, so that a missing driver fails at start naming that key.
    """
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            f"{wanted_by} but psycopg is not installed: pip install 'interlock[postgres]'"
        ) from None
    return psycopg


def redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    dsn = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)
    return re.sub(r"password=\S+", "password=***", dsn)
