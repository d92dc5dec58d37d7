"""Throughput of audited Check calls, side by side: no audit, group commit, one transaction per record.

Every request is a SUBSTITUTE (always recorded), sent by ``--concurrency``
asyncio callers over loopback to a real server. Prints decisions/s and the ratio
to the unaudited server. Usage::

    python benchmarks/audit_throughput.py --seconds 5 --concurrency 64
    INTERLOCK_TEST_POSTGRES_DSN=postgresql://... python benchmarks/audit_throughput.py   # adds PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interlock.client import make_request
from interlock.server.background import background_server
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.fixtures import discrete_agent, loaded

TILTED = np.array([0.0, 0.0, 0.15, 0.0], np.float32)


async def drive(port: int, seconds: float, concurrency: int) -> int:
    request = make_request("cartpole", TILTED, 1)
    done = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.GuardStub(ch)
        await stub.Check(request)
        end = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await stub.Check(request)
                done += 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done


def run(name: str, audit: dict | None, seconds: float, concurrency: int, folder: Path) -> float:
    server = {"audit": audit} if audit else {}
    cfg = loaded([discrete_agent()], base_dir=folder, server=server)
    with background_server(cfg) as srv:
        n = asyncio.run(drive(srv.port, seconds, concurrency))
        batches = srv.metrics.registry.get_sample_value("interlock_audit_batch_records_count") or 0
    rate = n / seconds
    per_txn = f"{n / batches:.1f} records/transaction" if batches else ""
    print(f"{name:<34} {rate:>9.0f} decisions/s  {per_txn}", flush=True)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = [
            ("no audit", None),
            ("sqlite full, group commit", {"path": "a.db", "record": "all"}),
            ("sqlite full, 1 record/transaction", {"path": "b.db", "record": "all", "max_batch": 1}),
            ("sqlite normal, group commit", {"path": "c.db", "record": "all", "synchronous": "normal"}),
        ]
        if os.environ.get("INTERLOCK_TEST_POSTGRES_DSN"):
            rows.append(
                ("postgres, group commit", {"backend": "postgres", "dsn": "${INTERLOCK_TEST_POSTGRES_DSN}"})
            )
            rows.append(
                (
                    "postgres, 1 record/transaction",
                    {"backend": "postgres", "dsn": "${INTERLOCK_TEST_POSTGRES_DSN}", "max_batch": 1},
                )
            )
        base = None
        results = []
        for name, audit in rows:
            rate = run(name, audit, args.seconds, args.concurrency, folder)
            base = base or rate
            results.append((name, rate))
        print(f"\nratios to 'no audit' (concurrency {args.concurrency}, {os.cpu_count()} CPUs):")
        for name, rate in results:
            print(f"  {name:<34} {rate / base:5.2f}")


if __name__ == "__main__":
    main()
