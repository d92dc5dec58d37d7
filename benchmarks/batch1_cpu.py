"""In-process CPU of one decision at batch 1 against the CPU of its ONNX calls (issue 13's
``Guard.check`` target: at most 2x).

Thread CPU time (``time.thread_time``), not wall time: on a shared machine it moves much less.
ONNX Runtime runs on the calling thread (1 intra-op thread), so the time inside every
``session.run`` is measured the same way. Two configs: the ``bench perf`` scenario (Q ensemble,
reachability rollout, rules) and the CartPole example; two entry points: ``Guard.check_columns``
(what ``bench perf``'s ``engine_batch1_over_onnx`` times) and ``Guard.check`` (Check's engine call).
Medians of 7 rounds of 500 decisions. To compare two versions, run it with each one's sources
on PYTHONPATH, alternating (``for v in before after; do PYTHONPATH=$v python this.py; done``).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from interlock.bench.perf import scenario
from interlock.bench.perf.floors import _TimedSession
from interlock.config import load_config
from interlock.engine import Guard
from interlock.runtime import ModelRuntime
from interlock.types import CheckInput

CARTPOLE = Path(__file__).resolve().parents[1] / "examples" / "cartpole" / "interlock.yaml"


class _CpuTimedSession(_TimedSession):
    def run(self, *args, **kwargs):
        start = time.thread_time()
        try:
            return self._session.run(*args, **kwargs)
        finally:
            self._clock[0] += time.thread_time() - start
            self._clock[1] += 1


def _guard(path: Path, clock: list) -> Guard:
    class Timed(ModelRuntime):
        def session(self, p, what: str = "model"):
            return _CpuTimedSession(super().session(p, what), clock)

    loaded = load_config(path)
    return Guard(loaded, runtime=Timed.for_config(loaded)).load()


def measure(rounds: int = 7, calls: int = 500) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        scn = scenario.build(Path(tmp))
        rng = np.random.default_rng(0)
        configs = (
            ("bench", scn.config_path, scenario.AGENT_ID, scn.observations, scn.actions),
            (
                "cartpole",
                CARTPOLE,
                "cartpole",
                (rng.standard_normal((1024, 4)) * 0.03).astype(np.float32),
                rng.integers(0, 2, 1024).astype(np.int64),
            ),
        )
        out: dict[str, dict[str, float]] = {}
        for name, path, agent, obs, act in configs:
            clock = [0.0, 0]
            guard = _guard(path, clock)
            items = [CheckInput(agent, obs[i], act[i], f"ep-{i % 16}", i) for i in range(len(obs))]
            for kind in ("check_columns", "check"):
                points = []
                for _ in range(rounds):
                    clock[0] = 0.0
                    start = time.thread_time()
                    for i in range(calls):
                        if kind == "check_columns":
                            guard.check_columns(agent, obs[i : i + 1], act[i : i + 1])
                        else:
                            guard.check([items[i]])
                    points.append(((time.thread_time() - start) / calls, clock[0] / calls))
                engine = float(np.median([p[0] for p in points])) * 1e6
                onnx = float(np.median([p[1] for p in points])) * 1e6
                out[f"{name} {kind}"] = {"engine_cpu_us": engine, "onnx_cpu_us": onnx, "ratio": engine / onnx}
            guard.unload()
    return out


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
