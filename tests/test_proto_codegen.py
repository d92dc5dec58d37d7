"""The committed generated code must match the .proto (regenerate with scripts/gen_proto.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_fresh(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*"))
    assert fresh, "protoc generated nothing"
    for rel in fresh:
        committed = ROOT / "src" / rel
        assert committed.exists(), f"{rel} is not committed; run: python scripts/gen_proto.py"
        assert committed.read_text() == (tmp_path / rel).read_text(), (
            f"src/{rel} is stale against proto/; run: python scripts/gen_proto.py"
        )


def test_wire_contract_names_and_numbers():
    from interlock.v1 import interlock_pb2 as pb

    req = pb.CheckRequest.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in req.items()} == {
        "agent_id": 1,
        "episode_id": 2,
        "step": 3,
        "observation": 4,
        "action": 5,
        "labels": 6,
    }
    dec = pb.Decision.DESCRIPTOR.fields_by_name
    for name, number in {
        "decision_id": 1,
        "verdict": 2,
        "action": 3,
        "signals": 4,
        "reasons": 5,
        "fallback": 6,
        "escalation_id": 7,
        "config_version": 8,
        "rule": 9,
        "error": 10,
    }.items():
        assert dec[name].number == number
    assert pb.DataType.Value("DATA_TYPE_UINT8") == 6 and pb.Verdict.Value("VERDICT_HALT") == 4
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["Guard"].methods}
    assert methods == {"Check", "CheckBatch", "CheckColumns", "CheckStream"}
    # Issue 13 pins CheckColumns' first fields; verdicts go packed.
    creq = pb.CheckColumnsRequest.DESCRIPTOR.fields_by_name
    for name, number in {
        "agent_id": 1,
        "observations": 2,
        "actions": 3,
        "episode_ids": 4,
        "steps": 5,
    }.items():
        assert creq[name].number == number
    cresp = pb.CheckColumnsResponse.DESCRIPTOR.fields_by_name
    for name, number in {"verdicts": 1, "actions": 2, "config_version": 3}.items():
        assert cresp[name].number == number
    assert cresp["verdicts"].is_repeated and cresp["verdicts"].is_packed
