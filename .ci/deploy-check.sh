#!/usr/bin/env bash
# Run the Dockerfile's install steps (deploy/install.sh) in a fresh venv, then serve the Kubernetes
# ConfigMap's config from it on loopback and wait for gRPC health SERVING. Docker cannot run in CI,
# so this is how the image's contents are exercised.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
bash "$here/deploy/install.sh" "$work/venv"
"$work/venv/bin/python" - "$here/deploy/kubernetes/configmap.yaml" "$work/interlock.yaml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
cfg = yaml.safe_load(doc["data"]["interlock.yaml"])
cfg["server"].update(host="127.0.0.1", port=0, metrics_port=0)
cfg["server"]["audit"] = {"path": "audit.db"}  # PostgreSQL in the cluster; SQLite here
open(sys.argv[2], "w").write(yaml.safe_dump(cfg))
PY
"$work/venv/bin/interlock" config check "$work/interlock.yaml"
"$work/venv/bin/interlock" serve --config "$work/interlock.yaml" >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "serving" "$work/serve.log" && break; sleep 0.2; done
port="$(sed -n 's/.* on 127.0.0.1:\([0-9]*\);.*/\1/p' "$work/serve.log")"
"$work/venv/bin/python" - "$port" <<'PY'
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as ch:
    status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
assert status == health_pb2.HealthCheckResponse.SERVING, status
print("deploy-check: installed image contents serve and report SERVING")
PY
kill -TERM "$pid"; wait "$pid"
