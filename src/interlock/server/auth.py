"""Credentials of operators and agents, and the gRPC interceptor that enforces them.

* The Operator service needs an operator credential: ``authorization: Bearer TOKEN``
  metadata with an operator token, or (mTLS) a verified client certificate whose
  common name is listed in ``auth.operator_common_names``. No credential gives
  UNAUTHENTICATED; an agent's token gives PERMISSION_DENIED: an agent can never
  answer its own escalation.
* The Guard service needs an agent token once any is configured
  (``auth.agent_tokens``); an operator token there gives PERMISSION_DENIED.

Tokens are compared with :func:`hmac.compare_digest` against every configured
token and never logged or echoed in error messages.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc

from interlock.config import AuthConfig, LoadedConfig, TokenSourceConfig
from interlock.errors import ConfigError, InterlockError, PermissionDenied, Unauthenticated
from interlock.server.layers import HandlerCache, Layer, wrap_handler
from interlock.tokens import MAKE_TOKEN, MIN_TOKEN_CHARS, read_token_file

log = logging.getLogger(__name__)

OPERATOR_SERVICE = "interlock.v1.Operator"
GUARD_SERVICE = "interlock.v1.Guard"

Role = Literal["operator", "agent"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name or a certificate's common name, and their role."""

    name: str
    role: Role
    via: Literal["token", "mtls"] = "token"


#: The authenticated caller of the current gRPC call (set by :class:`AuthInterceptor`).
CURRENT_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "interlock_principal", default=None
)


def _read_tokens(
    src: TokenSourceConfig,
    role: Role,
    required: bool,
    loaded: LoadedConfig | None,
    environ: Mapping[str, str],
) -> list[tuple[str, str]]:
    """The ``(name, token)`` pairs of one source.

    Args:
        src: ``auth.<role>_tokens``.
        role: Whose tokens these are.
        required: The source is written in the config, so an unset or empty variable, or a
            missing, unreadable or empty file, is an error (never "no tokens": that would turn
            authentication off). False only for the built-in default variable.
        loaded: Resolves a relative file against the config's folder.
        environ: The environment.

    Raises:
        ConfigError: naming the variable or file and how to fix it; never echoing a token.
    """
    key = f"auth.{role}_tokens"
    found: list[tuple[str, str]] = []
    if src.env:
        value = environ.get(src.env)
        if value is None or not value.strip():
            if required:
                state = "is not set" if value is None else "is empty"
                raise ConfigError(
                    f"{key}.env: the environment variable {src.env} {state}; export {src.env}=TOKEN "
                    f"(make one with {MAKE_TOKEN}), or remove {key}.env from the config"
                )
        else:
            value = value.strip()
            if any(c.isspace() for c in value):
                raise ConfigError(
                    f"{key}.env: ${src.env} holds more than one word; it must hold exactly one token. "
                    f"Name it with {key}.name, or put 'NAME TOKEN' lines in a token file ({key}.file)"
                )
            if len(value) < MIN_TOKEN_CHARS:
                raise ConfigError(
                    f"{key}.env: the {role} token in ${src.env} is shorter than {MIN_TOKEN_CHARS} "
                    f"characters; make one with {MAKE_TOKEN}"
                )
            found.append((src.name or role, value))
    if src.file:
        path = loaded.resolve(src.file) if loaded is not None else Path(src.file)
        fix = f" ({key}.file; one token per line, optionally 'NAME TOKEN')"
        from_file = read_token_file(
            path, lambda n: f"{role}:{path.name}:{n}", what=f"the {role} token file", fix=fix
        )
        if not from_file:
            raise ConfigError(f"the {role} token file {path} holds no token{fix}")
        found += from_file
    return found


def token_files(auth: AuthConfig, loaded: LoadedConfig | None = None) -> list[Path]:
    """The token files ``auth`` names, resolved (hot reload watches them)."""
    sources = (auth.operator_tokens, auth.agent_tokens)
    return [loaded.resolve(s.file) if loaded is not None else Path(s.file) for s in sources if s.file]


@dataclass(frozen=True)
class _Accepted:
    """One consistent set of credentials (swapped whole on hot reload)."""

    tokens: tuple[tuple[bytes, Principal], ...]
    operator_common_names: frozenset[str]
    has_operators: bool
    agents_required: bool


