"""Python client of the ``interlock.v1.Operator`` service (what the CLI uses).

Example:
    >>> # the token comes from $INTERLOCK_OPERATOR_TOKEN
    >>> with OperatorClient("127.0.0.1:50051") as ops:  # doctest: +SKIP
    ...     for esc in ops.list():
    ...         ops.approve(esc.escalation_id, comment="looks fine")
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, cast

import grpc
import numpy as np

from interlock.tensors import from_numpy
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc

OPERATOR_TOKEN_ENV = "INTERLOCK_OPERATOR_TOKEN"


class OperatorClient:
    """Blocking client of the Operator service.

    Args:
        target: ``host:port`` of the Interlock server.
        token: Operator bearer token (default: ``$INTERLOCK_OPERATOR_TOKEN``); None and
            no variable sends no credential (fine with mTLS, else UNAUTHENTICATED).
        credentials: ``grpc.ssl_channel_credentials(...)`` for TLS / mTLS; None for plaintext.
        timeout: Deadline per unary call in seconds.
    """

    def __init__(
        self,
        target: str,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 10.0,
    ) -> None:
        token = token if token is not None else os.environ.get(OPERATOR_TOKEN_ENV) or None
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.timeout = timeout
        self.channel = (
            grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        )
        self.stub = pb_grpc.OperatorStub(self.channel)

    def list(self, state: int = 0, agent_id: str = "", limit: int = 0) -> list[pb.Escalation]:
        """Newest first; ``state`` is an ``ESCALATION_STATE_*`` value (0: all)."""
        wanted = cast("pb.EscalationState", state)
        req = pb.ListEscalationsRequest(state=wanted, agent_id=agent_id, limit=limit)
        return list(self.stub.ListEscalations(req, timeout=self.timeout, metadata=self.metadata).escalations)

    def get(self, escalation_id: str) -> pb.Escalation:
        req = pb.GetEscalationRequest(escalation_id=escalation_id)
        found: pb.Escalation = self.stub.GetEscalation(req, timeout=self.timeout, metadata=self.metadata)
        return found

    def resolve(
        self,
        escalation_id: str,
        resolution: int,
        action: Any = None,
        operator: str = "",
        comment: str = "",
    ) -> pb.Escalation:
        req = pb.ResolveEscalationRequest(
            escalation_id=escalation_id,
            resolution=cast("pb.Resolution", resolution),
            operator=operator,
            comment=comment,
        )
        if action is not None:
            req.action.CopyFrom(from_numpy(np.asarray(action)))
        resolved: pb.Escalation = self.stub.ResolveEscalation(
            req, timeout=self.timeout, metadata=self.metadata
        )
        return resolved

    def approve(self, escalation_id: str, operator: str = "", comment: str = "") -> pb.Escalation:
        """The proposed action goes ahead."""
        return self.resolve(escalation_id, pb.RESOLUTION_APPROVE, None, operator, comment)

    def reject(self, escalation_id: str, operator: str = "", comment: str = "") -> pb.Escalation:
        """The fail-safe fallback applies."""
        return self.resolve(escalation_id, pb.RESOLUTION_REJECT, None, operator, comment)

    def substitute(
        self, escalation_id: str, action: Any, operator: str = "", comment: str = ""
    ) -> pb.Escalation:
        """The operator's ``action`` applies (an int for discrete spaces, a list of floats for box)."""
        return self.resolve(escalation_id, pb.RESOLUTION_SUBSTITUTE, action, operator, comment)

    def watch(self, agent_id: str = "", include_pending: bool = True) -> Iterator[pb.Escalation]:
        """Every change from now on (first the pending ones); cancel with ``close()`` or break."""
        req = pb.WatchEscalationsRequest(agent_id=agent_id, include_pending=include_pending)
        changes: Iterator[pb.Escalation] = self.stub.WatchEscalations(req, metadata=self.metadata)
        return changes

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
