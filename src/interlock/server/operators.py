"""The operator side of a server (escalations), behind the calls that ``app.py`` makes.

* :meth:`OperatorSide.attach` - the manager (durable queue) and the Operator service;
* :meth:`OperatorSide.start_console` - the web console on ``server.console_port``;
* :meth:`OperatorSide.close` - in reverse order.

Credentials and the auth interceptor are the server's (``app.py`` installs them for every service).
"""

from __future__ import annotations

import logging

import grpc

from interlock.config import LoadedConfig
from interlock.escalation.factory import open_store
from interlock.escalation.manager import EscalationManager
from interlock.server.auth import OPERATOR_SERVICE, Credentials
from interlock.server.metrics import Metrics
from interlock.server.operator_servicer import OperatorServicer, add_operator_service
from interlock.server.service import GuardService

log = logging.getLogger(__name__)


class OperatorSide:
    """The escalation manager, the Operator service and the console of one server.

    Args:
        loaded: The config (``escalations``, ``auth``).
        metrics: The server's metrics.
        credentials: Who may answer (the console signs operators in with them).
    """

    def __init__(self, loaded: LoadedConfig, metrics: Metrics, credentials: Credentials) -> None:
        self.loaded = loaded
        self.metrics = metrics
        self.credentials = credentials
        self.enabled = loaded.config.escalations_enabled
        self.manager: EscalationManager | None = None
        self.console = None
        self.console_port: int | None = None

    @property
    def service_names(self) -> tuple[str, ...]:
        """Extra services to list in reflection."""
        return (OPERATOR_SERVICE,) if self.enabled else ()

    async def attach(self, server: grpc.aio.Server, service: GuardService) -> None:
        """Open the store, recover pending escalations, hook into ``service``, add the Operator service."""
        if not self.enabled:
            return
        esc = self.loaded.config.escalations
        self.manager = EscalationManager(
            open_store(self.loaded), self.metrics, lambda: service.guard, esc.max_pending_total
        )
        await self.manager.start()
        service.escalations = self.manager
        add_operator_service(OperatorServicer(self.manager, self.metrics), server)
        if not self.credentials.has_operators:
            src = self.loaded.config.auth.operator_tokens
            log.warning(
                "escalations are enabled but no operator credential is configured (set $%s, "
                "auth.operator_tokens.file or auth.operator_common_names): nobody can answer, every "
                "escalation will expire to its fail-safe fallback",
                src.env or "INTERLOCK_OPERATOR_TOKEN",
            )

    async def start_console(self, host: str, port: int | None) -> int | None:
        """Serve the web console when ``port`` is not None; returns the bound port."""
        if port is None or self.manager is None:
            return None
        from interlock.server.console.server import Console

        manager = self.manager
        self.console = Console(manager, self.credentials, lambda: manager.guard())
        self.console_port = await self.console.start(host, port)
        return self.console_port

    def stop_watchers(self) -> None:
        """End WatchEscalations and console streams so that a graceful stop need not wait for them."""
        if self.manager is not None:
            self.manager.stop_watchers()

    async def close(self) -> None:
        self.stop_watchers()
        if self.console is not None:
            await self.console.stop()
        if self.manager is not None:
            await self.manager.close()