class Credentials:
    """The tokens and certificate names this server accepts, by role.

    The interceptor, the console and the operator side share one instance; :meth:`replace`
    swaps its contents when a reloaded config names other tokens.

    Args:
        operator_tokens: ``(name, token)`` pairs accepted as operators.
        agent_tokens: ``(name, token)`` pairs accepted as agents.
        operator_common_names: client-certificate CNs accepted as operators (mTLS).
    """

    def __init__(
        self,
        operator_tokens: list[tuple[str, str]],
        agent_tokens: list[tuple[str, str]] | None = None,
        operator_common_names: list[str] | None = None,
    ) -> None:
        agent_tokens = agent_tokens or []
        clash = {t for _, t in operator_tokens} & {t for _, t in agent_tokens}
        if clash:
            raise ConfigError(
                "the same token is configured for an operator and an agent; an agent must never be able to "
                "answer escalations: give operators and agents different tokens"
            )
        names = frozenset(operator_common_names or [])
        self._accepted = _Accepted(
            tokens=tuple(
                [(t.encode(), Principal(n, "operator")) for n, t in operator_tokens]
                + [(t.encode(), Principal(n, "agent")) for n, t in agent_tokens]
            ),
            operator_common_names=names,
            has_operators=bool(operator_tokens or names),
            agents_required=bool(agent_tokens),
        )

    @property
    def operator_common_names(self) -> frozenset[str]:
        return self._accepted.operator_common_names

    @property
    def has_operators(self) -> bool:
        return self._accepted.has_operators

    @property
    def agents_required(self) -> bool:
        return self._accepted.agents_required

    def replace(self, other: Credentials) -> None:
        """Accept exactly what ``other`` accepts from now on (one atomic swap)."""
        self._accepted = other._accepted

    @classmethod
    def from_config(
        cls, auth: AuthConfig, loaded: LoadedConfig | None = None, environ: Mapping[str, str] | None = None
    ) -> Credentials:
        """Read tokens from the environment and files named by ``auth``.

        Raises:
            ConfigError: a source written in the config is unset, missing, unreadable or empty, or a
                token is malformed; the message names the variable or file.
        """
        env = os.environ if environ is None else environ
        written = auth.model_fields_set
        return cls(
            _read_tokens(auth.operator_tokens, "operator", "operator_tokens" in written, loaded, env),
            _read_tokens(auth.agent_tokens, "agent", "agent_tokens" in written, loaded, env),
            list(auth.operator_common_names),
        )

    def _by_token(self, presented: str) -> Principal | None:
        data = presented.encode()
        match: Principal | None = None
        # No early exit: the timing does not reveal which token matched.
        for token, principal in self._accepted.tokens:
            if hmac.compare_digest(token, data):
                match = principal
        return match

    def identify(self, authorization: str | None, common_names: list[str] | None = None) -> Principal | None:
        """The principal behind an ``authorization`` header value and/or verified certificate CNs.

        Raises:
            Unauthenticated: a header that is not ``Bearer TOKEN``, or a token nobody configured.
        """
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the authorization metadata must be 'Bearer TOKEN'")
            principal = self._by_token(token.strip())
            if principal is None:
                raise Unauthenticated("the bearer token is not valid on this server")
            return principal
        for cn in common_names or []:
            if cn in self._accepted.operator_common_names:
                return Principal(cn, "operator", via="mtls")
        return None

    def operator(self, authorization: str | None, common_names: list[str] | None = None) -> Principal:
        """An operator principal, or UNAUTHENTICATED / PERMISSION_DENIED."""
        principal = self.identify(authorization, common_names)
        if principal is None:
            raise Unauthenticated(
                "operator calls need a credential: send metadata 'authorization: Bearer TOKEN' with an "
                "operator token (interlock escalations --token, or $INTERLOCK_OPERATOR_TOKEN)"
            )
        if principal.role != "operator":
            raise PermissionDenied(
                "this credential belongs to an agent; agents cannot list or answer escalations"
            )
        return principal

    def agent(self, authorization: str | None) -> Principal:
        """An agent principal (only called when agent tokens are required)."""
        principal = self.identify(authorization)
        if principal is None:
            raise Unauthenticated(
                "this server requires an agent token on the Guard service: send metadata "
                "'authorization: Bearer TOKEN' (GuardClient(token=...) or $INTERLOCK_AGENT_TOKEN)"
            )
        if principal.role != "agent":
            raise PermissionDenied(
                "operator credentials cannot call the Guard service; give each agent its own agent token"
            )
        return principal


def _metadata_value(context, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("latin-1")
    return None


def _common_names(context) -> list[str]:
    try:
        auth = context.auth_context() or {}
    except Exception:  # no transport security
        return []
    return [v.decode() if isinstance(v, bytes) else str(v) for v in auth.get("x509_common_name", [])]


def _authenticated(check: Callable[[object], Principal]) -> Layer:
    """A layer that authenticates first and exposes the principal in CURRENT_PRINCIPAL during the call."""

    @asynccontextmanager
    async def layer(request, context) -> AsyncIterator[None]:
        try:
            principal = check(context)
        except InterlockError as e:
            await context.abort(e.status_code, e.message)
            raise  # unreachable: abort raises
        token = CURRENT_PRINCIPAL.set(principal)
        try:
            yield
        finally:
            CURRENT_PRINCIPAL.reset(token)

    return layer


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Enforces :class:`Credentials` on the Operator service (always) and Guard (when agent tokens exist).

    Args:
        credentials: What is accepted.
        on_reject: Called with "unauthenticated" or "permission_denied" for metrics.
    """

    def __init__(self, credentials: Credentials, on_reject: Callable[[str], None] | None = None) -> None:
        self.credentials = credentials
        self.on_reject = on_reject
        self._handlers = HandlerCache()

    def _counted(self, fn: Callable[[object], Principal]) -> Callable[[object], Principal]:
        def check(context) -> Principal:
            try:
                return fn(context)
            except InterlockError as e:
                if self.on_reject is not None:
                    self.on_reject(e.reason)
                raise

        return check

    def check_operator(self, context) -> Principal:
        return self.credentials.operator(_metadata_value(context, "authorization"), _common_names(context))

    def check_agent(self, context) -> Principal:
        return self.credentials.agent(_metadata_value(context, "authorization"))

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service = handler_call_details.method.split("/")[1] if handler_call_details.method else ""
        # The layer reads the credentials per call (token reloads apply); only the wrapping is cached.
        if service == OPERATOR_SERVICE:
            return self._handlers.get(
                handler,
                "operator",
                lambda: wrap_handler(handler, _authenticated(self._counted(self.check_operator))),
            )
        if service == GUARD_SERVICE and self.credentials.agents_required:
            return self._handlers.get(
                handler,
                "agent",
                lambda: wrap_handler(handler, _authenticated(self._counted(self.check_agent))),
            )
        return handler
