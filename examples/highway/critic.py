"""A learned safety critic distilled from the oracle (``oracle.py``), and its ``kind: python`` plugins.

The critic is an ensemble of small MLPs, ``obs`` [batch, 25] -> ``p`` [members, batch, 5, levels]:
for each meta-action, the probability that the oracle's search in the true simulator finds a
continuation surviving at least 1, 2, ..., ``levels`` decisions (``critic_data.py`` labels: the
survival ``s[a]`` in 0..depth; level ``j`` is ``s[a] >= j + 1``). It sees only the observation, so
it learns how often, from states that look like this one, the drivers it cannot see or predict
(IDM / MOBIL, the vehicles beyond the 4 nearest) leave a way out: the foresight the kinematic
shield's constant-velocity model lacks, as a statistic of the traffic it was trained in
(``vehicles_density`` drawn in [1, 2.5], stock target speeds).

From the members' mean (or, with ``aggregate: min``, their minimum) the plugins use

* ``p_safe[a]``: the top level (survives ``levels`` decisions): an action is **safe** when
  ``p_safe >= threshold``;
* ``expected[a]``: the expected survival, the sum over levels (0..levels), to rank the least bad
  when nothing is safe.

Choice rule (:func:`critic_choice`, as ``kinematic_model.shield_choice``): keep the proposal if
safe; else the safe action with the highest Q (``scores``: the agent's ONNX, or the backup's);
else the largest ``expected`` with Q breaking ties within ``tie_tolerance`` (decisions).
``improvable`` (monitor): the choice would change the proposal (not safe, and a safe action exists
or the proposal's ``expected`` is more than ``tie_tolerance`` below the best), so Interlock's
non-ALLOW count is exactly the steps it changes.

Optional combination with the kinematic shield (``kinematic: true``): an action is safe only if
also its 1 s kinematic margin is >= ``kin_threshold`` (m) (today's shield's test), and the least
bad is ranked by ``expected`` then the margin.

Train and export (``critic_data.py`` makes the data)::

    OMP_NUM_THREADS=1 nice -n 10 python examples/highway/critic.py train /tmp/hwc/data_r1.npz \\
        --out examples/highway/critic_stock.onnx

Plugins (numpy in, numpy out; docs/shield.md "Plugins"): monitor :class:`CriticSafety`
``(obs [batch, 25], actions [batch], batch) -> {"p_safe", "p_best", "expected", "improvable"}``;
fallback :class:`CriticChoice` ``-> actions [batch] int64``. ``critic`` and ``scores`` paths are
relative to this folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
N_ACTIONS = 5


def _session(path: str | Path):
    from highway_shield import onnx_session

    return onnx_session(path)


class Critic:
    """The ONNX ensemble: obs [batch, 25] -> (p_safe [batch, 5], expected [batch, 5])."""

    def __init__(self, path: str | Path, aggregate: str = "mean") -> None:
        if aggregate not in ("mean", "min"):
            raise ValueError(f"aggregate must be mean or min, got {aggregate!r}")
        self.session = _session(path)
        self.input = self.session.get_inputs()[0].name
        self.aggregate = aggregate

    def __call__(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        obs = np.asarray(observations, dtype=np.float32).reshape(len(observations), -1)
        p = np.asarray(self.session.run(None, {self.input: obs})[0], dtype=np.float64)  # [M, B, 5, L]
        if p.ndim != 4 or p.shape[1:3] != (len(obs), N_ACTIONS):
            raise ValueError(f"critic returned shape {list(p.shape)}; expected [M, {len(obs)}, 5, L]")
        p = p.mean(axis=0) if self.aggregate == "mean" else p.min(axis=0)  # [B, 5, L]
        return p[:, :, -1], p.sum(axis=2)


def critic_choice(safe: np.ndarray, expected: np.ndarray, q: np.ndarray, proposed: np.ndarray,
                  tie_tolerance: float, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """[batch] chosen actions: the proposal if safe; else the safe action with the highest ``q``;
    else among the actions within ``tie_tolerance`` of the largest ``expected``, the highest ``q``
    (``tiebreak``, e.g. kinematic margins, first when given)."""
    out = np.asarray(proposed, dtype=np.int64).copy()
    for i in range(len(out)):
        if out[i] >= 0 and safe[i, out[i]]:  # -1: an invalid proposal, never kept
            continue
        if safe[i].any():
            out[i] = int(np.argmax(np.where(safe[i], q[i], -np.inf)))
            continue
        near = expected[i] >= expected[i].max() - tie_tolerance
        if tiebreak is not None:  # among the least bad, the larger margin first, then Q
            tb = np.where(near, tiebreak[i], -np.inf)
            near = near & (tb >= tb.max() - 1.0)
        out[i] = int(np.argmax(np.where(near, q[i], -np.inf)))
    return out


class _Base:
    def __init__(self, critic: str = "critic_stock.onnx", threshold: float = 0.5,
                 tie_tolerance: float = 0.25, aggregate: str = "mean", kinematic: bool = False,
                 kin_threshold: float = 3.0, target_speeds: list[float] = (20.0, 25.0, 30.0),  # type: ignore
                 ) -> None:
        self.critic = Critic(critic, aggregate)
        self.threshold = float(threshold)
        self.tie_tolerance = float(tie_tolerance)
        self.kin = None
        self.kin_threshold = float(kin_threshold)
        if kinematic:
            from kinematic_model import KinematicModel

            self.kin = KinematicModel(target_speeds=tuple(float(s) for s in target_speeds), horizon=1,
                                      followups=("hold", "brake"))

    def assess(self, observations: np.ndarray) -> tuple[np.ndarray, ...]:
        """(safe [B, 5] bool, p_safe, expected, kinematic margins [B, 5] or None)."""
        p_safe, expected = self.critic(observations)
        safe = p_safe >= self.threshold
        margins = None
        if self.kin is not None:
            margins = self.kin.margins_all(np.asarray(observations, dtype=np.float64))
            safe = safe & (margins >= self.kin_threshold)
        return safe, p_safe, expected, margins


class CriticSafety(_Base):
    """``kind: python`` monitor: {"p_safe", "p_best", "expected", "improvable"} per row (module doc)."""

    def __call__(self, observations: np.ndarray, actions: np.ndarray, batch: Any) -> dict[str, np.ndarray]:
        safe, p_safe, expected, _ = self.assess(observations)
        actions = np.asarray(actions).reshape(-1)
        valid = (actions >= 0) & (actions < N_ACTIONS)
        a = np.where(valid, actions, 0).astype(np.int64)
        rows = np.arange(len(a))
        own_safe = safe[rows, a]
        behind = expected[rows, a] < expected.max(axis=1) - self.tie_tolerance
        better = ~own_safe & (safe.any(axis=1) | behind)
        nan = np.full(len(a), np.nan)
        return {"p_safe": np.where(valid, p_safe[rows, a], nan),
                "safe": np.where(valid, own_safe.astype(np.float64), nan),
                "p_best": p_safe.max(axis=1),
                "expected": np.where(valid, expected[rows, a], nan),
                "improvable": np.where(valid, better.astype(np.float64), np.nan)}


class CriticChoice(_Base):
    """``kind: python`` fallback: :func:`critic_choice` with Q from ``scores`` (an ONNX
    obs [batch, 25] -> Q [batch, 5]). ``propose: agent`` keeps the incoming proposal as the
    candidate; ``propose: scores`` proposes the argmax of ``scores`` instead (a backup driving)."""

    def __init__(self, scores: str = "agent.onnx", propose: str = "agent", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if propose not in ("agent", "scores"):
            raise ValueError(f"propose must be agent or scores, got {propose!r}")
        self.propose = propose
        self.session = _session(scores)
        self.input = self.session.get_inputs()[0].name

    def q(self, observations: np.ndarray) -> np.ndarray:
        obs = np.asarray(observations, dtype=np.float32).reshape(len(observations), -1)
        return np.asarray(self.session.run(None, {self.input: obs})[0], dtype=np.float64)

    def __call__(self, observations: np.ndarray, actions: np.ndarray, batch: Any) -> np.ndarray:
        """obs [batch, 25], proposals [batch] -> meta-actions [batch] int64 (an invalid proposal is
        never kept)."""
        safe, _, expected, margins = self.assess(observations)
        q = self.q(observations)
        actions = np.asarray(actions).reshape(-1)
        if self.propose == "scores":
            actions = np.argmax(q, axis=1)
        valid = (actions >= 0) & (actions < N_ACTIONS)
        proposed = np.where(valid, actions, -1).astype(np.int64)
        return critic_choice(safe, expected, q, proposed, self.tie_tolerance, margins)


class CriticVetoChoice:
    """``kind: python`` fallback: today's shield choice (C2's, :func:`kinematic_model.shield_choice_ranked`:
    1 s margins to keep or not, a 2-decision look with lane-change follow-ups to rank substitutes)
    with a critic **veto**: an action whose critic P(safe) is below ``critic_threshold`` counts as
    unsafe in both looks (its 1 s margin capped just under ``threshold``, its ranking margin lowered
    by 100 m, so vetoed actions keep their order among themselves and come last). With
    ``relative`` > 0 an action is also vetoed when its P(safe) is more than ``relative`` below the
    best action's (a comparison, less dependent on the critic's calibration than a fixed level).
    With ``promote`` <= 1 an action whose P(safe) is at least ``promote`` counts as safe in both
    looks whatever its kinematic margins (the critic overrides the constant-velocity model).

    ``propose: agent`` judges the incoming proposal; ``propose: scores`` the argmax of ``scores``
    (the backup driving after a handover, as ``handover.ShieldedBackup``).
    """

    def __init__(self, critic: str = "critic_stock.onnx", critic_threshold: float = 0.5,
                 aggregate: str = "mean", scores: str = "agent.onnx", propose: str = "agent",
                 threshold: float = 3.0, tie_tolerance: float = 1.0,
                 target_speeds: list[float] = (20.0, 25.0, 30.0), rank_horizon: int = 2,  # type: ignore
                 relative: float = 0.0, promote: float = 2.0) -> None:
        from kinematic_model import KinematicModel

        if propose not in ("agent", "scores"):
            raise ValueError(f"propose must be agent or scores, got {propose!r}")
        speeds = tuple(float(v) for v in target_speeds)
        self.critic = Critic(critic, aggregate)
        self.critic_threshold = float(critic_threshold)
        self.relative = float(relative)
        self.promote = float(promote)
        self.threshold, self.tie_tolerance = float(threshold), float(tie_tolerance)
        self.model = KinematicModel(target_speeds=speeds, horizon=1, followups=("hold", "brake"))
        self.rank = KinematicModel(target_speeds=speeds, horizon=int(rank_horizon),
                                   followups=("hold", "brake", "left", "right"))
        self.propose = propose
        self.session = _session(scores)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, observations: np.ndarray, actions: np.ndarray, batch: Any) -> np.ndarray:
        from kinematic_model import shield_choice_ranked

        obs = np.asarray(observations, dtype=np.float64).reshape(len(observations), -1)
        q = np.asarray(self.session.run(None, {self.input: obs.astype(np.float32)})[0], dtype=np.float64)
        actions = np.asarray(actions).reshape(-1)
        if self.propose == "scores":
            actions = np.argmax(q, axis=1)
        margins, ranking = self.model.margins_all(obs), self.rank.margins_all(obs)
        p_safe, _ = self.critic(obs)
        veto = p_safe < self.critic_threshold
        if self.relative > 0:
            veto |= p_safe < p_safe.max(axis=1, keepdims=True) - self.relative
        margins = np.where(veto, np.minimum(margins, self.threshold - 0.1), margins)
        ranking = ranking - 100.0 * veto
        promoted = p_safe >= self.promote
        margins = np.where(promoted, np.maximum(margins, self.threshold), margins)
        ranking = np.where(promoted, np.maximum(ranking, self.threshold), ranking)
        n = len(actions)
        valid = (actions >= 0) & (actions < N_ACTIONS)
        margins6 = np.concatenate([margins, np.full((n, 1), -np.inf)], axis=1)
        ranking6 = np.concatenate([ranking, np.full((n, 1), -np.inf)], axis=1)
        q6 = np.concatenate([q, np.full((n, 1), -np.inf)], axis=1)
        proposed = np.where(valid, actions, N_ACTIONS).astype(np.int64)
        return shield_choice_ranked(margins6, ranking6, q6, proposed, self.threshold, self.tie_tolerance)


class CriticGuard:
    """The agent under the critic outside Interlock (for ``critic_data.py``'s 'critic' behaviour)."""

    def __init__(self, path: Path, threshold: float = 0.5, tie_tolerance: float = 0.25) -> None:
        self.critic = Critic(path)
        self.threshold, self.tie_tolerance = threshold, tie_tolerance

    def choose(self, obs: np.ndarray, q: np.ndarray) -> np.ndarray:
        p_safe, expected = self.critic(obs)
        return critic_choice(p_safe >= self.threshold, expected, q, np.argmax(q, axis=1),
                             self.tie_tolerance)


# ----------------------------------------------------------------------------------------------
# Training


def load(paths: list[Path]) -> dict[str, np.ndarray]:
    parts = [dict(np.load(p)) for p in paths]
    keys = ("obs", "surv", "seed", "density", "policy", "behaviour", "step")
    return {k: np.concatenate([d[k] for d in parts]) for k in keys} | {"depth": int(parts[0]["depth"])}


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic); NaN if one class is missing."""
    label = label.astype(bool)
    n1, n0 = label.sum(), (~label).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    return float((ranks[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def train(args: argparse.Namespace) -> None:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    data = load(args.data)
    depth = data["depth"]
    levels = args.levels or depth
    x = data["obs"].astype(np.float32)
    y = np.stack([data["surv"] >= j + 1 for j in range(levels)], axis=-1).astype(np.float32)  # [N, 5, L]
    seeds = np.unique(data["seed"])
    rng = np.random.default_rng(args.seed)
    n_val = max(1, int(len(seeds) * args.val_fraction))
    val_seeds = set(rng.choice(seeds, size=n_val, replace=False).tolist())
    is_val = np.array([s in val_seeds for s in data["seed"]])
    if args.no_val:
        is_val[:] = False
    tr, va = np.where(~is_val)[0], np.where(is_val)[0]
    mean, std = x[tr].mean(axis=0), x[tr].std(axis=0) + 1e-3
    print(f"data: {len(x)} states from {len(seeds)} episodes (val {len(va)} states), depth {depth}, "
          f"levels {levels}; safe (top level) rate {y[..., -1].mean():.3f}", flush=True)

    class Member(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            h = args.hidden
            self.net = nn.Sequential(nn.Linear(25, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(),
                                     nn.Linear(h, N_ACTIONS * levels))

        def forward(self, z):
            return self.net(z).reshape(-1, N_ACTIONS, levels)

    class Ensemble(nn.Module):
        def __init__(self, members) -> None:
            super().__init__()
            self.members = nn.ModuleList(members)
            self.register_buffer("mean", torch.tensor(mean))
            self.register_buffer("std", torch.tensor(std))

        def forward(self, obs):
            z = (obs - self.mean) / self.std
            return torch.stack([torch.sigmoid(m(z)) for m in self.members])  # [M, B, 5, L]

    xt, yt = torch.tensor((x - mean) / std), torch.tensor(y)
    members = []
    t0 = time.process_time()
    for m in range(args.members):
        torch.manual_seed(args.seed * 100 + m)
        boot = rng.choice(tr, size=len(tr), replace=True)
        net = Member()
        opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        loss_fn = nn.BCEWithLogitsLoss()
        for _epoch in range(args.epochs):
            perm = boot[rng.permutation(len(boot))]
            for i in range(0, len(perm), args.batch):
                b = perm[i:i + args.batch]
                loss = loss_fn(net(xt[b]), yt[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        members.append(net.eval())
        print(f"member {m}: train loss {float(loss):.4f}, cpu {time.process_time() - t0:.0f}s", flush=True)
    model = Ensemble(members).eval()
    report: dict[str, Any] = {"states": len(x), "episodes": len(seeds), "val_states": len(va),
                              "depth": int(depth), "levels": levels, "members": args.members,
                              "hidden": args.hidden, "epochs": args.epochs,
                              "train_cpu_s": time.process_time() - t0}
    if len(va):
        with torch.no_grad():
            p = model(torch.tensor(x[va])).numpy().mean(axis=0)  # [B, 5, L]
        top, lab = p[..., -1], y[va][..., -1]
        report["val_auc_top"] = auc(top.ravel(), lab.ravel())
        report["val_brier_top"] = float(((top - lab) ** 2).mean())
        dense = data["density"][va] >= 1.75
        report["val_auc_top_dense"] = auc(top[dense].ravel(), lab[dense].ravel())
        report["val_auc_top_nominalish"] = auc(top[~dense].ravel(), lab[~dense].ravel())
        # Decision quality: where some action is truly safe, does the critic's best action survive?
        any_safe = lab.any(axis=1)
        pick = np.argmax(top, axis=1)
        report["val_pick_safe_when_possible"] = float(lab[np.arange(len(pick)), pick][any_safe].mean())
        report["val_states_none_safe"] = float(1 - any_safe.mean())
        print(json.dumps(report, indent=1), flush=True)
    if args.out:
        torch.onnx.export(model, torch.zeros(1, 25), str(args.out), input_names=["obs"], output_names=["p"],
                          dynamic_axes={"obs": {0: "batch"}, "p": {1: "batch"}}, opset_version=18)
        import onnx

        proto = onnx.load(str(args.out))  # one self-contained file (the exporter may write .data)
        onnx.save(proto, str(args.out), save_as_external_data=False)
        Path(str(args.out) + ".data").unlink(missing_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(
            report | {"data": [str(p) for p in args.data]}, indent=1) + "\n")
        print(f"wrote {args.out}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("data", type=Path, nargs="+")
    t.add_argument("--out", type=Path)
    t.add_argument("--levels", type=int, default=0, help="0: the data's depth.")
    t.add_argument("--members", type=int, default=5)
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--batch", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=1e-3)
    t.add_argument("--val-fraction", type=float, default=0.15)
    t.add_argument("--no-val", action="store_true", help="Train on every episode (after choosing settings).")
    t.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.cmd == "train":
        train(args)
    else:
        sys.exit(f"unknown command {args.cmd}")


if __name__ == "__main__":
    main()
