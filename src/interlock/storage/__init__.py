"""Helpers the durable stores share (the decision log in :mod:`interlock.audit`, escalations in
:mod:`interlock.escalation`): PostgreSQL driver loading and schema locking, SQLite in WAL mode,
and ``${NAME}`` expansion in DSNs.
"""
