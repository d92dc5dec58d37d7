"""Python clients of the Guard service, sync and asyncio.

Example:
    >>> from interlock import GuardClient
    >>> with GuardClient("127.0.0.1:50051", agent_id="cartpole") as guard:   # doctest: +SKIP
    ...     decision = guard.check(obs, action)
    ...     env.step(decision.action)

A client never turns a failure into permission: an unreachable server or an
expired deadline raises :class:`grpc.RpcError` (``GuardClient.check``), so the
caller cannot mistake "no answer" for ALLOW.

Several replicas: pass a list of addresses, an ``ipv4:a:p1,b:p2`` target or a
``dns:///name:port`` name that resolves to every replica (a Kubernetes headless
Service); the channel then balances calls ``round_robin`` over them. Calls that end
UNAVAILABLE are retried (gRPC's service-config ``retryPolicy``, ``retries`` more
attempts) on the next replica. gRPC retries a call only while no response has been
received, so an answer the agent may have executed is never asked for twice; why a
retried Check is safe is in docs/operations.md ("Failover").

Tracing: when the calling process uses OpenTelemetry and a span is active, every call
carries its context (W3C ``traceparent``), so the server's decision spans join the
caller's trace (docs/operations.md, "Tracing").
"""

from __future__ import annotations

import json
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar, cast

import grpc
import numpy as np

from interlock.tensors import from_numpy, to_numpy
from interlock.types import Verdict
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT = 10.0
#: Environment variable an agent's bearer token is read from when ``token`` is not given.
AGENT_TOKEN_ENV = "INTERLOCK_AGENT_TOKEN"


def _auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    token = token if token is not None else os.environ.get(AGENT_TOKEN_ENV) or None
    return (("authorization", f"Bearer {token}"),) if token else None


def _with_trace(metadata: tuple[tuple[str, str], ...] | None) -> tuple[tuple[str, str], ...] | None:
    """``metadata`` plus the caller's OpenTelemetry context (W3C ``traceparent``), when there is one.

    A process that never imported OpenTelemetry has no span to propagate: then nothing is
    imported and nothing added, so the agent side stays light. Otherwise the globally
    configured propagator (``OTEL_PROPAGATORS``, default tracecontext and baggage) writes the
    current context, and nothing when no span is active.
    """
    if "opentelemetry.context" not in sys.modules:
        return metadata
    try:
        from opentelemetry import propagate
    except ImportError:
        return metadata
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return (*(metadata or ()), *carrier.items()) if carrier else metadata


class SignalValue(NamedTuple):
    value: float
    threshold: float
    tripped: bool


