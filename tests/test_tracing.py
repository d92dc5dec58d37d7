"""OpenTelemetry traces: a span per decision with its stages, the caller's traceparent, the console exporter.

Real parts: a real gRPC server on loopback (in process with an in-memory exporter, and
``interlock serve`` as a subprocess with ``OTEL_TRACES_EXPORTER=console``), real clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from interlock import AsyncGuardClient, Guard, GuardClient, Verdict
from interlock.config import ConfigError
from interlock.server import tracing
from interlock.server.background import background_server
from interlock.stagetimes import StageTimes
from interlock.types import CheckInput
from tests.support.fixtures import discrete_agent, loaded

UPRIGHT = np.zeros(4, np.float32)
TILTED = np.array([0.0, 0.0, 0.5, 0.0], np.float32)  # trips limits.pole_upright


def _agent(**overrides):
    """The CartPole-like test agent; a tilted pole escalates (no operator channel: fail-safe at once)."""
    agent = discrete_agent(fail_safe="noop", **overrides)
    agent["policy"]["rules"][1].update(verdict="escalate")
    return agent


@pytest.fixture
def memory_tracer() -> Iterator[tuple[tracing.DecisionTracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracing.DecisionTracer(provider), exporter
    provider.shutdown()


def _decision_spans(spans) -> dict[str, object]:
    return {s.attributes["interlock.decision_id"]: s for s in spans if s.name == "interlock.decision"}


def _children(spans, parent) -> dict[str, object]:
    return {s.name: s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id}


def test_engine_records_stage_times_only_when_asked(tmp_path):
    guard = Guard(loaded([_agent()], base_dir=tmp_path)).load()
    items = [CheckInput("cartpole", UPRIGHT, np.int64(1)), CheckInput("cartpole", UPRIGHT, np.int64(5))]
    assert all(d.stage_times is None for d in guard.check(items))  # tracing off: nothing recorded

    times = StageTimes()
    allowed, invalid = guard.check(items, times=times)
    assert allowed.stage_times is invalid.stage_times is not None
    assert [n for n, _, _ in allowed.stage_times.for_decision(allowed.decision_id)] == [
        "validate",
        "monitor:action_space",
        "monitor:limits",  # a CEL monitor runs on rows with a valid action only
        "policy",
    ]
    # Only the row that took the fallback went through it; every stage has start <= end.
    stages = invalid.stage_times.for_decision(invalid.decision_id)
    assert [n for n, _, _ in stages] == ["validate", "monitor:action_space", "policy", "fallback:noop"]
    assert all(0 < start <= end for _, start, end in stages)
    assert invalid.verdict is Verdict.SUBSTITUTE and invalid.stage_times.batch_size == 2


def test_decision_spans_join_the_callers_trace_with_a_child_per_stage(tmp_path, memory_tracer):
    tracer, exporter = memory_tracer
    cfg = loaded([_agent()], base_dir=tmp_path, server={"audit": {"path": str(tmp_path / "a.db")}})
    caller = TracerProvider().get_tracer("agent")  # the agent's own tracer (not the global one)
    with background_server(cfg, tracer=tracer) as srv, GuardClient(f"127.0.0.1:{srv.port}", "cartpole") as c:
        with caller.start_as_current_span("agent.step") as step:
            allowed = c.check(UPRIGHT, 1, episode_id="ep-7", step=3)
            batch = c.check_batch(np.stack([UPRIGHT, TILTED]), [0, 1], steps=[4, 5])
        untraced = c.check(UPRIGHT, 0)  # no active span: a trace of its own
    spans = exporter.get_finished_spans()
    by_id = _decision_spans(spans)
    assert set(by_id) == {r.decision_id for r in [allowed, *batch, untraced]}

    span = by_id[allowed.decision_id]
    assert span.parent is not None and span.parent.is_remote
    assert span.parent.trace_id == step.get_span_context().trace_id
    assert span.parent.span_id == step.get_span_context().span_id
    assert dict(span.attributes) == {
        "interlock.decision_id": allowed.decision_id,
        "interlock.agent_id": "cartpole",
        "interlock.verdict": "ALLOW",
        "interlock.rule": "",
        "interlock.config_version": "test-1",
        "interlock.episode_id": "ep-7",
        "interlock.step": 3,
    }
    children = _children(spans, span)
    assert set(children) == {
        "interlock.validate",
        "interlock.monitor action_space",
        "interlock.monitor limits",
        "interlock.policy",
        "interlock.audit.commit",
    }
    assert children["interlock.monitor limits"].attributes["interlock.monitor"] == "limits"
    for child in children.values():  # inside the decision's span, in order of the request path
        assert span.start_time <= child.start_time <= child.end_time <= span.end_time
    assert children["interlock.policy"].start_time >= children["interlock.monitor limits"].end_time
    assert children["interlock.audit.commit"].start_time >= children["interlock.policy"].end_time

    escalated = by_id[batch[1].decision_id]
    assert escalated.parent.span_id == step.get_span_context().span_id
    assert escalated.attributes["interlock.rule"] == "tilted"
    assert escalated.attributes["interlock.verdict"] == batch[1].verdict.name  # the final verdict
    assert escalated.attributes["interlock.step"] == 5
    assert "interlock.escalation.wait" in _children(spans, escalated)
    assert "interlock.escalation.wait" not in _children(spans, by_id[batch[0].decision_id])
    assert _children(spans, escalated)["interlock.policy"].attributes["interlock.batch_size"] == 2

    assert by_id[untraced.decision_id].parent is None
    assert by_id[untraced.decision_id].context.trace_id != step.get_span_context().trace_id


async def test_micro_batched_callers_each_keep_their_own_trace(tmp_path, memory_tracer):
    """Concurrent Checks decided in one engine batch: each decision span is under its own caller."""
    tracer, exporter = memory_tracer
    cfg = loaded([_agent()], base_dir=tmp_path, server={"batching": {"max_batch": 8, "max_delay_ms": 50}})
    caller = TracerProvider().get_tracer("agent")
    with background_server(cfg, tracer=tracer) as srv:
        async with AsyncGuardClient(f"127.0.0.1:{srv.port}", "cartpole") as client:

            async def one(i: int):
                with caller.start_as_current_span(f"agent-{i}") as span:
                    result = await client.check(UPRIGHT, i % 2)
                return span.get_span_context().trace_id, result.decision_id

            calls = await asyncio.gather(*(one(i) for i in range(6)))
        batched = srv.service.batcher.requests - srv.service.batcher.batches
    spans = exporter.get_finished_spans()
    by_id = _decision_spans(spans)
    for trace_id, decision_id in calls:
        assert by_id[decision_id].context.trace_id == trace_id
        assert "interlock.policy" in _children(spans, by_id[decision_id])
    assert batched > 0  # some requests really shared an engine batch
    sizes = [s.attributes["interlock.batch_size"] for s in spans if s.name == "interlock.policy"]
    assert max(sizes) > 1


def test_sampled_out_decisions_leave_no_spans(tmp_path):
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    cfg = loaded([_agent()], base_dir=tmp_path)
    with background_server(cfg, tracer=tracing.DecisionTracer(provider)) as srv:
        assert GuardClient(f"127.0.0.1:{srv.port}", "cartpole").check(UPRIGHT, 1).allowed
    assert exporter.get_finished_spans() == ()


def test_tracing_is_off_unless_an_exporter_is_named(monkeypatch):
    for value in (None, "none", " NONE "):
        if value is None:
            monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
        else:
            monkeypatch.setenv("OTEL_TRACES_EXPORTER", value)
        assert tracing.from_env() is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin_json")
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER='zipkin_json'.*not found"):
        tracing.from_env()
    # otlp resolves to the OTLP exporter (the extra) and the sampler comes from the environment.
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.01")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "interlock-eu-1")
    tracer = tracing.from_env()
    try:
        assert "TraceIdRatioBased{0.01}" in tracer.provider.sampler.get_description()
        assert tracer.provider.resource.attributes["service.name"] == "interlock-eu-1"
        processors = tracer.provider._active_span_processor._span_processors
        assert [type(p.span_exporter).__name__ for p in processors] == ["OTLPSpanExporter"]
    finally:
        tracer.provider.shutdown()


def _printed_spans(text: str) -> list[dict]:
    """The JSON objects the console exporter printed, among the server's other lines."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while (at := text.find("{", at)) != -1:
        try:
            obj, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            at += 1
            continue
        if isinstance(obj, dict) and "context" in obj:
            spans.append(obj)
        at = end
    return spans


