"""Hot reload: load and validate a new config off the request path, then swap it in atomically.

Triggered by SIGHUP (``kill -HUP``) and, with ``server.reload.watch``, by a change
of the config file's or any model file's mtime (polled; no extra dependency).
The new config is parsed, every rule compiled and every model loaded in a worker
thread; only then does :meth:`GuardService.swap` replace the engine, so each
request sees exactly one config version. A bad config or a corrupt model is
rejected with a log line naming the problem and
``interlock_config_reloads_total{result="failure"}``; the old config keeps serving.

TLS certificates and token files (``auth.*_tokens``) are re-read with the config: a token
removed from its file is refused from then on, a new one accepted; a configured token
source that is now missing, unreadable or empty rejects the reload (the old tokens keep
working). With ``server.reload.watch`` a change of a token file triggers a reload too.
Settings that need a new socket
(host, port, limits, audit) are reported in the log and apply at the next restart.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interlock.config import LoadedConfig, load_config
from interlock.engine import Guard
from interlock.server.auth import Credentials, token_files

if TYPE_CHECKING:
    from interlock.server.app import InterlockServer

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".onnx", ".ort", ".npz", ".json")
_RESTART_KEYS = ("host", "port", "metrics_port", "max_message_bytes", "max_concurrent_rpcs", "audit")


def model_files(loaded: LoadedConfig) -> list[Path]:
    """Every file the config names (string values ending in a model suffix), resolved."""
    found: list[Path] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str) and x.endswith(MODEL_SUFFIXES):
            found.append(loaded.resolve(x))

    walk(loaded.config.model_dump(exclude={"server"}))
    return sorted(set(found))


def fingerprint(paths: list[Path]) -> tuple:
    """(path, mtime_ns, size) per file; missing files count too, so that they reappearing triggers."""
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(p), None, None))
    return tuple(out)


class Reloader:
    """Reloads one server's config file.

    Args:
        server: The running server (its ``service``, ``tls`` and ``metrics`` are used).
        path: The config file.
    """

    def __init__(self, server: InterlockServer, path: str | Path) -> None:
        self.server = server
        self.path = Path(path)
        self._lock = asyncio.Lock()
        self._seen = self._fingerprint(server.loaded)
        self.last_error: str | None = None

    def _fingerprint(self, loaded: LoadedConfig) -> tuple:
        tls = loaded.config.server.tls
        certs = [loaded.resolve(p) for p in (tls.cert, tls.key, tls.client_ca) if p] if tls else []
        tokens = token_files(loaded.config.auth, loaded)
        return fingerprint([self.path, *model_files(loaded), *certs, *tokens])

    async def reload(self, why: str = "request") -> bool:
        """Load, validate, swap. Returns True when the new config is serving."""
        async with self._lock:
            server = self.server
            metrics = server.metrics
            # What the files were before reading them: one that changes while this reload runs must
            # trigger another (its new content may not be what was loaded).
            before = {p: (m, size) for p, m, size in fingerprint([Path(p) for p, _, _ in self._seen])}
            try:
                loaded = await asyncio.to_thread(load_config, self.path)
                credentials = await asyncio.to_thread(Credentials.from_config, loaded.config.auth, loaded)
                guard = await asyncio.to_thread(lambda: Guard(loaded).load())
                tls = loaded.config.server.tls
                if server.tls is not None and tls is not None:
                    server.tls.update(tls, loaded.base_dir)
            except Exception as e:
                msg = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
                self.last_error = msg
                self._seen = fingerprint([Path(p) for p, _, _ in self._seen])
                metrics.config_reloads.labels(result="failure").inc()
                log.error(
                    "config reload (%s) rejected; still serving version %s. %s",
                    why,
                    server.service.guard.version,
                    msg,
                )
                return False
            old_cfg = server.loaded.config.server
            changed = [k for k in _RESTART_KEYS if getattr(old_cfg, k) != getattr(loaded.config.server, k)]
            if changed:
                log.warning(
                    "config reload: server.%s changed; this applies after a restart",
                    ", server.".join(changed),
                )
            old = server.service.swap(guard)
            server.credentials.replace(credentials)
            server.loaded = loaded
            self._seen = tuple(
                (p, m, size) if before.get(p, (m, size)) == (m, size) else (p, None, None)
                for p, m, size in self._fingerprint(loaded)
            )
            self.last_error = None
            metrics.config_reloads.labels(result="success").inc()
            log.info("config reloaded (%s): version %s -> %s", why, old.version, guard.version)
            # Calls that already hold the old engine finish with it; release its models afterwards.
            asyncio.get_running_loop().call_later(server.grace_seconds + 1.0, old.unload)
            return True

    async def watch(self, poll_seconds: float) -> None:
        """Poll the config and model files; reload when any of them changes. Runs until cancelled."""
        while True:
            await asyncio.sleep(poll_seconds)
            paths = [Path(p) for p, _, _ in self._seen]
            now = fingerprint(paths)
            if now != self._seen:
                self._seen = now
                await self.reload("file changed")
