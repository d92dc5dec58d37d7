"""Hot reload: on file change and SIGHUP, validated off the request path, atomic, bad configs rejected."""

from __future__ import annotations

import logging
import signal
import threading
import time

import grpc
import numpy as np

from interlock.config import load_config
from interlock.server.background import background_server
from interlock.tensors import to_numpy
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.fixtures import box_agent, cartpole_balancer, discrete_agent
from tests.support.ops import TILTED, ServerProcess, metric_value, req, write_config

FAST = {"reload": {"poll_seconds": 0.05}}


def wait_for_version(stub, version: str, timeout: float = 10.0, request=None) -> pb.Decision:
    deadline = time.monotonic() + timeout
    while True:
        d = stub.Check(request or req())
        if d.config_version == version or time.monotonic() > deadline:
            assert d.config_version == version, f"still serving {d.config_version}"
            return d
        time.sleep(0.02)


def onnx_agent(tmp_path):
    """The cartpole agent whose tilted rule substitutes the ONNX backup policy's action."""
    cartpole_balancer(tmp_path / "backup.onnx")
    agent = discrete_agent()
    agent["fallbacks"]["backup"] = {"kind": "onnx_policy", "model": "backup.onnx", "output": "logits"}
    agent["policy"]["rules"][1]["fallback"] = "backup"
    return agent


def test_file_change_reloads_atomically_and_bad_configs_are_rejected(tmp_path, caplog):
    path = write_config(
        tmp_path / "interlock.yaml", [onnx_agent(tmp_path), box_agent()], version="v1", **FAST
    )
    with background_server(load_config(path)) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.GuardStub(ch)
        assert stub.Check(req(TILTED)).config_version == "v1"

        # A valid change: the tilted rule now halts.
        agent = onnx_agent(tmp_path)
        agent["policy"]["rules"][1] = {
            "name": "tilted",
            "when": "tripped.limits.pole_upright",
            "verdict": "halt",
        }
        write_config(path, [agent, box_agent()], version="v2", **FAST)
        d = wait_for_version(stub, "v2", request=req(TILTED))
        assert d.verdict == pb.VERDICT_HALT
        assert metric_value(srv, "interlock_config_reloads_total", result="success") == 1
        assert metric_value(srv, "interlock_config_info", version="v2") == 1

        # Invalid YAML, then a rule naming a signal nobody produces: both rejected, v2 keeps serving.
        caplog.set_level(logging.ERROR, logger="interlock.server.reload")
        path.write_text("agents: [unclosed")
        bad = onnx_agent(tmp_path)
        bad["policy"]["rules"][0]["when"] = "tripped.nobody.nothing"
        for broken in (None, [bad, box_agent()]):
            failures = metric_value(srv, "interlock_config_reloads_total", result="failure")
            if broken is not None:
                write_config(path, broken, version="v3", **FAST)
            deadline = time.monotonic() + 10
            while metric_value(srv, "interlock_config_reloads_total", result="failure") == failures:
                assert time.monotonic() < deadline, "the bad config was not noticed"
                time.sleep(0.02)
            assert stub.Check(req(TILTED)).config_version == "v2"
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "rejected; still serving version v2" in messages
        assert "not valid YAML" in messages and "reads a signal no monitor produces" in messages

        # A corrupt model at reload: rejected, naming the file; the old session keeps answering.
        write_config(path, [onnx_agent(tmp_path), box_agent()], version="v4", **FAST)
        wait_for_version(stub, "v4")
        failures = metric_value(srv, "interlock_config_reloads_total", result="failure")
        (tmp_path / "backup.onnx").write_bytes(b"\x08\x07this is not a protobuf model" * 10)
        deadline = time.monotonic() + 10
        while metric_value(srv, "interlock_config_reloads_total", result="failure") == failures:
            assert time.monotonic() < deadline, "the corrupt model was not noticed"
            time.sleep(0.02)
        assert "backup.onnx" in caplog.records[-1].getMessage()
        d = stub.Check(req(TILTED, action=0))
        assert d.config_version == "v4" and d.verdict == pb.VERDICT_SUBSTITUTE and d.fallback == "backup"
        assert int(to_numpy(d.action)) == 1  # the balancer pushes right: the old model still runs


def test_sighup_reloads_a_running_server(tmp_path):
    path = write_config(tmp_path / "interlock.yaml", version="v1", reload={"watch": False})
    with ServerProcess(path) as server, grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.GuardStub(ch)
        assert stub.Check(req()).config_version == "v1"
        write_config(path, version="v2", reload={"watch": False})
        time.sleep(0.3)
        assert stub.Check(req()).config_version == "v1"  # no watching: nothing happens by itself
        server.signal(signal.SIGHUP)
        wait_for_version(stub, "v2")
        assert server.stop() == 0
        out = server.output()
        # A successful reload is news, not a problem: INFO (serve logs INFO by default).
        assert "INFO interlock.server.reload: config reloaded (SIGHUP): version v1 -> v2" in out
        assert "metrics off" in out and "None" not in out  # metrics_port: null, said so (was ":None")


def test_reload_under_load_has_no_errors_and_only_live_versions(tmp_path):
    path = write_config(tmp_path / "interlock.yaml", version="v0", **FAST)
    reloads = 15
    written = {"v0"}
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    with background_server(load_config(path)) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.GuardStub(ch)

        def load(k: int) -> None:
            obs = np.array([0, 0, 0.15 * (k % 2), 0], np.float32)
            try:
                while not stop.is_set():
                    seen.extend(d.config_version for d in stub.CheckStream(iter([req(obs)] * 20)))
                    seen.append(stub.Check(req(obs)).config_version)
            except BaseException as e:
                errors.append(e)

        workers = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for w in workers:
            w.start()
        for i in range(1, reloads + 1):
            written.add(f"v{i}")
            write_config(path, version=f"v{i}", **FAST)
            wait_for_version(stub, f"v{i}")
        stop.set()
        for w in workers:
            w.join()
        assert metric_value(srv, "interlock_config_reloads_total", result="success") == reloads
    assert errors == []
    print(f"\nreload under load: {len(seen)} decisions across {reloads} reloads, {len(errors)} errors")
    assert len(seen) > 500
    assert set(seen) <= written and f"v{reloads}" in seen


def test_a_change_made_while_a_reload_runs_is_reloaded_too(tmp_path, monkeypatch):
    """The reload reads v2; v3 is written before it finishes. Before the fix the watcher took v3's file
    as already loaded (it fingerprinted the files after loading) and served v2 for good."""
    import interlock.server.reload as reload_module

    path = write_config(tmp_path / "interlock.yaml", [discrete_agent()], version="v1", **FAST)
    real_load = reload_module.load_config
    raced = threading.Event()

    def load_then_change(p):
        loaded = real_load(p)
        if loaded.version == "v2" and not raced.is_set():
            raced.set()
            time.sleep(0.01)  # v3 gets a later mtime than the v2 file just read
            write_config(path, [discrete_agent()], version="v3", **FAST)
        return loaded

    monkeypatch.setattr(reload_module, "load_config", load_then_change)
    with background_server(load_config(path)) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.GuardStub(ch)
        assert stub.Check(req()).config_version == "v1"
        write_config(path, [discrete_agent()], version="v2", **FAST)
        wait_for_version(stub, "v3", timeout=15.0)
        assert raced.is_set()
