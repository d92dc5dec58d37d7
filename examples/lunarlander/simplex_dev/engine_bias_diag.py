"""Round 5b's diagnostic (RULE.md "Round 5b"): does a weak main engine show in the signed residual?

For each agent and world, 20 development episodes (nominal 12000+, weak main 11000+, wind 10000+):
the round-4 model's residual of each scored transition (airborne, off the pad), normalised as the
shipped config's transition monitor does (per-action scale from thresholds.json, members' spread
added), and per episode the mean z of vy over main-engine steps, its t statistic and the mean z of vx.

    python examples/lunarlander/simplex_dev/engine_bias_diag.py ppo dqn a2c heuristic
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
from lander import OnnxAgent, agent_chooser, heuristic_chooser, run_episode  # noqa: E402

SESSION = ort.InferenceSession(str(HERE / "dynamics_ensemble_r4.onnx"), providers=["CPUExecutionProvider"])
SCALE = np.array(
    json.loads((HERE / "thresholds.json").read_text())["monitors"]["drift"]["residual_scale_per_action"]
)
WORLDS = (("nominal", 12000), ("weak_main", 11000), ("wind", 10000))


def normalised(e) -> tuple[np.ndarray, np.ndarray]:
    """``z [n, 8]`` and actions ``[n]`` of the episode's scored transitions."""
    o, a, n = e.obs, e.action, e.next_obs
    scored = (
        (o[:, 6] < 0.5)
        & (o[:, 7] < 0.5)
        & (o[:, 1] > 0.05)
        & (n[:, 6] < 0.5)
        & (n[:, 7] < 0.5)
        & (n[:, 1] > 0.05)
    )
    out = SESSION.run(None, {"obs": o.astype(np.float32), "action": a.astype(np.int64)})[0]
    z = (n - o - out.mean(0)) / np.sqrt(SCALE[a] ** 2 + out.std(0) ** 2)
    return z[scored], a[scored]


def main() -> None:
    for name in sys.argv[1:] or ["ppo", "dqn", "a2c", "heuristic"]:
        agent = None if name == "heuristic" else OnnxAgent(HERE / f"{name}_agent.onnx")
        for world, first in WORLDS:
            rows = []
            for k in range(20):
                e = run_episode(world, first + k, agent_chooser(agent) if agent else heuristic_chooser())
                z, a = normalised(e)
                main = z[a == 2]
                m = main[:, 3].mean() if len(main) else 0.0
                rows.append((len(main), m, m * np.sqrt(len(main)), main[:, 2].mean() if len(main) else 0.0))
            s = np.array(rows)
            print(
                f"{name:9s} {world:9s} main steps {np.median(s[:, 0]):5.0f}  "
                f"mean z_vy {np.median(s[:, 1]):+.2f} "
                f"[{s[:, 1].min():+.2f}, {s[:, 1].max():+.2f}]  t {np.median(s[:, 2]):+.1f} "
                f"[{s[:, 2].min():+.1f}, {s[:, 2].max():+.1f}]  z_vx {np.median(s[:, 3]):+.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
