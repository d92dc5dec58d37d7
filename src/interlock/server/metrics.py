"""Prometheus metrics of one Interlock server.

Names follow the Prometheus conventions: ``interlock_<what>_<unit>``, counters
end in ``_total``, durations in seconds. Each server owns its registry so that
tests (and several servers in one process) do not collide. The ``agent`` label
is the *configured* agent id (a glob stays a glob), which bounds cardinality.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from interlock.types import Decision, Verdict

_LABEL = {int(v): v.label for v in Verdict}


def observe_many(histogram: Histogram, value: float, count: int) -> None:
    """``histogram.observe(value)`` ``count`` times, as one update of one bucket and the sum.

    prometheus_client has no bulk observe; this writes the same bucket and sum values through
    its internals (present in every release since 0.4), and falls back to the loop otherwise.
    """
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    if buckets is None or bounds is None or total is None or count < 2:
        for _ in range(count):
            histogram.observe(value)
        return
    total.inc(value * count)
    for i, bound in enumerate(bounds):
        if value <= bound:
            buckets[i].inc(count)
            break


#: Decision latency buckets: 50 us .. 5 s (escalations can block for seconds).
LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

#: Escalation wait buckets: 100 ms .. 1 h (people answer in seconds to minutes).
ESCALATION_WAIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """All of Interlock's metrics, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "interlock_decisions_total",
            "Decisions made, by agent, verdict and the rule that fired.",
            ["agent", "verdict", "rule"],
            registry=r,
        )
        self.decision_duration = Histogram(
            "interlock_decision_duration_seconds",
            "Time from receiving a request to having its decision (per request; batch calls count each).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "interlock_requests_rejected_total",
            "Requests refused before a decision, by reason.",
            ["reason"],
            registry=r,
        )
        self.internal_errors = Counter(
            "interlock_internal_errors_total",
            "Monitor, policy or fallback failures that were failed closed, by agent and stage.",
            ["agent", "stage"],
            registry=r,
        )
        self.escalations = Counter(
            "interlock_escalations_total",
            "Escalations by agent and outcome: approved, rejected, substituted, expired, or dropped "
            "(not opened: flood limit reached or the store failed; the fail-safe applied).",
            ["agent", "outcome"],
            registry=r,
        )
        self.escalations_pending = Gauge(
            "interlock_escalations_pending",
            "Escalations waiting for an operator.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.escalation_wait = Histogram(
            "interlock_escalation_wait_seconds",
            "Time from opening an escalation to its answer or expiry.",
            buckets=ESCALATION_WAIT_BUCKETS,
            registry=r,
        )
        self.config_info = Gauge(
            "interlock_config_info",
            "The config version being served (value 1).",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",  # several workers: see interlock.server.workers
        )

        # Operations (interlock.audit, reload, limits).
        self.config_reloads = Counter(
            "interlock_config_reloads_total",
            "Config reloads by result: success, or failure (the old config kept serving).",
            ["result"],
            registry=r,
        )
        self.shadow_decisions = Counter(
            "interlock_shadow_decisions_total",
            "Shadow-mode decisions answered ALLOW, by agent, the verdict that would have applied and rule.",
            ["agent", "would_verdict", "rule"],
            registry=r,
        )
        self.audit_records = Counter(
            "interlock_audit_records_total", "Decisions committed to the audit log.", registry=r
        )
        self.audit_errors = Counter(
            "interlock_audit_errors_total",
            "Audit writes that failed, by error kind (each failed call is counted once per record).",
            ["kind"],
            registry=r,
        )
        self.audit_commit = Histogram(
            "interlock_audit_commit_duration_seconds",
            "Time of one group-commit transaction.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.audit_batch = Histogram(
            "interlock_audit_batch_records",
            "Records per group-commit transaction.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
            registry=r,
        )
        self.inflight = Gauge(
            "interlock_rpcs_in_flight",
            "Calls being served now (health excluded).",
            registry=r,
            multiprocess_mode="livesum",
        )
        #: Bound children of ``decisions`` by (agent, verdict, rule): ``labels()`` validates and
        #: locks on every call; a label set is bound once (the agent label is the configured id and
        #: rules come from the config, so the set stays small; capped all the same).
        self._decision_children: dict[tuple[str, str, str], Any] = {}

    def _decisions_child(self, agent: str, verdict: str, rule: str):
        key = (agent, verdict, rule)
        child = self._decision_children.get(key)
        if child is None:
            child = self.decisions.labels(agent=agent, verdict=verdict, rule=rule)
            if len(self._decision_children) < 4096:
                self._decision_children[key] = child
        return child

    def set_config_version(self, version: str) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # workers: labels cannot be removed, zero them
            for old in getattr(self, "_versions", ()):
                self.config_info.labels(version=old).set(0)
            self._versions = {version}
        else:
            self.config_info.clear()
        self.config_info.labels(version=version).set(1)

    def record(self, decisions: Iterable[Decision], agent_labels: Iterable[str], seconds: float) -> None:
        """Count decisions; ``seconds`` is the latency each of them saw."""
        if isinstance(decisions, list) and len(decisions) == 1 and isinstance(agent_labels, list):
            # One decision (a unary Check): the same counts without the per-batch dict.
            d, agent = decisions[0], agent_labels[0]
            for stage in d.errors:
                self.internal_errors.labels(agent=agent, stage=stage).inc()
            would = d.shadow_verdict
            if would is not None and would.label != "allow":
                self.shadow_decisions.labels(agent=agent, would_verdict=would.label, rule=d.rule).inc()
            self._decisions_child(agent, d.verdict.label, d.rule).inc()
            self.decision_duration.observe(seconds)
            return
        counts: dict[tuple[str, str, str], int] = {}
        n = 0
        for d, agent in zip(decisions, agent_labels, strict=True):
            key = (agent, d.verdict.label, d.rule)
            counts[key] = counts.get(key, 0) + 1
            n += 1
            for stage in d.errors:
                self.internal_errors.labels(agent=agent, stage=stage).inc()
            would = d.shadow_verdict
            if would is not None and would.label != "allow":
                self.shadow_decisions.labels(agent=agent, would_verdict=would.label, rule=d.rule).inc()
        for (agent, verdict, rule), k in counts.items():  # one update per label set, not per decision
            self._decisions_child(agent, verdict, rule).inc(k)
        observe_many(self.decision_duration, seconds, n)

    def record_columns(
        self,
        agent: str,
        verdicts: np.ndarray,
        rules: np.ndarray,
        rule_names: list[str],
        errors: dict[int, list[str]],
        shadow: np.ndarray | None,
        seconds: float,
    ) -> None:
        """Count ``n`` decisions of one agent given as columns (what :meth:`record` counts row by row).

        Args:
            agent: The configured agent id.
            verdicts: ``[n]`` Verdict values of the decided rows.
            rules: ``[n]`` indices into ``rule_names``.
            errors: row -> failed stages.
            shadow: ``[n]`` would-be verdicts in shadow mode (0: none), or None.
            seconds: The latency each decision saw.
        """
        n = len(verdicts)
        if n == 0:
            return
        width = len(rule_names)
        keys, counts = np.unique(verdicts.astype(np.int64) * width + rules, return_counts=True)
        for key, k in zip(keys.tolist(), counts.tolist(), strict=True):
            verdict, rule = divmod(key, width)
            self._decisions_child(agent, _LABEL[verdict], rule_names[rule]).inc(k)
        for stages in errors.values():
            for stage in stages:
                self.internal_errors.labels(agent=agent, stage=stage).inc()
        if shadow is not None:
            shadowed = (shadow != 0) & (shadow != int(Verdict.ALLOW))
            if shadowed.any():
                keys, counts = np.unique(
                    shadow[shadowed].astype(np.int64) * width + rules[shadowed], return_counts=True
                )
                for key, k in zip(keys.tolist(), counts.tolist(), strict=True):
                    would, rule = divmod(key, width)
                    self.shadow_decisions.labels(
                        agent=agent, would_verdict=_LABEL[would], rule=rule_names[rule]
                    ).inc(k)
        observe_many(self.decision_duration, seconds, n)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason=reason).inc()

    def serve_http(self, port: int, addr: str = "0.0.0.0") -> int:
        """Expose ``/metrics`` on ``port`` (0 picks a free one); returns the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._http = server
        return server.server_address[1]

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.shutdown()
            http.server_close()
