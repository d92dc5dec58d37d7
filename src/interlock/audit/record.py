"""The decision log's record: one decision as stored, its columns, and the query filters."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from interlock.types import Decision

TABLE = "interlock_audit"
#: Column name -> (SQLite type, PostgreSQL type), in insert order.
COLUMNS: dict[str, tuple[str, str]] = {
    "decision_id": ("TEXT PRIMARY KEY", "TEXT PRIMARY KEY"),
    "time": ("REAL NOT NULL", "DOUBLE PRECISION NOT NULL"),
    "agent_id": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "episode_id": ("TEXT", "TEXT"),
    "step": ("INTEGER", "BIGINT"),
    "verdict": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "shadow_verdict": ("TEXT", "TEXT"),
    "rule": ("TEXT", "TEXT"),
    "fallback": ("TEXT", "TEXT"),
    "config_version": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "escalation_id": ("TEXT", "TEXT"),
    "reasons": ("TEXT", "TEXT"),
    "signals": ("TEXT", "TEXT"),
    "labels": ("TEXT", "TEXT"),
    "errors": ("TEXT", "TEXT"),
    "obs_dtype": ("TEXT", "TEXT"),
    "obs_shape": ("TEXT", "TEXT"),
    "observation": ("BLOB", "BYTEA"),
    "action_dtype": ("TEXT", "TEXT"),
    "action_shape": ("TEXT", "TEXT"),
    "proposed_action": ("BLOB", "BYTEA"),
    "action": ("BLOB", "BYTEA"),
}


# --------------------------------------------------------------------------- records


@dataclass
class AuditRecord:
    """One decision as stored. Arrays are one observation / one action (no batch axis)."""

    decision_id: str
    time: float
    agent_id: str
    verdict: str
    config_version: str
    observation: np.ndarray
    proposed_action: np.ndarray
    action: np.ndarray | None
    episode_id: str = ""
    step: int = 0
    shadow_verdict: str = ""
    rule: str = ""
    fallback: str = ""
    escalation_id: str = ""
    reasons: list[str] = field(default_factory=list)
    signals: list[tuple[str, float, float, bool]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_decision(cls, d: Decision, now: float | None = None) -> AuditRecord:
        return cls(
            decision_id=d.decision_id,
            time=time.time() if now is None else now,
            agent_id=d.agent_id,
            verdict=d.verdict.label,
            config_version=d.config_version,
            observation=np.asarray(d.observation),
            proposed_action=np.asarray(d.proposed_action),
            action=None if d.action is None else np.asarray(d.action),
            episode_id=d.episode_id,
            step=int(d.step),
            shadow_verdict=d.shadow_verdict.label if d.shadow_verdict is not None else "",
            rule=d.rule,
            fallback=d.fallback,
            escalation_id=d.escalation_id,
            reasons=list(d.reasons),
            signals=[(n, float(v), float(t), bool(tr)) for n, v, t, tr in d.signals],
            labels=dict(d.labels),
            errors=list(d.errors),
        )

    @property
    def effective_verdict(self) -> str:
        """The verdict the policy reached (the would-be verdict for shadow-mode records)."""
        return self.shadow_verdict or self.verdict

    def to_row(self) -> tuple[Any, ...]:
        """Values in :data:`COLUMNS` order."""
        act = self.proposed_action
        return (
            self.decision_id,
            self.time,
            self.agent_id,
            self.episode_id,
            self.step,
            self.verdict,
            self.shadow_verdict,
            self.rule,
            self.fallback,
            self.config_version,
            self.escalation_id,
            json.dumps(self.reasons),
            json.dumps(self.signals),
            json.dumps(self.labels),
            json.dumps(self.errors),
            self.observation.dtype.name,
            json.dumps(list(self.observation.shape)),
            np.ascontiguousarray(self.observation).tobytes(),
            act.dtype.name,
            json.dumps(list(act.shape)),
            np.ascontiguousarray(act).tobytes(),
            None if self.action is None else np.ascontiguousarray(self.action, dtype=act.dtype).tobytes(),
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> AuditRecord:
        v = dict(zip(COLUMNS, row, strict=True))
        obs_dtype, obs_shape = np.dtype(v["obs_dtype"]), json.loads(v["obs_shape"])
        act_dtype, act_shape = np.dtype(v["action_dtype"]), json.loads(v["action_shape"])

        def arr(blob: bytes, dtype: np.dtype, shape: list[int]) -> np.ndarray:
            return np.frombuffer(bytes(blob), dtype=dtype).reshape(shape)

        return cls(
            decision_id=v["decision_id"],
            time=float(v["time"]),
            agent_id=v["agent_id"],
            verdict=v["verdict"],
            config_version=v["config_version"],
            observation=arr(v["observation"], obs_dtype, obs_shape),
            proposed_action=arr(v["proposed_action"], act_dtype, act_shape),
            action=None if v["action"] is None else arr(v["action"], act_dtype, act_shape),
            episode_id=v["episode_id"] or "",
            step=int(v["step"] or 0),
            shadow_verdict=v["shadow_verdict"] or "",
            rule=v["rule"] or "",
            fallback=v["fallback"] or "",
            escalation_id=v["escalation_id"] or "",
            reasons=json.loads(v["reasons"] or "[]"),
            signals=[tuple(s) for s in json.loads(v["signals"] or "[]")],
            labels=json.loads(v["labels"] or "{}"),
            errors=json.loads(v["errors"] or "[]"),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite numbers become null), as ``interlock audit export`` prints it."""

        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        def arr(a: np.ndarray | None) -> Any:
            return None if a is None else a.tolist()

        def clean(x: Any) -> Any:
            if isinstance(x, list):
                return [clean(i) for i in x]
            return num(x) if isinstance(x, float) else x

        return {
            "decision_id": self.decision_id,
            "time": dt.datetime.fromtimestamp(self.time, dt.timezone.utc).isoformat(),
            "timestamp": self.time,
            "agent_id": self.agent_id,
            "episode_id": self.episode_id,
            "step": self.step,
            "verdict": self.verdict,
            "shadow_verdict": self.shadow_verdict or None,
            "rule": self.rule,
            "fallback": self.fallback,
            "config_version": self.config_version,
            "escalation_id": self.escalation_id,
            "reasons": self.reasons,
            "signals": [
                {"name": n, "value": num(v), "threshold": num(t), "tripped": tr}
                for n, v, t, tr in self.signals
            ],
            "labels": self.labels,
            "errors": self.errors,
            "observation": clean(arr(self.observation)),
            "proposed_action": clean(arr(self.proposed_action)),
            "action": clean(arr(self.action)),
        }


@dataclass
class AuditQuery:
    """Filters for reading the log; ``None`` means any."""

    agent_id: str | None = None
    episode_id: str | None = None
    verdict: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int | None = None
    newest_first: bool = False
