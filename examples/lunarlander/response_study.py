"""Response study: once the shift detector has tripped, which action is safer? (numpy + onnxruntime)

Every cell runs ``--episodes`` episodes of one agent in one world side by side (a batch of envs),
with the detector of detector_study.py running online (the design and threshold chosen there on
development seeds, read from ``detector_study.json``) and one response:

* ``none``: the agent alone (the detector runs, nothing acts on it).
* ``switch``: Simplex switch. From the step after the detector trips until the episode ends, the
  wind-robust backup ``ppo_wind_agent.onnx`` (our agent trained on in randomised wind) acts.
* ``shield``: a model-predictive shield, engaged after the trip (``shield_always``: from step 0).
  For every action a of the 4, and every ensemble member k, roll out H steps: the first action is a
  (held for ``hold`` steps), then the agent's own greedy policy; the member's predicted change plus
  the residual bias observed so far in the episode (online correction, EWMA with rate ``bias_lam``
  of ``next_obs - obs - ensemble mean``; ``bias: per_action`` keeps one EWMA per action taken,
  because a weak engine only shows when it fires) gives the next state. An action is unsafe when
  any member's rollout violates a constraint (below). The agent's action is kept when safe, else
  the safe action with the highest agent logit; when none is safe, the action with the fewest
  violating members, then the latest first violation, then the highest logit.
* ``switch+shield``: the backup acts after the trip, shielded the same way (rollouts follow the
  backup).

Constraints (all from in-distribution data, see ``constraints_from_data``): near the ground
(``y < y_near``) the vertical speed must stay above ``-vy_max`` and ``|angle|`` below ``angle_max``;
everywhere ``|x| < x_max``. The bounds are quantiles of the states of landed
in-distribution episodes (collect_data.py's data of the five behaviour policies), fixed before
any shifted episode was run.

Crash: the terminal step's reward is -100 (hull contact or off screen; lander.py).

Seeds: development cells use reset seeds 5000 + k (wind), 6000 + k (weak main engine), 7000 + k
(nominal). ``--eval`` runs the final chosen variants on evaluation seeds 110000 + k.

Run::

    nice -n 10 python examples/lunarlander/response_study.py --episodes 50
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
from lander import HERE, WORLDS, OnnxAgent, main_engine_power, make_env, session, wilson

DEV_SEEDS = {"wind": 5000, "weak_main": 6000, "nominal": 7000}
EVAL_SEEDS = {"wind": 110_000, "weak_main": 111_000, "nominal": 112_000}


@dataclass
class Constraints:
    """Bounds on rollout states (obs units). ``violated`` takes ``[..., 8]`` and returns ``[...]`` bool."""

    y_near: float
    vy_max: float
    angle_max: float
    x_max: float

    def violated(self, s: np.ndarray) -> np.ndarray:
        near = s[..., 1] < self.y_near
        bad_near = near & ((s[..., 3] < -self.vy_max) | (np.abs(s[..., 4]) > self.angle_max))
        return bad_near | (np.abs(s[..., 0]) > self.x_max)


def constraints_from_data(q: float = 0.995, y_near: float = 0.3) -> Constraints:
    """Bounds from the landed episodes of the in-distribution data (``data/in_dist_all.npz``).

    The ``q`` quantile of ``-vy`` and ``|angle|`` over the states with ``y < y_near`` of episodes
    that landed, and of ``|x|`` over all their states, each with a 10% margin.
    """
    with np.load(HERE / "data" / "in_dist_all.npz") as f:
        ep, term, rew, obs = f["episode"], f["terminated"], f["reward"], f["obs"]
    landed_eps = np.unique(ep[term & (rew != -100)])
    s = obs[np.isin(ep, landed_eps)]
    near = s[:, 1] < y_near
    return Constraints(
        y_near=y_near,
        vy_max=1.1 * float(np.quantile(-s[near, 3], q)),
        angle_max=1.1 * float(np.quantile(np.abs(s[near, 4]), q)),
        x_max=min(0.99, 1.1 * float(np.quantile(np.abs(s[:, 0]), q))),
    )


class Detector:
    """Online version of the design chosen in detector_study.json, for a batch of E episodes."""

    def __init__(self, report: dict, n: int) -> None:
        chosen = report["designs"][report["chosen_index"]]
        self.d, self.ref, self.h = chosen["design"], chosen["ref"], chosen["threshold"]
        self.sigma = np.asarray(report["robust_sigma" if self.d.get("robust") else "sigma"])
        dims = self.d["dims"]
        self.s = np.zeros(n) if self.d["kind"] == "cusum_sq" else np.zeros((n, len(dims)))
        self.s2 = np.zeros((n, len(dims)))
        self.tripped_at = np.full(n, -1)

    def update(self, r: np.ndarray, sd: np.ndarray, valid: np.ndarray, t: int) -> None:
        """One step: ``r``, ``sd`` ``[E, 8]`` residual and member spread, ``valid`` ``[E]``."""
        d, dims = self.d, self.d["dims"]
        scale = np.sqrt(self.sigma[dims] ** 2 + sd[:, dims] ** 2) if d.get("spread") else self.sigma[dims]
        z = r[:, dims] / scale
        v = valid[:, None]
        if d["kind"] == "cusum_sq":
            q = np.minimum(z**2, d["clip"]).mean(-1)
            self.s = np.where(valid, np.maximum(0.0, self.s + q - d["drift"] * self.ref["mean_q"]), self.s)
            stat = self.s
        elif d["kind"] == "mewma":
            lam = d["lam"]
            self.s = np.where(v, (1 - lam) * self.s + lam * np.clip(z, -d["clip"], d["clip"]), self.s)
            stat = (self.s**2).sum(-1) * (2 - lam) / lam
        else:
            zc = np.clip(z, -d["clip"], d["clip"])
            self.s = np.where(v, np.maximum(0.0, self.s + zc - d["k"]), self.s)
            self.s2 = np.where(v, np.maximum(0.0, self.s2 - zc - d["k"]), self.s2)
            stat = np.maximum(self.s, self.s2).max(-1)
        new = (stat > self.h) & (self.tripped_at < 0) & valid
        self.tripped_at[new] = t


class Members:
    """The K ensemble members (``dynamics_members/member_<k>.onnx``), each on its own rows."""

    def __init__(self) -> None:
        paths = sorted((HERE / "dynamics_members").glob("member_*.onnx"))
        self.sess = [session(p) for p in paths]
        self.k = len(self.sess)

    def step(self, s: np.ndarray, a: np.ndarray) -> np.ndarray:
        """``s [M, K, 8]``, ``a [M, K]`` -> predicted change ``[M, K, 8]``, member k on column k."""
        out = np.empty_like(s)
        for k, sess in enumerate(self.sess):
            feed = {"obs": s[:, k].astype(np.float32), "action": a[:, k].astype(np.int64)}
            out[:, k] = sess.run(None, feed)[0]
        return out


def shield_choice(
    obs: np.ndarray, logits: np.ndarray, policy: OnnxAgent, members: Members, bias: np.ndarray,
    cons: Constraints, horizon: int, hold: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The shield's action for E states.

    Args:
        obs: ``[E, 8]`` current observations.
        logits: ``[E, 4]`` scores of the policy that acts (its proposal is the argmax).
        policy: the policy the rollouts follow after the first ``hold`` steps.
        members: the ensemble members.
        bias: ``[E, 8]`` (global) or ``[E, 4, 8]`` (per action) residual correction.
        cons: the constraints.
        horizon: rollout length H.
        hold: steps the candidate action is held before the policy takes over.

    Returns:
        ``(actions [E], unsafe_proposal [E] bool)``.
    """
    e, k, n_a = len(obs), members.k, logits.shape[1]
    s = np.broadcast_to(obs[:, None, None, :], (e, n_a, k, 8)).copy()
    cand = np.broadcast_to(np.arange(n_a)[None, :, None], (e, n_a, k))
    first_bad = np.full((e, n_a, k), horizon + 1)
    for t in range(horizon):
        a = cand if t < hold else policy.act(s.reshape(-1, 8)).reshape(e, n_a, k)
        delta = members.step(s.reshape(e * n_a, k, 8), a.reshape(e * n_a, k)).reshape(e, n_a, k, 8)
        # per action: the bias of the action each rollout takes, [E, A, K, 8]
        b = bias[np.arange(e)[:, None, None], a] if bias.ndim == 3 else bias[:, None, None, :]
        s = s + delta + b
        s[..., 6:] = np.clip(s[..., 6:], 0, 1)
        bad = cons.violated(s) & (first_bad > horizon)
        first_bad[bad] = t
    n_bad = (first_bad <= horizon).sum(-1)  # [E, A] members violating
    worst_first = first_bad.min(-1)  # [E, A]
    proposal = logits.argmax(1)
    safe = n_bad == 0
    preference = 1e-3 * (logits - logits.min(1, keepdims=True))  # breaks ties only
    rank = np.where(safe, 1e6, 0.0) - 1e3 * n_bad + worst_first + preference
    choice = rank.argmax(1)
    keep = safe[np.arange(e), proposal]
    return np.where(keep, proposal, choice), ~keep


