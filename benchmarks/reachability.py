"""Per-decision cost of the reachability checks, side by side with the bare model calls they build on.

    python benchmarks/reachability.py [--repeat 200]

Rollout check (``examples/cartpole_recovery``: a 5-member ensemble, backup policy, two
constraints and a safe set, horizon 30): the bare ensemble call on the batch, the
monitor's rollout check on the same batch, and a whole ``Guard.check`` (validation,
monitors, CEL rules, fallback). Each rollout step is one ensemble call and one
backup-policy call over ``[K * batch]`` states; the rollout stops early once every
member's rollout has recovered or failed, so its cost depends on the states: the
benchmark reports a state near upright (recovers at once) and states drawn from
the constraint region (typical of guarded episodes).

Tabular shield (``examples/cliffwalking``): the monitor's table lookup and a whole
``Guard.check``.

Prints microseconds per call and per batch row, and the ratio to the bare ensemble call on
the same batch (fastest group of 10 calls; see :func:`timeit`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def timeit(fn, repeat: int, group: int = 10) -> float:
    """Seconds per call: the fastest mean over groups of ``group`` calls (after warm-up).

    The fastest group rather than the median, because a shared machine's load only ever
    adds time; the ratios between rows are what this benchmark is for.
    """
    for _ in range(5):
        fn()
    best = float("inf")
    for _ in range(max(repeat // group, 1)):
        t0 = time.perf_counter()
        for _ in range(group):
            fn()
        best = min(best, (time.perf_counter() - t0) / group)
    return best


def per_member_copy(example: Path) -> Path:
    """The example's config and models, with the ensemble re-exported with ``[K, N, d]`` inputs."""
    import shutil
    import tempfile

    import onnx
    from onnx import numpy_helper

    from interlock.reachability.onnx_build import mlp_ensemble, save

    out = Path(tempfile.mkdtemp(prefix="interlock-bench-"))
    for name in ("interlock.yaml", "backup.onnx"):
        shutil.copy(example / name, out / name)
    init = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(example / "dynamics.onnx")).graph.initializer
    }
    layers = sorted(int(k[1:]) for k in init if k.startswith("W"))
    save(
        mlp_ensemble(
            [init[f"W{i}"] for i in layers],
            [init[f"b{i}"][:, 0, :] for i in layers],
            obs_dim=4,
            n_actions=2,
            in_mean=init["in_mean"],
            in_std=init["in_std"],
            out_mean=init["out_mean"],
            out_std=init["out_std"],
            per_member=True,
        ),
        out / "dynamics.onnx",
    )
    return out


def main(argv: list[str] | None = None) -> int:
    from interlock.batch import Batch
    from interlock.engine import Guard
    from interlock.types import CheckInput

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)

    guard = Guard.from_file(str(ROOT / "examples" / "cartpole_recovery" / "interlock.yaml")).load()
    agent = guard.agents[0]
    monitor = next(m for m in agent.monitors if m.name == "recover")
    session = monitor.engine.dynamics.session
    rng = np.random.default_rng(0)
    print(f"{'case':58s} {'batch':>5s} {'us/call':>10s} {'us/row':>9s} {'x bare':>8s}")
    for batch in (1, 16, 64):
        for label, obs in (
            ("near upright", rng.normal(0, 0.01, (batch, 4))),
            (
                "across the constraint region",
                rng.uniform([-2, -1.5, -0.17, -1.5], [2, 1.5, 0.17, 1.5], (batch, 4)),
            ),
        ):
            obs = obs.astype(np.float32)
            actions = rng.integers(0, 2, batch).astype(np.int64)
            bare = timeit(lambda o=obs, a=actions: session.run(None, {"obs": o, "action": a}), args.repeat)
            b = Batch("cartpole-recovery", obs, actions, np.zeros(batch, np.int64))
            roll = timeit(lambda b=b: monitor.check(b), args.repeat)
            items = [CheckInput("cartpole-recovery", obs[i], actions[i]) for i in range(batch)]
            full = timeit(lambda items=items: guard.check(items), max(args.repeat // 4, 10))
            for name, t in (
                (f"bare ensemble call ({label})", bare),
                (f"rollout check, H=30 ({label})", roll),
                (f"Guard.check with the rollout check ({label})", full),
            ):
                print(f"{name:58s} {batch:5d} {t * 1e6:10.1f} {t * 1e6 / batch:9.1f} {t / bare:8.1f}")

    # The same ensemble exported with per-member inputs [K, N, d]: no K-fold work on rollout steps.
    per_member = per_member_copy(ROOT / "examples" / "cartpole_recovery")
    pm_guard = Guard.from_file(str(per_member / "interlock.yaml")).load()
    pm_monitor = next(m for m in pm_guard.agents[0].monitors if m.name == "recover")
    for batch in (1, 16, 64):
        obs = rng.uniform([-2, -1.5, -0.17, -1.5], [2, 1.5, 0.17, 1.5], (batch, 4)).astype(np.float32)
        actions = rng.integers(0, 2, batch).astype(np.int64)
        bare = timeit(lambda o=obs, a=actions: session.run(None, {"obs": o, "action": a}), args.repeat)
        for name, mon in (("shared-input", monitor), ("per-member", pm_monitor)):
            b = Batch("cartpole-recovery", obs, actions, np.zeros(batch, np.int64))
            t = timeit(lambda b=b, mon=mon: mon.check(b), args.repeat)
            label = f"rollout check, {name} layout (across the region)"
            print(f"{label:58s} {batch:5d} {t * 1e6:10.1f} {t * 1e6 / batch:9.1f} {t / bare:8.1f}")

    shield = Guard.from_file(str(ROOT / "examples" / "cliffwalking" / "interlock.yaml")).load()
    smon = next(m for m in shield.agents[0].monitors if m.name == "shield")
    for batch in (1, 64):
        states = rng.integers(0, 48, batch).astype(np.int64)
        actions = rng.integers(0, 4, batch).astype(np.int64)
        b = Batch("cliffwalking", states, actions, np.zeros(batch, np.int64))
        look = timeit(lambda b=b: smon.check(b), args.repeat)
        items = [CheckInput("cliffwalking", states[i], actions[i]) for i in range(batch)]
        full = timeit(lambda items=items: shield.check(items), max(args.repeat // 4, 10))
        print(
            f"{'tabular shield lookup (CliffWalking)':58s} {batch:5d} {look * 1e6:10.1f} "
            f"{look * 1e6 / batch:9.1f} {'':>8s}"
        )
        print(
            f"{'Guard.check with the shield (CliffWalking)':58s} {batch:5d} {full * 1e6:10.1f} "
            f"{full * 1e6 / batch:9.1f} {'':>8s}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
