"""The operator-facing ``interlock.v1.Operator`` service: thin, the logic is in EscalationManager.

Records cross the wire through :mod:`interlock.escalation.convert`.

Authentication happens before these methods run (:class:`interlock.server.auth.AuthInterceptor`);
the caller's principal is in :data:`interlock.server.auth.CURRENT_PRINCIPAL`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from interlock.errors import PermissionDenied
from interlock.escalation.convert import to_pb
from interlock.escalation.manager import EscalationManager
from interlock.server.auth import CURRENT_PRINCIPAL, Principal
from interlock.server.errors import handle_errors
from interlock.server.metrics import Metrics
from interlock.tensors import to_numpy
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc

MAX_TEXT = 2000


def _principal() -> Principal:
    p = CURRENT_PRINCIPAL.get()
    if p is None or p.role != "operator":  # the interceptor was not installed: fail closed
        raise PermissionDenied("the Operator service is served without authentication; refusing")
    return p


class OperatorServicer(pb_grpc.OperatorServicer):
    def __init__(self, manager: EscalationManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics

    @handle_errors
    async def ListEscalations(
        self, request: pb.ListEscalationsRequest, context
    ) -> pb.ListEscalationsResponse:
        _principal()
        found = await self.manager.list(request.state, request.agent_id, request.limit)
        return pb.ListEscalationsResponse(escalations=[to_pb(e) for e in found])

    @handle_errors
    async def GetEscalation(self, request: pb.GetEscalationRequest, context) -> pb.Escalation:
        _principal()
        return to_pb(await self.manager.get(request.escalation_id))

    @handle_errors
    async def ResolveEscalation(self, request: pb.ResolveEscalationRequest, context) -> pb.Escalation:
        who = _principal()
        action = to_numpy(request.action, "action") if request.HasField("action") else None
        answered = await self.manager.resolve(
            request.escalation_id,
            request.resolution,
            action,
            operator=request.operator[:MAX_TEXT],
            comment=request.comment[:MAX_TEXT],
            authenticated_as=who.name,
        )
        return to_pb(answered)

    @handle_errors
    async def WatchEscalations(
        self, request: pb.WatchEscalationsRequest, context
    ) -> AsyncIterator[pb.Escalation]:
        _principal()
        async for rec in self.manager.watch(request.agent_id, request.include_pending):
            if rec is not None:
                yield to_pb(rec)


def add_operator_service(servicer: OperatorServicer, server: grpc.aio.Server) -> None:
    pb_grpc.add_OperatorServicer_to_server(servicer, server)
