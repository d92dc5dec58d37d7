"""Diagnostic (development seeds only, never training data): where do C2's dense crashes become doomed?

With ``--oracle-veto`` it instead measures the ceiling of ``critic_veto_backup``: after the
dense-traffic trip the executed action is ``critic.CriticVetoChoice``'s with a perfect critic (the
oracle's own labels: P(safe) = 1 if the action survives ``depth`` decisions in the true simulator,
else 0), i.e. C2's choice with every action that has no ``depth``-decision way out vetoed
(``--promote``: and every action that has one counted safe whatever its kinematic margin).

Runs a design through Interlock's engine (``interlock_eval.DESIGNS``) and, before every decision,
labels the 5 meta-actions with the oracle's 3-decision survival in a copy of the true simulator
(``critic_data.label``). A decision is an **avoidable error** when the executed action has no
3-decision way out (survival < depth) while some other action has one. Per crashed episode: its
avoidable errors and the critic's P(safe) of the executed and the best action there.

    python examples/highway/critic_diag.py --design shielded_handover_r2 --critic /tmp/c.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from critic import Critic  # noqa: E402
from critic_data import label  # noqa: E402
from interlock_eval import AGENT_ID, DESIGNS, with_critic_overrides  # noqa: E402
from oracle import Search  # noqa: E402
from shield_study import BASE, DENSITIES, ENV_ID, SEEDS, SPEEDS, Agent  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--design", default="shielded_handover_r2")
    p.add_argument("--critic", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--promote", action="store_true",
                   help="With --oracle-veto: an action the oracle finds safe also counts as safe.")
    p.add_argument("--oracle-veto", action="store_true",
                   help="After the trip, C2's choice with the oracle's labels as a perfect critic's veto.")
    args = p.parse_args()

    import gymnasium as gym
    import highway_env  # noqa: F401

    from interlock.config import load_config
    from interlock.engine import Guard
    from interlock.types import CheckInput

    critic = Critic(args.critic)
    agent = Agent(HERE / "agent.onnx")
    guard = Guard(load_config(with_critic_overrides(DESIGNS[args.design]["stock"], {}))).load()
    env = gym.make(ENV_ID, config={**BASE, "vehicles_density": DENSITIES["dense"],
                                   "action": {"type": "DiscreteMetaAction",
                                              "target_speeds": list(SPEEDS["stock"])}})
    search = Search(args.depth)
    veto_choice = None
    if args.oracle_veto:
        from critic import CriticVetoChoice

        veto_choice = CriticVetoChoice(critic=str(args.critic), critic_threshold=0.5,
                                       scores="backup_stock.onnx", propose="scores",
                                       promote=0.5 if args.promote else 2.0)
    episodes = []
    for k in range(args.episodes):
        seed = SEEDS["dev"]["dense"] + k
        obs, _ = env.reset(seed=seed)
        done, step, crashed, steps = False, 0, False, []
        while not done:
            flat = np.asarray(obs, dtype=np.float32).reshape(-1)
            proposed = int(np.argmax(agent.q(flat[None]), axis=1)[0])
            [d] = guard.check([CheckInput(AGENT_ID, flat, np.int64(proposed), f"diag-{seed}", step)])
            action = int(d.action)
            surv = label(env.unwrapped, search, args.depth)
            tripped = {n: t for n, _, _, t in d.signals}
            if veto_choice is not None and tripped.get("dense.shifted"):
                perfect = (surv >= args.depth).astype(np.float64)[None]
                veto_choice.critic = lambda _obs, perfect=perfect: (perfect, perfect)
                action = int(veto_choice(flat[None], np.array([proposed]), None)[0])
            p_safe, _ = critic(flat[None])
            steps.append({"step": step, "action": action, "surv": surv.tolist(),
                          "p_safe": np.round(p_safe[0], 3).tolist(),
                          "avoidable": bool(surv[action] < args.depth and surv.max() == args.depth)})
            obs, _, terminated, truncated, info = env.step(action)
            crashed = crashed or bool(info.get("crashed"))
            step += 1
            done = terminated or truncated
        errs = [s for s in steps if s["avoidable"]]
        episodes.append({"seed": seed, "crashed": crashed, "steps": steps, "avoidable": len(errs)})
        first_doomed = next((s["step"] for s in steps if max(s["surv"]) < args.depth), None)
        print(f"{seed} crashed {crashed} steps {step} avoidable errors {len(errs)} "
              f"first none-safe step {first_doomed} "
              + " ".join(f"[t{s['step']} a{s['action']} s{s['surv']} p{s['p_safe']}]" for s in errs),
              flush=True)
    crashed = [e for e in episodes if e["crashed"]]
    print(f"crashed {len(crashed)}/{len(episodes)}; crashed with an avoidable error "
          f"{sum(e['avoidable'] > 0 for e in crashed)}; survivors with one "
          f"{sum(e['avoidable'] > 0 for e in episodes if not e['crashed'])}", flush=True)
    if args.json:
        out = {"design": args.design, "depth": args.depth, "episodes": episodes}
        args.json.write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
