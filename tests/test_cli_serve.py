"""`interlock serve` as a user runs it: a subprocess, a real port, SIGTERM to stop."""

import re
import signal
import subprocess
import sys
import time

import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interlock import GuardClient
from interlock.cli import build_parser


def test_serve_subprocess_answers_and_stops_on_sigterm(tmp_path):
    cfg = tmp_path / "interlock.yaml"
    cfg.write_text("""
agents:
  - id: cartpole
    observation: {shape: [4]}
    action: {type: discrete, n: 2}
""")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "interlock.cli",
            "serve",
            "--config",
            str(cfg),
            "--port",
            "0",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        target = f"127.0.0.1:{match.group(1)}"
        with GuardClient(target, agent_id="cartpole") as client:
            assert client.check(np.zeros(4, np.float32), 1).allowed
            health = health_pb2_grpc.HealthStub(client.channel)
            status = health.Check(health_pb2.HealthCheckRequest()).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "shutting down" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_bad_config_exits_with_message(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("agents:\n  - id: a\n    observation: {shape: [2]}\n    action: {type: box, shape: [1]}\n")
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "interlock.cli", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and time.time() - start < 60
    assert "agents[0].action.box.low: Field required" in out.stderr


def test_help_explains_every_command(capsys):
    parser = build_parser()
    help_text = parser.format_help()
    for cmd in ("serve", "config", "demo"):
        assert cmd in help_text
    assert "ALLOW" in help_text