@dataclass
class CheckResult:
    """A decision as the agent sees it.

    Attributes:
        verdict: ALLOW, SUBSTITUTE, ESCALATE or HALT.
        action: The action to execute (``None`` on HALT without a fail-safe action).
        signals: ``"<monitor>.<signal>"`` -> value, threshold, tripped.
        reasons: Why the verdict was reached, for logs.
        error: Set (with verdict HALT) when a stream message could not be checked: what was wrong.
    """

    verdict: Verdict
    action: np.ndarray | None
    signals: dict[str, SignalValue]
    reasons: list[str]
    fallback: str
    rule: str
    decision_id: str
    escalation_id: str
    config_version: str
    raw: pb.Decision = field(repr=False)
    error: str = ""

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    @property
    def halted(self) -> bool:
        return self.verdict is Verdict.HALT

    @classmethod
    def from_pb(cls, d: pb.Decision) -> CheckResult:
        wire_action = to_numpy(d.action, "decision.action")
        # an empty action: HALT without a fail-safe action
        action = None if wire_action.ndim == 1 and wire_action.size == 0 else wire_action
        return cls(
            verdict=Verdict(d.verdict),
            action=action,
            signals={s.name: SignalValue(s.value, s.threshold, s.tripped) for s in d.signals},
            reasons=list(d.reasons),
            fallback=d.fallback,
            rule=d.rule,
            decision_id=d.decision_id,
            escalation_id=d.escalation_id,
            config_version=d.config_version,
            raw=d,
            error=d.error.message if d.HasField("error") else "",
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (what the Gymnasium wrapper puts in ``info["interlock"]``)."""
        return {
            "verdict": self.verdict.name,
            "action": None if self.action is None else self.action.tolist(),
            "signals": {k: v._asdict() for k, v in self.signals.items()},
            "reasons": self.reasons,
            "fallback": self.fallback,
            "rule": self.rule,
            "decision_id": self.decision_id,
            "escalation_id": self.escalation_id,
            "config_version": self.config_version,
            "error": self.error,
        }


@dataclass
class ColumnsResult:
    """The answers of one CheckColumns call, as columns (row ``i`` of each array).

    Attributes:
        verdicts: ``[N]`` int Verdict values (``Verdict(int(v))``).
        actions: ``[N, *action_shape]``: the action each row executes (zeros where ``has_action`` is False).
        has_action: ``[N]`` bool: False on HALT without a fail-safe action (and for unchecked rows).
        signal_names: ``"<monitor>.<signal>"``, the columns of ``signals`` and ``tripped``.
        signals: ``[N, S]`` float64 (NaN where the monitor did not run on the row).
        thresholds: ``[S]``.
        tripped: ``[N, S]`` bool.
        rules: ``[N]`` index into ``rule_names`` (0: no rule).
        fallbacks: ``[N]`` index into ``fallback_names`` (0: none).
        shadow_verdicts: ``[N]`` would-be verdicts in shadow mode (0 where none), or None.
        details: row -> the ColumnRow message (reasons, escalation id, error) for rows that have one.
    """

    verdicts: np.ndarray
    actions: np.ndarray
    has_action: np.ndarray
    signal_names: list[str]
    signals: np.ndarray
    thresholds: np.ndarray
    tripped: np.ndarray
    rule_names: list[str]
    rule_reasons: list[str]
    rules: np.ndarray
    fallback_names: list[str]
    fallbacks: np.ndarray
    shadow_verdicts: np.ndarray | None
    details: dict[int, pb.ColumnRow]
    batch_id: str
    config_version: str
    raw: pb.CheckColumnsResponse = field(repr=False)

    def __len__(self) -> int:
        return len(self.verdicts)

    @classmethod
    def from_pb(cls, r: pb.CheckColumnsResponse) -> ColumnsResult:
        n = len(r.verdicts)
        has_action = np.ones(n, dtype=bool)
        details = {d.row: d for d in r.details}
        for i, d in details.items():
            if d.no_action:
                has_action[i] = False
        return cls(
            verdicts=np.array(r.verdicts, dtype=np.int8),
            actions=to_numpy(r.actions, "response.actions"),
            has_action=has_action,
            signal_names=list(r.signal_names),
            signals=to_numpy(r.signals, "response.signals"),
            thresholds=np.array(r.thresholds, dtype=np.float64),
            tripped=to_numpy(r.tripped, "response.tripped"),
            rule_names=list(r.rule_names),
            rule_reasons=list(r.rule_reasons),
            rules=np.array(r.rules, dtype=np.int32),
            fallback_names=list(r.fallback_names),
            fallbacks=np.array(r.fallbacks, dtype=np.int32),
            shadow_verdicts=np.array(r.shadow_verdicts, dtype=np.int8) if len(r.shadow_verdicts) else None,
            details=details,
            batch_id=r.batch_id,
            config_version=r.config_version,
            raw=r,
        )

    def decision_id(self, i: int) -> str:
        return f"{self.batch_id}-{i}"

    def reasons(self, i: int) -> list[str]:
        """Row ``i``'s reasons (an ALLOW row whose allow rule fired: that rule's reason)."""
        d = self.details.get(i)
        if d is not None:
            return list(d.reasons)
        k = int(self.rules[i])
        return [self.rule_reasons[k]] if k else []

    def result(self, i: int) -> CheckResult:
        """Row ``i`` as the :class:`CheckResult` a Check of it gives (signals where the monitor ran)."""
        d = self.details.get(i)
        msg = pb.Decision(
            decision_id=self.decision_id(i),
            verdict=cast("pb.Verdict", int(self.verdicts[i])),  # an enum value is an int on the wire
            action=from_numpy(self.actions[i] if self.has_action[i] else np.zeros(0, self.actions.dtype)),
            reasons=self.reasons(i),
            fallback=self.fallback_names[int(self.fallbacks[i])],
            escalation_id=d.escalation_id if d is not None else "",
            config_version=self.config_version,
            rule=self.rule_names[int(self.rules[i])],
        )
        for j, name in enumerate(self.signal_names):
            msg.signals.add(
                name=name, value=self.signals[i, j], threshold=self.thresholds[j], tripped=self.tripped[i, j]
            )
        if d is not None and d.HasField("error"):
            msg.error.CopyFrom(d.error)
        return CheckResult.from_pb(msg)


def make_columns_request(
    agent_id: str,
    observations: Any,
    actions: Any,
    episode_ids: Sequence[str] | None = None,
    steps: Sequence[int] | np.ndarray | None = None,
    labels: Mapping[str, str] | None = None,
) -> pb.CheckColumnsRequest:
    """One CheckColumnsRequest: ``[N, ...]`` observations and actions as two tensors."""
    return pb.CheckColumnsRequest(
        agent_id=agent_id,
        observations=from_numpy(np.asarray(observations)),
        actions=from_numpy(np.asarray(actions)),
        episode_ids=list(episode_ids or ()),
        steps=np.asarray(steps, dtype=np.int64).tolist() if steps is not None else [],
        labels=dict(labels or {}),
    )


def make_request(
    agent_id: str,
    observation: Any,
    action: Any,
    episode_id: str = "",
    step: int = 0,
    labels: Mapping[str, str] | None = None,
) -> pb.CheckRequest:
    """Build a CheckRequest from array-likes (Python ints become int64, floats float64)."""
    return pb.CheckRequest(
        agent_id=agent_id,
        episode_id=episode_id,
        step=int(step),
        observation=from_numpy(np.asarray(observation)),
        action=from_numpy(np.asarray(action)),
        labels=dict(labels or {}),
    )


def make_batch_request(
    agent_id: str,
    observations: Any,
    actions: Any,
    episode_ids: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    labels: Sequence[Mapping[str, str]] | None = None,
) -> pb.CheckBatchRequest:
    """One CheckBatchRequest for row ``i`` of ``observations`` / ``actions`` (``[batch, ...]`` each)."""
    obs, acts = np.asarray(observations), np.asarray(actions)
    return pb.CheckBatchRequest(
        requests=[
            make_request(
                agent_id,
                obs[i],
                acts[i],
                episode_ids[i] if episode_ids else "",
                steps[i] if steps is not None else 0,
                labels[i] if labels else None,
            )
            for i in range(len(obs))
        ]
    )


#: Extra attempts of a call that ended UNAVAILABLE (gRPC allows at most 4 extra).
DEFAULT_RETRIES = 2
GUARD_SERVICE = pb.DESCRIPTOR.services_by_name["Guard"].full_name


def channel_target(target: str | Sequence[str]) -> tuple[str, bool]:
    """The gRPC target for one address or several, and whether it may name several replicas.

    Args:
        target: ``host:port``, any gRPC target (``dns:///name:port``, ``ipv4:a:p,b:p``), or a
            list of ``ip:port`` addresses (``[::1]:p`` for IPv6).

    Raises:
        ValueError: a list with a host name (gRPC cannot mix names in one target) or mixed families.
    """
    if isinstance(target, str):
        scheme = target.split(":", 1)[0]
        several = scheme == "dns" or (scheme in ("ipv4", "ipv6") and "," in target)
        return target, several
    addresses = list(target)
    if not addresses:
        raise ValueError("no address given: pass 'host:port' or a list of 'ip:port' addresses")
    if len(addresses) == 1:
        return addresses[0], False
    import ipaddress

    families = set()
    for address in addresses:
        host = address.rsplit(":", 1)[0].strip("[]")
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(
                f"'{address}' is not an ip:port address; for replicas behind a name give one target "
                "that resolves to all of them, e.g. 'dns:///interlock-headless:50051'"
            ) from None
    if len(families) > 1:
        raise ValueError(f"{addresses} mixes IPv4 and IPv6 addresses; give one family")
    return f"ipv{families.pop()}:" + ",".join(addresses), True


def service_config(retries: int = DEFAULT_RETRIES, round_robin: bool = False) -> str:
    """gRPC service config (JSON): retry UNAVAILABLE ``retries`` times; ``round_robin`` balancing.

    Only UNAVAILABLE is retried: the server was unreachable, went away, or refused the call before
    answering it (an audit store that cannot commit also answers UNAVAILABLE, with no decision
    delivered). DEADLINE_EXCEEDED and everything else reach the caller at once.
    """
    if not 0 <= retries <= 4:
        raise ValueError(f"retries is {retries}; gRPC allows 0 to 4 extra attempts")
    config: dict[str, Any] = {}
    if round_robin:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    if retries:
        config["methodConfig"] = [
            {
                "name": [{"service": GUARD_SERVICE}],
                "retryPolicy": {
                    "maxAttempts": retries + 1,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def _channel_options(
    max_message_bytes: int, retries: int = 0, round_robin: bool = False
) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.service_config", service_config(retries, round_robin)),
    ]


_ChannelT = TypeVar("_ChannelT", grpc.Channel, grpc.aio.Channel)


class _GuardClientBase(ABC, Generic[_ChannelT]):
    """The constructor GuardClient and AsyncGuardClient share; only the channel they open differs."""

    channel: _ChannelT

    def __init__(
        self,
        target: str | Sequence[str],
        agent_id: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        token: str | None = None,
        retries: int = DEFAULT_RETRIES,
        round_robin: bool | None = None,
    ) -> None:
        self.target, several = channel_target(target)
        self.agent_id = agent_id
        self.timeout = timeout
        self.metadata = _auth_metadata(token)
        opts = _channel_options(max_message_bytes, retries, several if round_robin is None else round_robin)
        self.channel = self._open_channel(self.target, credentials, opts)
        self.stub = pb_grpc.GuardStub(self.channel)

    @abstractmethod
    def _open_channel(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> _ChannelT:
        """The plain or asyncio channel the subclass talks through."""


class GuardClient(_GuardClientBase[grpc.Channel]):
    """Blocking client of ``interlock.v1.Guard``.

    Args:
        target: ``host:port`` of the Interlock server; or several replicas: a list of ``ip:port``
            addresses, ``ipv4:a:p1,b:p2``, or ``dns:///name:port`` (calls are then balanced
            ``round_robin``).
        agent_id: Default agent id for calls that do not pass one.
        timeout: Deadline per call in seconds; an expired deadline raises, never allows.
        credentials: ``grpc.ssl_channel_credentials(...)`` for TLS; None for plaintext.
        token: The agent's bearer token, for servers with ``auth.agent_tokens``
            (default: ``$INTERLOCK_AGENT_TOKEN`` when set). Escalating agents should also
            set ``timeout`` above their ``escalation.timeout_seconds``.
        retries: Extra attempts of a call that ended UNAVAILABLE (0-4), within ``timeout``.
        round_robin: Balance calls over every address the target resolves to; default: when
            the target names several (a list, ``ipv4:a,b`` or ``dns:///``).
    """

    def _open_channel(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> grpc.Channel:
        if credentials:
            return grpc.secure_channel(target, credentials, options)
        return grpc.insecure_channel(target, options)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel connects (raises grpc.FutureTimeoutError otherwise)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def check(
        self,
        observation: Any,
        action: Any,
        *,
        agent_id: str | None = None,
        episode_id: str = "",
        step: int = 0,
        labels: Mapping[str, str] | None = None,
    ) -> CheckResult:
        """Check one proposed action. Raises grpc.RpcError on any failure."""
        req = make_request(agent_id or self.agent_id, observation, action, episode_id, step, labels)
        answer = self.stub.Check(req, timeout=self.timeout, metadata=_with_trace(self.metadata))
        return CheckResult.from_pb(answer)

    def check_batch(
        self,
        observations: Any,
        actions: Any,
        *,
        agent_id: str | None = None,
        episode_ids: Sequence[str] | None = None,
        steps: Sequence[int] | None = None,
        labels: Sequence[Mapping[str, str]] | None = None,
    ) -> list[CheckResult]:
        """Check ``observations[i]`` / ``actions[i]`` for every row in one call (``[batch, ...]`` each)."""
        req = make_batch_request(agent_id or self.agent_id, observations, actions, episode_ids, steps, labels)
        resp = self.stub.CheckBatch(req, timeout=self.timeout, metadata=_with_trace(self.metadata))
        return [CheckResult.from_pb(d) for d in resp.decisions]

    def check_columns(
        self,
        observations: Any,
        actions: Any,
        agent_id: str | None = None,
        episode_ids: Sequence[str] | None = None,
        steps: Sequence[int] | np.ndarray | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> ColumnsResult:
        """Check ``[N, ...]`` observations and actions of one agent in one CheckColumns call."""
        req = make_columns_request(
            agent_id if agent_id is not None else self.agent_id,
            observations,
            actions,
            episode_ids,
            steps,
            labels,
        )
        return ColumnsResult.from_pb(
            self.stub.CheckColumns(req, timeout=self.timeout, metadata=self.metadata)
        )

    def check_stream(self, requests: Iterable[pb.CheckRequest]) -> Iterator[CheckResult]:
        """Send requests over one CheckStream; yields one result per request, in order."""
        for d in self.stub.CheckStream(iter(requests), metadata=_with_trace(self.metadata)):
            yield CheckResult.from_pb(d)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GuardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGuardClient(_GuardClientBase[grpc.aio.Channel]):
    """asyncio client of ``interlock.v1.Guard``; same arguments as :class:`GuardClient`."""

    # check_* twin GuardClient's with ``await`` on purpose: a shared body would hide which one blocks.

    def _open_channel(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> grpc.aio.Channel:
        if credentials:
            return grpc.aio.secure_channel(target, credentials, options)
        return grpc.aio.insecure_channel(target, options)

    async def check(
        self,
        observation: Any,
        action: Any,
        *,
        agent_id: str | None = None,
        episode_id: str = "",
        step: int = 0,
        labels: Mapping[str, str] | None = None,
    ) -> CheckResult:
        req = make_request(agent_id or self.agent_id, observation, action, episode_id, step, labels)
        answer = await self.stub.Check(req, timeout=self.timeout, metadata=_with_trace(self.metadata))
        return CheckResult.from_pb(answer)

    async def check_batch(
        self,
        observations: Any,
        actions: Any,
        *,
        agent_id: str | None = None,
        episode_ids: Sequence[str] | None = None,
        steps: Sequence[int] | None = None,
        labels: Sequence[Mapping[str, str]] | None = None,
    ) -> list[CheckResult]:
        """Check every row of ``[batch, ...]`` observations and actions in one call."""
        req = make_batch_request(agent_id or self.agent_id, observations, actions, episode_ids, steps, labels)
        resp = await self.stub.CheckBatch(req, timeout=self.timeout, metadata=_with_trace(self.metadata))
        return [CheckResult.from_pb(d) for d in resp.decisions]

    async def check_columns(
        self,
        observations: Any,
        actions: Any,
        agent_id: str | None = None,
        episode_ids: Sequence[str] | None = None,
        steps: Sequence[int] | np.ndarray | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> ColumnsResult:
        """Check ``[N, ...]`` observations and actions of one agent in one CheckColumns call."""
        req = make_columns_request(
            agent_id if agent_id is not None else self.agent_id,
            observations,
            actions,
            episode_ids,
            steps,
            labels,
        )
        resp = await self.stub.CheckColumns(req, timeout=self.timeout, metadata=self.metadata)
        return ColumnsResult.from_pb(resp)

    async def check_stream(
        self, requests: AsyncIterator[pb.CheckRequest] | Iterable[pb.CheckRequest]
    ) -> AsyncIterator[CheckResult]:
        async for d in self.stub.CheckStream(requests, metadata=_with_trace(self.metadata)):
            yield CheckResult.from_pb(d)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncGuardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
