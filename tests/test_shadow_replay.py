"""Shadow mode (answer ALLOW, record the would-be verdict) and `interlock replay`."""

from __future__ import annotations

import json

import grpc
import numpy as np

from interlock.audit import AuditQuery, open_backend
from interlock.cli import main
from interlock.engine import Guard
from interlock.server.background import background_server
from interlock.tensors import to_numpy
from interlock.types import CheckInput, Verdict
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.fixtures import box_agent, discrete_agent, loaded
from tests.support.ops import TILTED, UPRIGHT, metric_value, req, write_config


def test_shadow_mode_answers_allow_and_keeps_the_would_be_verdict(tmp_path):
    db = tmp_path / "audit.db"
    cfg = loaded([discrete_agent(shadow=True)], base_dir=tmp_path, server={"audit": {"path": str(db)}})
    with background_server(cfg) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.GuardStub(ch)
        d = stub.Check(req(TILTED, action=1))
        plain = stub.Check(req(UPRIGHT, action=1))
        shadowed = metric_value(
            srv,
            "interlock_shadow_decisions_total",
            agent="cartpole",
            would_verdict="substitute",
            rule="tilted",
        )
    assert d.verdict == pb.VERDICT_ALLOW and int(to_numpy(d.action)) == 1 and d.fallback == ""
    assert d.reasons[0].startswith("shadow mode: would have answered SUBSTITUTE (rule 'tilted')")
    would = {s.name: s for s in d.signals}["shadow.would_verdict"]
    assert would.value == pb.VERDICT_SUBSTITUTE and would.tripped
    assert {s.name: s for s in plain.signals}["shadow.would_verdict"].tripped is False
    assert shadowed == 1
    b = open_backend(str(db))
    b.open()
    [rec] = list(b.query(AuditQuery(verdict="substitute")))  # found by its would-be verdict
    b.close()
    assert (rec.decision_id, rec.verdict, rec.shadow_verdict, rec.rule) == (
        d.decision_id,
        "allow",
        "substitute",
        "tilted",
    )


def test_shadow_mode_still_fails_closed_on_internal_errors(tmp_path):
    # A rule that cannot be evaluated (obs[9] on a 4-vector) means the action was not checked.
    agent = discrete_agent(
        shadow=True,
        fail_safe="noop",
        policy={"rules": [{"name": "broken", "when": "obs[9] > 0.0", "verdict": "halt"}]},
    )
    guard = Guard(loaded([agent], base_dir=tmp_path)).load()
    [d] = guard.check([CheckInput("cartpole", UPRIGHT, np.int64(1))])
    assert d.verdict is Verdict.SUBSTITUTE and d.shadow_verdict is None and "policy" in d.errors


def _record_traffic(tmp_path, db) -> list[pb.Decision]:
    """Recorded traffic under the old config: all decisions, some tilted, some upright."""
    cfg = loaded(
        [discrete_agent(), box_agent()],
        base_dir=tmp_path,
        server={"audit": {"path": str(db), "record": "all"}},
    )
    angles = np.linspace(-0.2, 0.2, 41, dtype=np.float32)
    with background_server(cfg) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.GuardStub(ch)
        return [stub.Check(req(np.array([0, 0, a, 0], np.float32), step=i)) for i, a in enumerate(angles)]


def test_replay_reports_what_a_new_config_would_change(tmp_path, capsys):
    db = tmp_path / "audit.db"
    old = _record_traffic(tmp_path, db)
    old_sub = sum(d.verdict == pb.VERDICT_SUBSTITUTE for d in old)
    # The new config is stricter: |angle| < 0.05 instead of 0.1, and it halts instead of substituting.
    strict = discrete_agent()
    strict["monitors"][1]["constraints"]["pole_upright"] = "math.abs(obs[2]) < 0.05"
    strict["policy"]["rules"][1] = {
        "name": "tilted",
        "when": "tripped.limits.pole_upright",
        "verdict": "halt",
    }
    new = write_config(tmp_path / "new.yaml", [strict, box_agent()], version="v2")

    assert main(["replay", "--config", str(new), "--from", str(db), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    angles = np.linspace(-0.2, 0.2, 41, dtype=np.float32)
    new_halt = int((np.abs(angles) >= 0.05).sum())
    assert report["total"] == 41
    assert report["new_verdicts"] == {"halt": new_halt, "allow": 41 - new_halt}
    transitions = {(t["old"], t["new"]): t["count"] for t in report["transitions"]}
    assert transitions[("substitute", "halt")] == old_sub
    assert transitions[("allow", "halt")] == new_halt - old_sub
    assert report["changed"] == new_halt and len(report["examples"]) == 10
    assert report["new_rules"]["tilted"] == new_halt

    # The human-readable report, with the progress bar on stderr.
    assert main(["replay", "--config", str(new), "--from", str(db), "--examples", "2"]) == 0
    out = capsys.readouterr()
    assert f"replayed 41 decision(s); {new_halt} would change" in out.out
    assert "substitute -> halt" in out.out and "examples of changes:" in out.out
    assert "41/41" in out.err


def test_replay_from_npz_and_unknown_agents(tmp_path, capsys):
    obs = np.stack([UPRIGHT, TILTED, TILTED])
    npz = tmp_path / "traffic.npz"
    np.savez(
        npz,
        observations=obs,
        actions=np.array([1, 1, 1]),
        agent_ids=np.array(["cartpole", "cartpole", "ghost"]),
        verdicts=np.array(["allow", "allow", "allow"]),
    )
    cfg = write_config(tmp_path / "c.yaml")
    assert main(["replay", "--config", str(cfg), "--from", str(npz), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    transitions = {(t["old"], t["new"]): t["count"] for t in report["transitions"]}
    assert transitions == {("allow", "allow"): 1, ("allow", "substitute"): 1, ("allow", "rejected"): 1}
    assert any("matches no agent" in r for e in report["examples"] for r in e["reasons"])
