"""OpenTelemetry traces: one span per decision, built after the answer from recorded stage times.

Tracing is **off** unless ``OTEL_TRACES_EXPORTER`` names an exporter (``console``, ``otlp``,
``otlp_proto_http``...); unset or ``none`` means off. (The OpenTelemetry default is ``otlp``;
Interlock defaults to off so that a server without a collector does not retry exports forever.)
When it is on, everything else comes from the standard variables, read by the SDK itself:
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (default service name ``interlock``),
``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (default ``parentbased_always_on``),
``OTEL_EXPORTER_OTLP_*`` (endpoint, protocol, headers), ``OTEL_BSP_*`` (batching of exports)
and ``OTEL_PROPAGATORS`` (default ``tracecontext,baggage``). Needs ``pip install 'interlock[otel]'``;
without it, and with tracing off, nothing here imports OpenTelemetry.

Why after the fact: the engine decides whole batches (the micro-batcher mixes requests of
different callers), so it records cheap ``time_ns()`` stamps per stage into a
:class:`~interlock.stagetimes.StageTimes` and knows nothing of spans. Here each decision
gets its own span tree, the batch's stages **copied** under every decision span with
explicit start/end times and ``interlock.batch_size``: each decision's trace is then whole
on its own, whatever its parent and whichever decisions the sampler kept (a shared batch
span linked from the decisions would live in a trace of its own, sampled independently, so
a kept decision would often link to a dropped batch; and trace viewers show links poorly).

Spans (all children of the caller's ``traceparent`` when the request carried one):

* ``interlock.decision`` (kind SERVER): ``interlock.decision_id``, ``interlock.agent_id``,
  ``interlock.verdict``, ``interlock.rule``, ``interlock.config_version``,
  ``interlock.episode_id``, ``interlock.step``, and when set ``interlock.fallback``,
  ``interlock.escalation_id``, ``interlock.shadow_verdict``, ``interlock.errors``;
  status ERROR when a stage failed and the decision failed closed, or the call failed after deciding;
* children ``interlock.validate``, ``interlock.monitor <name>``, ``interlock.policy``,
  ``interlock.fallback <name>``, ``interlock.after_decide`` (monitors told the answered actions,
  when a monitor keeps episode state) (engine stages, shared by the batch), then
  ``interlock.escalation.wait`` (decisions that escalated) and ``interlock.audit.commit``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import Any

from interlock.errors import ConfigError
from interlock.types import Decision, Verdict

#: Exporter names that mean "tracing off".
_OFF = ("", "none")
DEFAULT_SERVICE_NAME = "interlock"


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``OTEL_TRACES_EXPORTER`` asks for traces (unset or ``none``: no)."""
    return environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower() not in _OFF


def from_env() -> DecisionTracer | None:
    """The tracer the ``OTEL_*`` environment asks for, or None when tracing is off.

    Raises:
        ConfigError: tracing is asked for but OpenTelemetry is not installed, or the
            exporter named in ``OTEL_TRACES_EXPORTER`` does not exist.
    """
    if not enabled():
        return None
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as e:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER is '{os.environ['OTEL_TRACES_EXPORTER']}' but OpenTelemetry is not "
            f"installed ({e}): pip install 'interlock[otel]', or unset OTEL_TRACES_EXPORTER"
        ) from None
    # The SDK's own reading of OTEL_TRACES_EXPORTER (a comma-separated list; "otlp" follows
    # OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL), as `opentelemetry-instrument` does. Private names:
    # pinned below 2 in pyproject, and tests/test_tracing.py exercises them.
    from opentelemetry.sdk._configuration import _get_exporter_names, _import_exporters

    try:
        exporters, _, _ = _import_exporters(_get_exporter_names("traces"), [], [])
    except RuntimeError as e:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER='{os.environ['OTEL_TRACES_EXPORTER']}': {e}. Use console, otlp "
            "(pip install 'interlock[otel]'), otlp_proto_http or none"
        ) from None
    # Sampler from OTEL_TRACES_SAMPLER[_ARG] (the TracerProvider reads them when given none).
    provider = TracerProvider(resource=_resource())
    for exporter in exporters.values():
        provider.add_span_processor(BatchSpanProcessor(exporter()))  # OTLP: reads OTEL_EXPORTER_OTLP_*
    return DecisionTracer(provider)


def _resource():
    """``Resource.create()`` (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), named interlock by default."""
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource

    from interlock import __version__

    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


