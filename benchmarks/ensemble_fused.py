"""The fused ensemble graph against K separate ONNX Runtime sessions, side by side in one run.

Both produce the same ``[K, batch, n]`` array (checked before timing). Sessions
are configured as Interlock configures them (1 intra-op thread, no spinning).
Run::

    python -m benchmarks.ensemble_fused            # K=5 members of 4-64-64-2 MLPs
    python -m benchmarks.ensemble_fused --members 10 --hidden 256

and it prints microseconds per call for batch sizes 1 and 256 and the speed-up
of each fused graph over the K sessions.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from interlock.ensembles.compile import compile_ensemble
from interlock.ensembles.mlp import mlp_member


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _time_interleaved(fns: dict, min_seconds: float = 0.3, rounds: int = 15) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so load changes hit all alike."""
    loops = {}
    for name, fn in fns.items():
        fn()
        n, t = 1, 0.0
        while t < min_seconds / rounds:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            t = time.perf_counter() - start
            n *= 2
        loops[name] = max(1, n // 2)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(loops[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / loops[name])
    return {name: float(np.median(v)) for name, v in samples.items()}


def run(
    members: int = 5, obs_dim: int = 4, hidden: int = 64, n_out: int = 2, batches=(1, 256), seed: int = 0
) -> list[dict]:
    import onnx

    rng = np.random.default_rng(seed)
    tmp = Path(tempfile.mkdtemp(prefix="interlock-bench-"))
    paths = []
    for k in range(members):
        sizes = [obs_dim, hidden, hidden, n_out]
        layers = [
            (rng.standard_normal((a, b)) / np.sqrt(a), rng.standard_normal(b) * 0.1)
            for a, b in itertools.pairwise(sizes)
        ]
        paths.append(tmp / f"m{k}.onnx")
        onnx.save(mlp_member(layers, "relu", "q", obs_dim), str(paths[-1]))
    compile_ensemble(paths, tmp / "stacked.onnx", strategy="stacked")
    compile_ensemble(paths, tmp / "parallel.onnx", strategy="parallel")
    separate = [_session(p) for p in paths]
    stacked, parallel = _session(tmp / "stacked.onnx"), _session(tmp / "parallel.onnx")
    rows = []
    for batch in batches:
        obs = rng.standard_normal((batch, obs_dim)).astype(np.float32)
        feeds = {"obs": obs}

        def k_sessions(feeds=feeds):
            return np.stack([s.run(None, feeds)[0] for s in separate])

        def fused_stacked(feeds=feeds):
            return stacked.run(None, feeds)[0]

        def fused_parallel(feeds=feeds):
            return parallel.run(None, feeds)[0]

        ref = k_sessions()
        for f in (fused_stacked, fused_parallel):
            np.testing.assert_allclose(f(), ref, atol=1e-5, rtol=1e-6)
        t = _time_interleaved({"sep": k_sessions, "stacked": fused_stacked, "parallel": fused_parallel})
        t_sep, t_st, t_par = t["sep"], t["stacked"], t["parallel"]
        rows.append(
            {
                "batch": batch,
                "k_sessions_us": t_sep * 1e6,
                "stacked_us": t_st * 1e6,
                "parallel_us": t_par * 1e6,
                "stacked_speedup": t_sep / t_st,
                "parallel_speedup": t_sep / t_par,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--obs-dim", type=int, default=4)
    args = p.parse_args(argv)
    rows = run(args.members, args.obs_dim, args.hidden)
    print(
        f"K={args.members} members, MLP {args.obs_dim}-{args.hidden}-{args.hidden}-2, onnxruntime "
        f"{ort.__version__}, "
        "1 thread; microseconds per call (median)"
    )
    print(
        f"{'batch':>6s} {'K sessions':>11s} {'fused stacked':>14s} {'speed-up':>9s} "
        f"{'fused parallel':>15s} {'speed-up':>9s}"
    )
    for r in rows:
        print(
            f"{r['batch']:6d} {r['k_sessions_us']:11.1f} {r['stacked_us']:14.1f} "
            f"{r['stacked_speedup']:8.2f}x "
            f"{r['parallel_us']:15.1f} {r['parallel_speedup']:8.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