def run_cell(world: str, seeds: list[int], agent: OnnxAgent, backup: OnnxAgent | None, response: dict,
             fused, members: Members, report: dict, cons: Constraints) -> dict:
    """Run ``len(seeds)`` episodes side by side under ``response``; crash, return, intervention stats."""
    n = len(seeds)
    envs = [make_env(world) for _ in seeds]
    det = Detector(report, n)
    bias = np.zeros((n, 4, 8)) if response.get("bias") == "per_action" else np.zeros((n, 8))
    lam_b = response.get("bias_lam", 0.1)
    ret = np.zeros(n)
    crashed = np.zeros(n, bool)
    done = np.zeros(n, bool)
    steps = np.zeros(n, int)
    interventions = np.zeros(n, int)
    with main_engine_power(WORLDS[world]["main_power_scale"]):
        obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(envs, seeds, strict=True)])
        t = 0
        while not done.all():
            live = ~done
            idx = np.flatnonzero(live)
            o = obs[idx]
            logits = agent.scores(o)
            proposal = logits.argmax(1)
            act = proposal.copy()
            tripped = (det.tripped_at[idx] >= 0) | bool(response.get("always"))
            kind = response["kind"]
            if kind in ("switch", "switch+shield") and backup is not None and tripped.any():
                act[tripped] = backup.act(o[tripped])
            if kind in ("shield", "switch+shield") and tripped.any():
                ti = np.flatnonzero(tripped)
                pol = backup if kind == "switch+shield" else agent
                lg = pol.scores(o[ti])
                chosen, _ = shield_choice(o[ti], lg, pol, members, bias[idx[ti]], cons,
                                          response["horizon"], response.get("hold", 1))
                act[ti] = chosen
            interventions[idx] += act != proposal
            nxt = np.empty_like(o)
            for j, e in enumerate(idx):
                nx, r, term, trunc, _ = envs[e].step(int(act[j]))
                nxt[j] = nx
                ret[e] += r
                steps[e] += 1
                if term or trunc:
                    done[e] = True
                    crashed[e] = bool(term and r == -100)
            delta = fused.run(None, {"obs": o.astype(np.float32), "action": act.astype(np.int64)})[0]
            resid = (nxt - o) - delta.mean(0)
            valid = ~done[idx]  # terminal transitions are masked
            full_r = np.zeros((n, 8))
            full_sd = np.zeros((n, 8))
            full_valid = np.zeros(n, bool)
            full_r[idx], full_sd[idx], full_valid[idx] = resid, delta.std(0), valid
            det.update(full_r, full_sd, full_valid, t)
            rr = np.where(valid[:, None], resid, 0.0)
            rr[:, 6:] = 0.0
            if bias.ndim == 3:
                cur = bias[idx, act]
                bias[idx, act] = np.where(valid[:, None], (1 - lam_b) * cur + lam_b * rr, cur)
            else:
                bias[idx] = np.where(valid[:, None], (1 - lam_b) * bias[idx] + lam_b * rr, bias[idx])
            obs[idx] = nxt
            t += 1
    for env in envs:
        env.close()
    lo, hi = wilson(int(crashed.sum()), n)
    return {
        "episodes": n,
        "crash_rate": float(crashed.mean()),
        "crash_wilson95": [round(float(lo), 4), round(float(hi), 4)],
        "mean_return": float(ret.mean()),
        "intervention_rate_steps": float(interventions.sum() / steps.sum()),
        "trip_rate": float((det.tripped_at >= 0).mean()),
        "median_trip_step": float(np.median(det.tripped_at[det.tripped_at >= 0]))
        if (det.tripped_at >= 0).any() else None,
    }


