"""Constraint margins for the model-predictive shield, from in-distribution episodes only.

``interlock shield calibrate`` measures how wrong the monitor's dynamics model is on logged
in-distribution transitions (a transitions ``.npz`` with ``obs``, ``action``, ``next_obs`` and
``episode`` or end flags, rows in time order; see :mod:`interlock.ensembles.data`):

* one step: for every row, the worst member's ``|predicted - actual|`` next observation, per
  dimension: its ``quantile`` and mean, and the ensemble mean's signed bias;
* ``h`` steps (``h = 1 .. steps``): from sampled start rows, every member is rolled forward
  *open loop* with the actions that were actually taken, and compared with the observations
  that actually followed (within the same episode): the ``quantile`` of the worst member's error
  per dimension and step.

The suggested margin of dimension ``i`` is the largest of those quantiles over ``h <= steps``:
a rollout state that keeps that distance from a constraint's boundary would, with the given
probability per step, still be inside it in the real (in-distribution) world. Open-loop errors
grow faster than those of a closed-loop rollout, so this errs on the cautious side; the per-step
table lets the operator choose a shorter ``steps``. Shifted data must not be used: margins tuned
on the shift would hide it.

The report names, for each constraint whose atoms are simple bounds
(``obs[i] < c``, ``obs[i] > c``, ``math.abs(obs[i]) < c``, with ``<=``/``>=`` too), the constraint
tightened by the margins; others are listed for the operator to tighten by hand.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from interlock.ensembles.common import EnsembleError
from interlock.ensembles.data import load_transitions
from interlock.errors import ConfigError
from interlock.reachability.recoverability import Dynamics

_ATOM = re.compile(
    r"(?P<abs>math\.abs\(\s*)?obs\[(?P<i>\d+)\](?(abs)\s*\))\s*(?P<op><=|>=|<|>)\s*(?P<c>[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
)


@dataclass
class MarginReport:
    """What :func:`measure_margins` measured (all per-dimension lists have ``obs_dim`` entries)."""

    agent: str
    monitor: str
    data: str
    rows: int
    episodes: int
    quantile: float
    steps: int
    one_step_quantile: list[float]
    one_step_mean_abs: list[float]
    one_step_bias: list[float]
    rollout_quantile: list[list[float]]
    rollout_starts: int
    margins: list[float]
    constraints: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def summary(self) -> str:
        fmt = ", ".join
        q = f"q{self.quantile:g}"
        lines = [
            f"{self.agent}/{self.monitor}: {self.rows} in-distribution transitions in {self.episodes} "
            f"episodes ({self.data})",
            f"  one-step worst-member error, {q}: [{fmt(f'{v:.4g}' for v in self.one_step_quantile)}]",
            f"  one-step ensemble-mean bias: [{fmt(f'{v:.3g}' for v in self.one_step_bias)}]",
            f"  {self.steps}-step open-loop error, q{self.quantile:g} ({self.rollout_starts} starts): "
            f"[{fmt(f'{v:.4g}' for v in self.rollout_quantile[-1])}]",
            f"  suggested margins: [{fmt(f'{v:.4g}' for v in self.margins)}]",
        ]
        for name, c in self.constraints.items():
            lines.append(f"  {name}: {c['source']}  ->  {c['suggested'] or '(tighten by hand)'}")
        return "\n".join(lines)

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return p


def tighten(source: str, margins: list[float]) -> str | None:
    """``source`` with every simple bound moved inwards by its dimension's margin; None if any part
    of the expression is not ``&&`` / ``||`` / parentheses of such bounds."""
    rest = _ATOM.sub("", source)
    if re.sub(r"[\s()&|]", "", rest):
        return None

    def moved(m: re.Match) -> str:
        i, op, c = int(m["i"]), m["op"], float(m["c"])
        if i >= len(margins):
            return m.group(0)
        c2 = c - margins[i] if op.startswith("<") else c + margins[i]
        lhs = f"math.abs(obs[{i}])" if m["abs"] else f"obs[{i}]"
        return f"{lhs} {op} {c2:.6g}"

    return _ATOM.sub(moved, source)


def measure_margins(
    dynamics: Dynamics,
    data_path: str | Path,
    *,
    quantile: float = 0.99,
    steps: int = 1,
    max_starts: int = 2000,
    seed: int = 0,
    constraints: dict[str, str] | None = None,
    agent: str = "",
    monitor: str = "",
) -> MarginReport:
    """Model error of ``dynamics`` on in-distribution transitions, and margins from it (module docstring).

    Raises:
        EnsembleError: the data has no ``next_obs`` or does not fit the model.
    """
    if not 0.0 < quantile < 1.0:
        raise EnsembleError(f"the quantile must be in (0, 1), got {quantile}")
    if steps < 1:
        raise EnsembleError(f"steps must be at least 1, got {steps}")
    data = load_transitions(data_path)
    nxt = data.get("next_obs")
    if nxt is None:
        raise EnsembleError(f"{data.source} has no 'next_obs' array; margins need observed next states")
    n, d = data.obs.shape
    nxt = np.asarray(nxt, np.float64).reshape(n, -1)
    if d != dynamics.obs_dim or nxt.shape[1] != d:
        raise EnsembleError(
            f"{data.source}: observations have {d} values ({nxt.shape[1]} in next_obs); the model's "
            f"obs_dim is {dynamics.obs_dim}"
        )
    obs = data.obs.astype(np.float64)
    action = np.asarray(data.action)
    ep = data.episodes()

    pred = dynamics.first(obs, action)  # [K, N, d]
    err = np.abs(pred - nxt[None]).max(axis=0)
    one_q = np.quantile(err, quantile, axis=0)
    bias = (nxt - pred.mean(axis=0)).mean(axis=0)

    rng = np.random.default_rng(seed)
    starts = np.arange(n)
    if len(starts) > max_starts:
        starts = np.sort(rng.choice(starts, max_starts, replace=False))
    K = pred.shape[0]
    states = pred[:, starts].copy()  # [K, M, d] after the first step
    per_step = [np.quantile(err[starts], quantile, axis=0)]
    alive = np.ones(len(starts), bool)
    for h in range(2, steps + 1):
        rows = starts + h - 1
        ok = rows < n
        ok[ok] &= ep[rows[ok]] == ep[starts[ok]]
        alive &= ok
        if not alive.any():
            per_step.append(np.full(d, np.nan))
            continue
        idx = np.flatnonzero(alive)
        acts = np.broadcast_to(action[rows[idx]], (K, *action[rows[idx]].shape))
        states[:, idx] = dynamics.step(states[:, idx], np.ascontiguousarray(acts))
        e = np.abs(states[:, idx] - nxt[rows[idx]][None]).max(axis=0)
        e = np.where(np.isfinite(e), e, np.inf)
        per_step.append(np.quantile(e, quantile, axis=0))
    table = np.array(per_step)
    margins = np.nanmax(table, axis=0)
    report = MarginReport(
        agent=agent,
        monitor=monitor,
        data=str(data.source),
        rows=n,
        episodes=len(np.unique(ep)),
        quantile=quantile,
        steps=steps,
        one_step_quantile=one_q.tolist(),
        one_step_mean_abs=err.mean(axis=0).tolist(),
        one_step_bias=bias.tolist(),
        rollout_quantile=table.tolist(),
        rollout_starts=len(starts),
        margins=margins.tolist(),
    )
    for name, src in (constraints or {}).items():
        report.constraints[name] = {"source": src, "suggested": tighten(src, report.margins)}
    return report


def calibrate_margins(
    config: str | Path,
    agent_id: str,
    data: str | Path,
    monitor: str | None = None,
    **kwargs,
) -> MarginReport:
    """Load ``config``, find ``agent_id``'s dynamics reachability monitor and measure its margins."""
    from interlock.config import load_config
    from interlock.engine import Guard
    from interlock.monitors.reachability import RecoverabilityMonitor

    guard = Guard(load_config(config))
    rt = next((a for a in guard.agents if a.config.id == agent_id), None)
    if rt is None:
        have = ", ".join(a.config.id for a in guard.agents)
        raise ConfigError(f"{config} has no agent '{agent_id}' (agents: {have})")
    mons = [m for m in rt.monitors if isinstance(m, RecoverabilityMonitor)]
    if monitor is not None:
        mons = [m for m in mons if m.name == monitor]
    if not mons:
        raise ConfigError(
            f"{config}: agent '{agent_id}' has no reachability monitor with a dynamics model"
            + (f" named '{monitor}'" if monitor else "")
        )
    mon = mons[0]
    mon.load()
    kwargs.setdefault("steps", mon.cfg.horizon)
    return measure_margins(
        mon.require_engine().dynamics,
        data,
        constraints=dict(mon.cfg.constraints),
        agent=agent_id,
        monitor=mon.name,
        **kwargs,
    )
