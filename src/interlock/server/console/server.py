"""The operator web console: a JSON API, Server-Sent Events and a static page, on aiohttp.

Runs on the server's event loop, on its own port (``server.console_port``).
Every ``/api`` call needs ``Authorization: Bearer TOKEN`` with an operator token
(agents' tokens get 403); the page keeps the token in ``sessionStorage`` and
sends it as a header, never in a URL or a cookie, so cross-site requests cannot
borrow it. Live updates stream from ``/api/events`` (SSE read with ``fetch``).

API:
    GET  /api/whoami                          -> {"name", "via"}
    GET  /api/escalations?state=&agent=&limit= -> {"escalations": [...], "server_time"}
    GET  /api/escalations/{id}                -> one escalation
    POST /api/escalations/{id}/resolve        {"resolution": "approve"|"reject"|"substitute",
                                               "action": ..., "operator": "", "comment": ""}
    GET  /api/events?agent=                   -> text/event-stream of "escalation" events
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from interlock.engine import Guard
from interlock.errors import InterlockError, InvalidRequest
from interlock.escalation.convert import FRAME_LABEL, escalation_dict, json_number
from interlock.escalation.manager import EscalationManager
from interlock.escalation.model import Escalation, EscalationState, Resolution
from interlock.server.auth import Credentials, Principal

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
HEARTBEAT_SECONDS = 15.0
_STATE_OF_NAME = EscalationState.named()
_RESOLUTION_OF_NAME = Resolution.named()
_HTTP_OF_REASON = {
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "failed_precondition": 409,
    "escalation_store": 503,
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_KEY_PRINCIPAL = web.AppKey("principal_of", Callable)
#: The 401 answer: what this HTTP API wants (the gRPC services' messages speak of metadata instead).
NEEDS_BEARER = (
    "this API needs the header 'Authorization: Bearer TOKEN' with an operator token "
    "(a token from auth.operator_tokens)"
)


def _tensor(arr: np.ndarray) -> dict[str, Any]:
    flat = [json_number(float(v)) if arr.dtype.kind == "f" else v for v in arr.reshape(-1).tolist()]
    return {"shape": list(arr.shape), "dtype": arr.dtype.name, "values": flat}


def _space(guard: Guard, agent_id: str) -> dict[str, Any] | None:
    try:
        space = guard.agent(agent_id).spaces.action
    except InterlockError:
        return None
    if space.discrete:
        return {"type": "discrete", "n": space.n}
    return {
        "type": "box",
        "shape": list(space.shape),
        "low": space.low.reshape(-1).tolist(),  # type: ignore[union-attr]
        "high": space.high.reshape(-1).tolist(),  # type: ignore[union-attr]
    }


def escalation_json(rec: Escalation, guard: Guard) -> dict[str, Any]:
    """One escalation as the console's JSON (tensors as ``{shape, dtype, values}``, the frame apart)."""
    data = escalation_dict(rec, tensor=_tensor, number=json_number)
    data["id"] = data.pop("escalation_id")
    data["frame_png_base64"] = data["labels"].pop(FRAME_LABEL, "")
    data["action_space"] = _space(guard, rec.agent_id)
    return data


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Console:
    """The console's aiohttp application around an :class:`EscalationManager`.

    Args:
        manager: Answers and lists escalations.
        credentials: Who may sign in (operators only).
        guard: The current engine (for action spaces).
    """

    def __init__(
        self, manager: EscalationManager, credentials: Credentials, guard: Callable[[], Guard]
    ) -> None:
        self.manager = manager
        self.credentials = credentials
        self.guard = guard
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._streams: set[asyncio.Task] = set()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers, self._auth], client_max_size=64 * 1024)
        app.router.add_get("/", self._index)
        app.router.add_get("/favicon.ico", self._no_content)
        app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
        app.router.add_get("/api/whoami", self._whoami)
        app.router.add_get("/api/escalations", self._list)
        app.router.add_get("/api/escalations/{id}", self._get)
        app.router.add_post("/api/escalations/{id}/resolve", self._resolve)
        app.router.add_get("/api/events", self._events)
        return app

    async def start(self, host: str, port: int) -> int:
        """Serve on ``host:port`` (0 picks a free port); returns the bound port."""
        self.runner = web.AppRunner(self.app(), shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        for task in list(self._streams):
            task.cancel()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # ------------------------------------------------------------------ middlewares

    @web.middleware
    async def _headers(self, request: web.Request, handler):
        try:
            response = await handler(request)
        except web.HTTPException as e:
            response = e
        for k, v in _SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if not request.path.startswith("/api/"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self._unauthenticated(NEEDS_BEARER)
        try:
            request["principal"] = self.credentials.operator(header)
        except InterlockError as e:
            if e.reason == "unauthenticated":
                return self._unauthenticated(
                    f"{e.message}; send 'Authorization: Bearer TOKEN' with an operator token"
                )
            return _error(_HTTP_OF_REASON.get(e.reason, 401), e.message)
        try:
            return await handler(request)
        except InterlockError as e:
            return _error(
                _HTTP_OF_REASON.get(e.reason, 400 if e.reason.startswith("invalid") else 500), e.message
            )

    @staticmethod
    def _unauthenticated(message: str) -> web.Response:
        response = _error(401, message)
        response.headers["WWW-Authenticate"] = 'Bearer realm="interlock"'
        return response

    # ------------------------------------------------------------------ handlers

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _no_content(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _whoami(self, request: web.Request) -> web.Response:
        p: Principal = request["principal"]
        return web.json_response({"name": p.name, "via": p.via})

    async def _list(self, request: web.Request) -> web.Response:
        q = request.query
        state_name = q.get("state", "pending")
        agent = q.get("agent", "")
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise InvalidRequest("limit must be an integer") from None
        if state_name == "resolved":
            found = await self.manager.list(0, agent, limit, resolved=True)
        elif state_name == "all":
            found = await self.manager.list(0, agent, limit)
        elif state_name in _STATE_OF_NAME:
            found = await self.manager.list(_STATE_OF_NAME[state_name], agent, limit)
        else:
            names = ", ".join(["all", "resolved", *_STATE_OF_NAME])
            raise InvalidRequest(f"state must be one of {names}")
        guard = self.guard()
        return web.json_response(
            {"escalations": [escalation_json(r, guard) for r in found], "server_time": self.manager.clock()}
        )

    async def _get(self, request: web.Request) -> web.Response:
        rec = await self.manager.get(request.match_info["id"])
        return web.json_response(escalation_json(rec, self.guard()))

    async def _resolve(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidRequest(
                'the body must be JSON: {"resolution": "approve"|"reject"|"substitute"}'
            ) from None
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        resolution = _RESOLUTION_OF_NAME.get(str(body.get("resolution", "")).lower())
        if resolution is None:
            raise InvalidRequest("resolution must be 'approve', 'reject' or 'substitute'")
        action = None
        if body.get("action") is not None:
            action = np.asarray(body["action"])
            if action.dtype.kind not in "iuf":
                raise InvalidRequest("action must be a number or a list of numbers")
        p: Principal = request["principal"]
        rec = await self.manager.resolve(
            request.match_info["id"],
            resolution,
            action,
            operator=str(body.get("operator") or "")[:200],
            comment=str(body.get("comment") or "")[:2000],
            authenticated_as=p.name,
        )
        return web.json_response(escalation_json(rec, self.guard()))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        for k, v in _SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        await response.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            hello = json.dumps({"server_time": self.manager.clock()})
            await response.write(f"event: hello\ndata: {hello}\n\n".encode())
            async for rec in self.manager.watch(
                request.query.get("agent", ""), include_pending=True, heartbeat=HEARTBEAT_SECONDS
            ):
                if rec is None:
                    await response.write(b": ping\n\n")
                    continue
                data = escalation_json(rec, self.guard())
                data["server_time"] = self.manager.clock()
                await response.write(f"event: escalation\ndata: {json.dumps(data)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._streams.discard(task)
        return response