VARIANTS = {
    "none": {"kind": "none"},
    "switch": {"kind": "switch"},
    "shield_H20": {"kind": "shield", "horizon": 20, "hold": 1},
    "shield_H20_hold4": {"kind": "shield", "horizon": 20, "hold": 4},
    "shield_H20_hold4_peraction": {"kind": "shield", "horizon": 20, "hold": 4, "bias": "per_action"},
    "shield_always_H20_hold4": {"kind": "shield", "horizon": 20, "hold": 4, "always": True},
    "shield_always_H20": {"kind": "shield", "horizon": 20, "hold": 1, "always": True},
    "shield_always_H10_hold4_peraction": {"kind": "shield", "horizon": 10, "hold": 4, "always": True,
                                          "bias": "per_action"},
    "switch+shield_H20_hold4": {"kind": "switch+shield", "horizon": 20, "hold": 4},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--worlds", default="wind")
    p.add_argument("--agent", default="ppo", help="ppo (dev and eval) or dqn (eval only)")
    p.add_argument("--eval", action="store_true", help="evaluation seeds (run once, after the dev choice)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    t0 = time.monotonic()
    report = json.loads((HERE / "detector_study.json").read_text())
    agent = OnnxAgent(HERE / f"{args.agent}_agent.onnx")
    backup_path = HERE / "ppo_wind_agent.onnx"
    backup = OnnxAgent(backup_path) if backup_path.exists() else None
    fused = session(HERE / "dynamics_ensemble.onnx")
    members = Members()
    cons = constraints_from_data()
    print(f"constraints (from in-distribution landed episodes): {cons}", flush=True)
    base = EVAL_SEEDS if args.eval else DEV_SEEDS
    out_path = HERE / (args.out or ("response_study_eval.json" if args.eval else "response_study_dev.json"))
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results["constraints"] = cons.__dict__
    for world in args.worlds.split(","):
        seeds = [base[world] + k for k in range(args.episodes)]
        for name in args.variants.split(","):
            v = VARIANTS[name]
            if "switch" in v["kind"] and backup is None:
                print(f"skip {name}: no ppo_wind_agent.onnx", flush=True)
                continue
            res = run_cell(world, seeds, agent, backup, v, fused, members, report, cons)
            res["variant"] = v
            results[f"{args.agent}/{world}/{name}"] = res
            print(f"[{time.monotonic() - t0:5.0f}s] {args.agent} {world} {name}: {res}", flush=True)
            out_path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
