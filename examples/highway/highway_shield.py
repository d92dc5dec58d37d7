"""The five-action kinematic shield of ``shield_study.py`` as Interlock ``kind: python`` plugins.

``interlock.yaml`` (stock target speeds 20, 25, 30 m/s) and ``interlock_cpss.yaml`` (0, 5, ..., 30)
run the study's chosen design ``h1_t3_tie`` through Interlock's engine:

* a ``kind: python`` **monitor** (:class:`ShieldMargins`) returns, per row, the proposed action's
  kinematic margin (m) and the best margin of the five meta-actions; the signal ``margin`` trips
  below 3 m (``direction: below``), exactly the study's "unsafe" (safe = margin >= threshold);
* a CEL rule ``tripped.shield.margin`` -> SUBSTITUTE with
* a ``kind: python`` **fallback** (:class:`ShieldChoice`) that applies the study's choice rule,
  :func:`kinematic_model.shield_choice`: the agent's action if its margin >= threshold, else the safe
  action with the highest Q from the agent's ONNX, else the largest margin with the agent's Q
  breaking ties within ``tie_tolerance`` (1 m).

Both call :meth:`kinematic_model.KinematicModel.margins_all` (the fallback again for its substituted
rows, like the built-in ``shield_choice`` re-rolls the reachability monitor's candidates). The
monitor's ``threshold`` and the fallback's ``threshold`` must be the same number (3.0 in both
configs; ``tests/test_highway_shield.py`` checks it).

Why not the ``reachability`` monitor with ``model: {kind: python}`` and the built-in
``shield_choice``: its margin counts whole model steps before a CEL constraint on the predicted
next observation breaks, while this shield's margin is the smallest bumper gap in metres over the
5 simulation sub-steps inside one decision, with a best-of-follow-ups rule, and when nothing is safe
it picks the largest metre margin with a Q tie-break; the built-in ranking (fewest failing members,
then most steps) cannot express that without smuggling the gap through a fake observation feature.

Module path: Interlock imports ``highway_shield`` with :func:`importlib.import_module` and does NOT
add the config's folder to ``sys.path``. Put this folder on the server's path::

    PYTHONPATH=examples/highway interlock config check examples/highway/interlock.yaml
    PYTHONPATH=examples/highway interlock serve --config examples/highway/interlock.yaml

(``interlock bench safety`` and the tests add it themselves.) ``scores:`` is resolved against this
module's folder when relative.

Interfaces (numpy in, numpy out; see docs/shield.md "Plugins"):

* monitor: ``(observations [batch, 25] float32, actions [batch] int64, batch) ->
  {"margin": [batch], "best_margin": [batch]}`` float64 metres; an action outside 0..4 gets NaN
  (a NaN signal trips: fail closed);
* fallback: ``(observations [batch, 25], actions [batch], batch) -> [batch] int64`` in 0..4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from kinematic_model import N_ACTIONS, KinematicModel, shield_choice

HERE = Path(__file__).resolve().parent


def _model(target_speeds, horizon, followups, lead_decel, lateral_clearance) -> KinematicModel:
    return KinematicModel(
        target_speeds=tuple(float(s) for s in target_speeds),
        horizon=int(horizon),
        followups=tuple(followups),
        lead_decel=float(lead_decel),
        lateral_clearance=float(lateral_clearance),
    )


def _valid(actions: np.ndarray) -> np.ndarray:
    """[batch] bool: the action is a meta-action index 0..4."""
    a = np.asarray(actions)
    return (a >= 0) & (a < N_ACTIONS)


class ShieldMargins:
    """``kind: python`` monitor: the proposed action's margin and the best margin (m).

    Args:
        target_speeds: the env's ``action.target_speeds`` (m/s, ascending): the model must know
            what FASTER / SLOWER reach.
        horizon, followups, lead_decel, lateral_clearance: :class:`KinematicModel` settings
            (``h1_t3_tie``: horizon 1, both follow-ups, no leader braking, 2 m).
    """

    def __init__(
        self,
        target_speeds: list[float] = (20.0, 25.0, 30.0),  # type: ignore[assignment]
        horizon: int = 1,
        followups: list[str] = ("hold", "brake"),  # type: ignore[assignment]
        lead_decel: float = 0.0,
        lateral_clearance: float = 2.0,
    ) -> None:
        self.model = _model(target_speeds, horizon, followups, lead_decel, lateral_clearance)

    def __call__(self, observations: np.ndarray, actions: np.ndarray, batch: Any) -> dict[str, np.ndarray]:
        """obs [batch, 25], actions [batch] -> {"margin": [batch], "best_margin": [batch]} (m)."""
        margins = self.model.margins_all(observations)  # [batch, 5]
        actions = np.asarray(actions).reshape(-1)
        valid = _valid(actions)
        rows = np.arange(len(actions))
        proposed = np.where(valid, margins[rows, np.where(valid, actions, 0)], np.nan)
        return {"margin": proposed, "best_margin": margins.max(axis=1)}


class ShieldChoice:
    """``kind: python`` fallback: :func:`kinematic_model.shield_choice` with the agent's Q.

    Args:
        threshold: the margin (m) an action needs to be safe (the monitor's signal threshold).
        tie_tolerance: margins within this many metres of the largest tie when nothing is safe.
        scores: the agent's ONNX (``obs`` [batch, 25] -> Q [batch, 5]); relative to this folder.
        target_speeds, horizon, followups, lead_decel, lateral_clearance: as :class:`ShieldMargins`.
    """

    def __init__(
        self,
        threshold: float,
        tie_tolerance: float = 1.0,
        scores: str = "agent.onnx",
        target_speeds: list[float] = (20.0, 25.0, 30.0),  # type: ignore[assignment]
        horizon: int = 1,
        followups: list[str] = ("hold", "brake"),  # type: ignore[assignment]
        lead_decel: float = 0.0,
        lateral_clearance: float = 2.0,
    ) -> None:
        import onnxruntime as ort

        self.threshold = float(threshold)
        self.tie_tolerance = float(tie_tolerance)
        self.model = _model(target_speeds, horizon, followups, lead_decel, lateral_clearance)
        path = Path(scores) if Path(scores).is_absolute() else HERE / scores
        if not path.exists():
            raise FileNotFoundError(
                f"scores model {path} is missing (train it: examples/highway/train_agent.py)"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def q(self, observations: np.ndarray) -> np.ndarray:
        """The agent's Q-values: obs [batch, 25] (or [batch, 5, 5]) -> [batch, 5]."""
        obs = np.asarray(observations, dtype=np.float32).reshape(len(observations), -1)
        q = np.asarray(self.session.run(None, {self.input: obs})[0], dtype=np.float64)
        if q.shape != (len(obs), N_ACTIONS):
            raise ValueError(f"scores model returned shape {list(q.shape)}; expected [{len(obs)}, 5]")
        return q

    def __call__(self, observations: np.ndarray, actions: np.ndarray, batch: Any) -> np.ndarray:
        """obs [batch, 25], proposed [batch] -> chosen meta-actions [batch] int64."""
        margins = self.model.margins_all(observations)  # [batch, 5]
        q = self.q(observations)
        actions = np.asarray(actions).reshape(-1)
        # An invalid proposal becomes a sixth column that is never safe and never chosen.
        n = len(actions)
        margins6 = np.concatenate([margins, np.full((n, 1), -np.inf)], axis=1)
        q6 = np.concatenate([q, np.full((n, 1), -np.inf)], axis=1)
        proposed = np.where(_valid(actions), actions, N_ACTIONS).astype(np.int64)
        return shield_choice(margins6, q6, proposed, self.threshold, self.tie_tolerance)
