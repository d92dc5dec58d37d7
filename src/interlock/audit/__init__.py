"""The durable decision log (a plugin that receives finished decisions, as OPA's decision logs).

* :mod:`~interlock.audit.record` - :class:`AuditRecord` (one decision as stored) and :class:`AuditQuery`;
* :mod:`~interlock.audit.backend` - the storage interface (:class:`SqlAuditBackend`);
* :mod:`~interlock.audit.sqlite`, :mod:`~interlock.audit.postgres` - its implementations;
* :mod:`~interlock.audit.factory` - picks one (:func:`open_backend`, :func:`backend_for_config`);
* :mod:`~interlock.audit.writer` - :class:`AuditLog`, the group-committing writer the server hands
  decisions to.
* :mod:`~interlock.audit.transitions` - one agent's records as ``(obs, action, next_obs)`` transitions
  for ``interlock calibrate --data`` (``interlock audit export --npz``).
"""

from __future__ import annotations

from interlock.audit.backend import SqlAuditBackend
from interlock.audit.factory import backend_for_config, open_backend
from interlock.audit.record import AuditQuery, AuditRecord
from interlock.audit.writer import AuditLog

__all__ = ["AuditLog", "AuditQuery", "AuditRecord", "SqlAuditBackend", "backend_for_config", "open_backend"]