class _MetadataGetter:
    """Reads a text-map carrier from gRPC metadata (``(key, value)`` pairs; binary values skipped)."""

    def get(self, carrier: Sequence[tuple[str, Any]], key: str) -> list[str] | None:
        found = [v for k, v in carrier if k == key and isinstance(v, str)]
        return found or None

    def keys(self, carrier: Sequence[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


class RequestTrace:
    """What the request path adds around the engine for one call: its start, escalation wait, audit."""

    __slots__ = ("_open", "parent", "stages", "start_ns")

    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self.start_ns = time_ns()
        #: ``(span name, start_ns, end_ns, decision ids or None for all, failed)``.
        self.stages: list[tuple[str, int, int, frozenset[str] | None, bool]] = []
        self._open: tuple[str, int, frozenset[str] | None] | None = None

    def begin(self, name: str, decision_ids: frozenset[str] | None = None) -> None:
        """Stage ``name`` starts now, for the given decisions (None: all of the call's)."""
        self._open = (name, time_ns(), decision_ids)

    def begin_escalation(self, decisions: Sequence[Decision]) -> None:
        """The escalation wait starts now, for the decisions that escalated."""
        self.begin(
            "interlock.escalation.wait",
            frozenset(d.decision_id for d in decisions if d.verdict is Verdict.ESCALATE),
        )

    def end(self, failed: bool = False) -> None:
        """The open stage ends now (a stage over no decision leaves no span)."""
        if self._open is not None:
            name, start, ids = self._open
            if ids is None or ids:
                self.stages.append((name, start, time_ns(), ids, failed))
            self._open = None


class DecisionTracer:
    """Turns decisions and their recorded stage times into spans.

    Args:
        provider: An OpenTelemetry SDK ``TracerProvider`` (from :func:`from_env`, or one a test
            builds with an in-memory exporter).
    """

    def __init__(self, provider: Any) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from interlock import __version__

        self.provider = provider
        self.tracer = provider.get_tracer("interlock", __version__)
        self._propagate = propagate
        self._in_context = trace.set_span_in_context
        self._server = SpanKind.SERVER
        self._status = Status
        self._error = StatusCode.ERROR

    def extract(self, metadata: Sequence[tuple[str, Any]] | None) -> Any:
        """The caller's context from gRPC metadata (W3C ``traceparent``; OTEL_PROPAGATORS decides)."""
        # _MetadataGetter has the Getter protocol's methods; subclassing it would import OpenTelemetry early.
        return self._propagate.extract(metadata or (), getter=_GETTER)  # type: ignore[arg-type]

    def start(self, parent: Any) -> RequestTrace:
        """Begin timing one call (``parent``: from :meth:`extract`, or None for a new trace)."""
        return RequestTrace(parent)

    def emit(
        self, trace: RequestTrace, decisions: Sequence[Decision], error: BaseException | None = None
    ) -> None:
        """One span tree per decision, ending now; ``error``: the call failed after deciding."""
        if error is not None:
            trace.end(failed=True)  # the stage that raised
        end = time_ns()
        for d in decisions:
            span = self.tracer.start_span(
                "interlock.decision", context=trace.parent, kind=self._server, start_time=trace.start_ns
            )
            if not span.is_recording():  # not sampled: no attributes, no children
                continue
            span.set_attributes(_attributes(d))
            context = self._in_context(span)
            times = d.stage_times
            if times is not None:
                shared = {"interlock.batch_size": times.batch_size}
                for name, start, stop in times.for_decision(d.decision_id):
                    kind, _, what = name.partition(":")
                    attributes = {**shared, f"interlock.{kind}": what} if what else shared
                    child = self.tracer.start_span(
                        f"interlock.{kind} {what}" if what else f"interlock.{kind}",
                        context=context,
                        start_time=start,
                        attributes=attributes,
                    )
                    child.end(end_time=stop)
            for name, start, stop, ids, failed in trace.stages:
                if ids is None or d.decision_id in ids:
                    child = self.tracer.start_span(
                        name,
                        context=context,
                        start_time=start,
                        attributes={"interlock.batch_size": len(decisions)},
                    )
                    if failed:
                        child.set_status(self._status(self._error))
                    child.end(end_time=stop)
            if error is not None:
                span.record_exception(error)
                span.set_status(self._status(self._error, f"{type(error).__name__}: {error}"))
            elif d.errors:
                span.set_status(self._status(self._error, "failed closed: " + ", ".join(d.errors)))
            span.end(end_time=end)

    def shutdown(self) -> None:
        """Export what is queued and stop the exporters (at server stop)."""
        self.provider.shutdown()


def _attributes(d: Decision) -> dict[str, Any]:
    out: dict[str, Any] = {
        "interlock.decision_id": d.decision_id,
        "interlock.agent_id": d.agent_id,
        "interlock.verdict": d.verdict.name,
        "interlock.rule": d.rule,
        "interlock.config_version": d.config_version,
        "interlock.episode_id": d.episode_id,
        "interlock.step": int(d.step),
    }
    if d.fallback:
        out["interlock.fallback"] = d.fallback
    if d.escalation_id:
        out["interlock.escalation_id"] = d.escalation_id
    if d.shadow_verdict is not None:
        out["interlock.shadow_verdict"] = d.shadow_verdict.name
    if d.errors:
        out["interlock.errors"] = list(d.errors)
    return out
