"""Storage helpers: what the durable stores share (the decision log in :mod:`interlock.audit`,
escalations in :mod:`interlock.escalation`): PostgreSQL driver loading and schema locking, SQLite in
WAL mode, ``${NAME}`` expansion in DSNs; and reading ``.npz`` files of arrays (transitions, tabular models).
"""
