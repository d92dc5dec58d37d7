"""In-distribution episodes for `interlock calibrate` (the transition monitor of interlock.yaml).

The behaviour policies of collect_data.py (``--policies r1``: the five of rounds 1-3, our PPO greedy
and with 10% / 30% random actions, Gymnasium's heuristic greedy and with 20% random actions;
``--policies r4``: nine, collect_data.py's docstring), nominal world, ``--episodes`` each, on
**development** reset seeds ``1000 + k`` (the detector study's threshold seeds, README.md); noisy
policies draw their random actions from ``numpy.random.default_rng(seed)``. Several policies so the
false-alarm target holds for more than one agent's habits (the guard is judged with an unseen agent).

Terminal transitions are dropped (as in the study): Interlock never sees one, because no action
follows a terminal step.

Writes ``data/calibration.npz`` (``obs [N, 8]``, ``action [N]``, ``next_obs [N, 8]``, ``episode [N]``,
``policy [N]``); ``data/`` is not committed. Then, from the repository root::

    nice -n 10 python examples/lunarlander/calibration_data.py --episodes 60
    nice -n 10 interlock calibrate --config examples/lunarlander/interlock.yaml --agent lunarlander \\
        --data examples/lunarlander/data/calibration.npz --false-alarm-rate 0.01 \\
        --episode-false-alarm-rate 0.05
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from collect_data import POLICY_SETS, chooser
from lander import HERE, OnnxAgent, run_episode

CALIBRATION_SEED = 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=60, help="episodes per behaviour policy")
    p.add_argument("--out", default=str(HERE / "data" / "calibration.npz"))
    p.add_argument("--policies", choices=sorted(POLICY_SETS), default="r1",
                   help="behaviour policy set of collect_data.py: r1 (five) or r4 (nine, round 4)")
    args = p.parse_args()
    policies = POLICY_SETS[args.policies]
    agent = OnnxAgent(HERE / "ppo_agent.onnx")
    robust = OnnxAgent(HERE / "robust_agent.onnx")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "action", "next_obs", "episode", "policy")}
    t0 = time.monotonic()
    ep_id = 0
    for pi, name in enumerate(policies):
        for k in range(args.episodes):
            e = run_episode("nominal", CALIBRATION_SEED + k, chooser(name, agent, robust))
            keep = np.ones(len(e.action), bool)
            keep[-1] = not e.terminated  # the terminal transition is masked
            cols["obs"].append(e.obs[keep])
            cols["action"].append(e.action[keep])
            cols["next_obs"].append(e.next_obs[keep])
            cols["episode"].append(np.full(int(keep.sum()), ep_id, np.int64))
            cols["policy"].append(np.full(int(keep.sum()), pi, np.int64))
            ep_id += 1
        print(f"[{time.monotonic() - t0:5.0f}s] {name}: {args.episodes} episodes", flush=True)
    out = {k: np.concatenate(v) for k, v in cols.items()}
    (HERE / "data").mkdir(exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out}: {len(out['obs'])} transitions, {ep_id} episodes", flush=True)


if __name__ == "__main__":
    main()
