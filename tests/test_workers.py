"""``interlock serve --workers N``: several processes on one port, one /metrics for all."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import yaml

from interlock.client import make_request
from interlock.v1 import interlock_pb2 as pb
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.fixtures import discrete_agent


def _config(tmp_path) -> str:
    path = tmp_path / "interlock.yaml"
    cfg = {"version": "w-1", "server": {"port": 0, "metrics_port": 0}, "agents": [discrete_agent()]}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_serve_workers_share_the_port_sum_metrics_and_stop_cleanly(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "interlock.cli", "serve", "--config", _config(tmp_path), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "with 2 workers" in line, line + proc.stderr.read()
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        metrics_port = int(re.search(r"metrics \(all workers\) on :(\d+)", line).group(1))
        n = 0
        for i in range(8):  # one connection per channel: the kernel spreads them over the workers
            opts = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=opts) as ch:
                stub = pb_grpc.GuardStub(ch)
                for _ in range(5):
                    obs = np.array([0, 0, 0.3 if i % 2 else 0.0, 0], np.float32)
                    d = stub.Check(make_request("cartpole", obs, 1))
                    assert d.verdict == (pb.VERDICT_SUBSTITUTE if i % 2 else pb.VERDICT_ALLOW)
                    n += 1
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert _metric(text, "interlock_decisions_total") == n
        assert _metric(text, "interlock_decision_duration_seconds_count") == n
        assert 'interlock_config_info{version="w-1"} 1.0' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "shutting down" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            time.sleep(0.1)
