"""Shared helpers of the escalation tests: the example config, agents in threads, waiting."""

from __future__ import annotations

import base64
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from interlock import GuardClient
from interlock.client import CheckResult
from interlock.config import LoadedConfig, parse_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "escalation" / "interlock.yaml"
AGENT = "escalation-demo"
OPERATOR_TOKEN = "op-token-" + "7" * 24
AGENT_TOKEN = "agent-token-" + "3" * 24
RISKY = np.array([0.9, 0.1], np.float32)  # observation[0] > 0.5: escalates
SAFE = np.array([0.1, 0.1], np.float32)


def example_data(tmp_path: Path, **escalation: Any) -> dict[str, Any]:
    """The example config as a dict: store in ``tmp_path``, ports 0, agent escalation overrides."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["server"].update(port=0, metrics_port=None, console_port=None)
    data["escalations"]["store"]["path"] = str(tmp_path / "escalations.db")
    data["agents"][0]["escalation"].update(escalation)
    return data


def loaded_from(data: dict[str, Any], version: str = "esc-test") -> LoadedConfig:
    return LoadedConfig(parse_config(data, source=str(EXAMPLE)), EXAMPLE.parent, version, str(EXAMPLE))


def example_loaded(tmp_path: Path, **escalation: Any) -> LoadedConfig:
    return loaded_from(example_data(tmp_path, **escalation))


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "interlock.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy; returns its value or fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(interval)


class AgentCall:
    """One ``GuardClient.check`` on a thread, as an agent blocked in a blocking escalation."""

    def __init__(
        self, target: str, observation=RISKY, action: int = 1, agent_id: str = AGENT, **kw: Any
    ) -> None:
        self.result: CheckResult | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        #: ``time.perf_counter()`` when the answer (or the error) arrived.
        self.answered_at = 0.0
        token = kw.pop("token", None)

        def run() -> None:
            start = time.perf_counter()
            try:
                with GuardClient(target, agent_id=agent_id, timeout=30, token=token) as client:
                    self.result = client.check(observation, np.int64(action), **kw)
            except BaseException as e:
                self.error = e
            self.answered_at = time.perf_counter()
            self.seconds = self.answered_at - start

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait(self, timeout: float = 30.0) -> CheckResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the agent's Check did not return"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def png_base64(width: int = 32, height: int = 24) -> str:
    """A small real RGB PNG (a gradient), base64 encoded: what an agent sends as a frame label."""
    rows = b"".join(
        b"\x00" + bytes(c for x in range(width) for c in (255 * x // width, 255 * y // height, 90))
        for y in range(height)
    )

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(png).decode()