def test_console_exporter_prints_a_span_for_every_decision(tmp_path):
    """``interlock serve`` as an operator runs it, with OTEL_TRACES_EXPORTER=console."""
    cfg = tmp_path / "interlock.yaml"
    cfg.write_text(yaml.safe_dump({"server": {"audit": {"path": "audit.db"}}, "agents": [_agent()]}))
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "interlock-test"}
    env.pop("OTEL_TRACES_SAMPLER", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "interlock.cli", "serve", "--config", str(cfg), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        with GuardClient(f"127.0.0.1:{match.group(1)}", agent_id="cartpole") as client:
            results = [client.check(UPRIGHT, 1), client.check(TILTED, 1), client.check(UPRIGHT, 7)]
            results += client.check_batch(np.stack([UPRIGHT, TILTED, UPRIGHT]), [0, 1, 1])
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    spans = _printed_spans(out)
    decisions = {
        s["attributes"]["interlock.decision_id"]: s for s in spans if s["name"] == "interlock.decision"
    }
    assert set(decisions) == {r.decision_id for r in results}
    for r in results:
        span = decisions[r.decision_id]
        assert span["attributes"]["interlock.verdict"] == r.verdict.name
        assert span["attributes"]["interlock.config_version"] == r.config_version
        assert span["resource"]["attributes"]["service.name"] == "interlock-test"
        children = {s["name"] for s in spans if s["parent_id"] == span["context"]["span_id"]}
        assert {"interlock.validate", "interlock.policy", "interlock.audit.commit"} <= children
    assert decisions[results[2].decision_id]["attributes"]["interlock.fallback"] == "noop"


def test_without_opentelemetry_the_server_serves_and_asking_for_traces_says_how_to_fix(tmp_path):
    """The extra is optional: with OpenTelemetry unimportable the server runs (and never tries to load it)."""
    cfg = tmp_path / "interlock.yaml"
    cfg.write_text(yaml.safe_dump({"agents": [_agent()]}))
    probe = f"""
import sys
sys.modules["opentelemetry"] = None  # import opentelemetry... raises ImportError
import numpy as np
from interlock import GuardClient
from interlock.config import load_config
from interlock.errors import ConfigError
from interlock.server import tracing
from interlock.server.background import background_server
with background_server(load_config({str(cfg)!r})) as srv:
    assert GuardClient(f"127.0.0.1:{{srv.port}}", "cartpole").check(np.zeros(4, np.float32), 1).allowed
import os
os.environ["OTEL_TRACES_EXPORTER"] = "console"
try:
    tracing.from_env()
except ConfigError as e:
    print(e)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OTEL_TRACES_EXPORTER is 'console' but OpenTelemetry is not installed" in out.stdout
    assert "pip install 'interlock[otel]'" in out.stdout
