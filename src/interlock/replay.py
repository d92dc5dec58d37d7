"""Replay recorded traffic through a (new) config and report what would change.

Sources: an audit log (SQLite file or PostgreSQL DSN) or an ``.npz`` file with
``observations [N, *obs_shape]``, ``actions [N, *action_shape]`` and
``agent_ids [N]`` (or one ``agent_id``); optional ``verdicts [N]``, ``rules [N]``,
``episode_ids [N]``, ``steps [N]``.

Verdicts are compared as the policy reached them: for shadow-mode records and
configs the would-be verdict counts, not the ALLOW that was answered.

Example:
    >>> report = replay(Guard(load_config("new.yaml")).load(), read_npz("traffic.npz"))  # doctest: +SKIP
    >>> report.changed, report.transitions                                              # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interlock.engine import Guard
from interlock.errors import ConfigError, InterlockError
from interlock.types import CheckInput, Decision


@dataclass
class ReplayItem:
    """One recorded request and what was decided then (``old_verdict`` empty when unknown)."""

    input: CheckInput
    old_verdict: str = ""
    old_rule: str = ""
    decision_id: str = ""


@dataclass
class ReplayReport:
    """What the new config decides for the recorded traffic, against what was recorded."""

    total: int = 0
    changed: int = 0
    #: (old verdict, new verdict) -> count; "rejected" when the new config refuses the request.
    transitions: Counter = field(default_factory=Counter)
    old_rules: Counter = field(default_factory=Counter)
    new_rules: Counter = field(default_factory=Counter)
    new_verdicts: Counter = field(default_factory=Counter)
    examples: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "total": self.total,
            "changed": self.changed,
            "transitions": [{"old": o, "new": n, "count": c} for (o, n), c in self.transitions.most_common()],
            "new_verdicts": dict(self.new_verdicts),
            "old_rules": dict(self.old_rules),
            "new_rules": dict(self.new_rules),
            "examples": self.examples,
        }

    def format(self) -> str:
        lines = [f"replayed {self.total} decision(s); {self.changed} would change"]
        if self.transitions:
            lines.append("\nverdict transitions (old -> new):")
            for (o, n), c in sorted(self.transitions.items(), key=lambda kv: -kv[1]):
                mark = "  " if o == n else "* "
                lines.append(f"  {mark}{o or '?':>10} -> {n:<10} {c:>8}")
        rules = sorted(set(self.old_rules) | set(self.new_rules))
        if rules:
            lines.append("\nrules fired (old / new):")
            for r in rules:
                lines.append(f"  {r or '(default)':<24} {self.old_rules[r]:>8} / {self.new_rules[r]:<8}")
        if self.examples:
            lines.append("\nexamples of changes:")
            for e in self.examples:
                lines.append(
                    f"  {e['decision_id'] or '-'} agent={e['agent_id']} step={e['step']}: "
                    f"{e['old_verdict']} ({e['old_rule'] or 'default'}) -> {e['new_verdict']} "
                    f"({e['new_rule'] or 'default'}): {'; '.join(e['reasons'])[:160]}"
                )
        return "\n".join(lines)


def read_audit(spec: str, query=None) -> Iterator[ReplayItem]:
    """Items from an audit log (SQLite path or PostgreSQL DSN)."""
    from interlock.audit import AuditQuery, open_backend

    backend = open_backend(spec)
    backend.open()
    try:
        for r in backend.query(query or AuditQuery()):
            yield ReplayItem(
                CheckInput(r.agent_id, r.observation, r.proposed_action, r.episode_id, r.step, r.labels),
                r.effective_verdict,
                r.rule,
                r.decision_id,
            )
    finally:
        backend.close()


def read_npz(path: str | Path) -> list[ReplayItem]:
    """Items from an ``.npz`` file (see the module docstring for its arrays)."""
    data = np.load(path, allow_pickle=False)
    for key in ("observations", "actions"):
        if key not in data:
            raise ConfigError(f"{path}: has no '{key}' array (found: {', '.join(data.files)})")
    obs, acts = data["observations"], data["actions"]
    n = len(obs)
    if len(acts) != n:
        raise ConfigError(f"{path}: {n} observations but {len(acts)} actions")
    if "agent_ids" in data:
        agents = [str(a) for a in data["agent_ids"]]
    elif "agent_id" in data:
        agents = [str(data["agent_id"])] * n
    else:
        raise ConfigError(f"{path}: needs 'agent_ids' [N] or one 'agent_id'")

    def col(name: str, default):
        return [v.item() if hasattr(v, "item") else v for v in data[name]] if name in data else [default] * n

    verdicts, rules = col("verdicts", ""), col("rules", "")
    episodes, steps = col("episode_ids", ""), col("steps", 0)
    return [
        ReplayItem(
            CheckInput(agents[i], obs[i], acts[i], str(episodes[i]), int(steps[i])),
            str(verdicts[i]).lower().removeprefix("verdict_"),
            str(rules[i]),
        )
        for i in range(n)
    ]


def read_source(spec: str) -> Iterable[ReplayItem]:
    if spec.endswith(".npz"):
        return read_npz(spec)
    if not (spec.startswith(("postgresql://", "postgres://")) or Path(spec).is_file()):
        raise ConfigError(f"--from {spec}: no such file (give an audit .db, an .npz or a postgresql:// DSN)")
    return read_audit(spec)


def _effective(d: Decision) -> str:
    return (d.shadow_verdict or d.verdict).label


def replay(
    guard: Guard, items: Iterable[ReplayItem], batch: int = 256, examples: int = 10, progress=None
) -> ReplayReport:
    """Decide every item with ``guard``, in batches, and compare with the recorded verdicts.

    Args:
        guard: The loaded engine of the new config.
        items: Recorded requests.
        batch: Requests decided together.
        examples: How many changed decisions to keep as examples.
        progress: Optional callable(n) told how many items were done (a tqdm's ``update``).
    """
    report = ReplayReport()
    chunk: list[ReplayItem] = []

    def flush() -> None:
        valid: list[ReplayItem] = []
        for it in chunk:
            try:
                guard.validate([it.input])
                valid.append(it)
            except InterlockError as e:
                _count(report, it, "rejected", "", [e.message], examples)
        if valid:
            for it, d in zip(valid, guard.check([v.input for v in valid]), strict=True):
                _count(report, it, _effective(d), d.rule, d.reasons, examples)
        if progress is not None:
            progress(len(chunk))
        chunk.clear()

    # An episode's steps are decided one batch after another, as they were served: a row must see its
    # episode's previous decision (the executed action a transition monitor predicts from, the rule a
    # hold_while keeps), which a row of the same batch does not yet have.
    in_chunk: set[tuple[str, str]] = set()
    for it in items:
        key = (it.input.agent_id, it.input.episode_id)
        if it.input.episode_id and key in in_chunk:
            flush()
            in_chunk.clear()
        chunk.append(it)
        if it.input.episode_id:
            in_chunk.add(key)
        if len(chunk) >= batch:
            flush()
            in_chunk.clear()
    if chunk:
        flush()
    return report


def _count(
    report: ReplayReport, it: ReplayItem, new: str, rule: str, reasons: list[str], examples: int
) -> None:
    report.total += 1
    report.transitions[(it.old_verdict, new)] += 1
    report.new_verdicts[new] += 1
    report.old_rules[it.old_rule] += 1
    report.new_rules[rule] += 1
    if it.old_verdict and (it.old_verdict != new or it.old_rule != rule):
        report.changed += 1
        if len(report.examples) < examples:
            report.examples.append(
                {
                    "decision_id": it.decision_id,
                    "agent_id": it.input.agent_id,
                    "episode_id": it.input.episode_id,
                    "step": it.input.step,
                    "old_verdict": it.old_verdict,
                    "old_rule": it.old_rule,
                    "new_verdict": new,
                    "new_rule": rule,
                    "reasons": list(reasons),
                }
            )
