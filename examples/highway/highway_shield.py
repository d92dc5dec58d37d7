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

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from kinematic_model import (
    N_ACTIONS,
    KinematicModel,
    estimate_accel,
    improvable,
    shield_choice,
    shield_choice_ranked,
    trapped_margins,
)

HERE = Path(__file__).resolve().parent


class EpisodeMemory:
    """The previous observation of each episode, for the others' observed accelerations.

    Keyed by ``(agent_id, episode_id)``; an entry holds the last step seen and its observation,
    and the step before (so a repeated check of the same step, e.g. a retried request, sees the
    same previous observation). A step that does not follow the stored one (step 0, a gap, another
    replica's episode) starts the episode afresh: no previous observation, constant velocity.
    Bounded: the least recently used episodes beyond ``max_episodes`` are dropped (about 0.3 kB
    each). Rows without an episode id keep no state.
    """

    def __init__(self, max_episodes: int = 10_000) -> None:
        self.max_episodes = int(max_episodes)
        self._lock = threading.Lock()
        # (agent_id, episode_id) -> (step, observation [25], previous observation or None)
        self._episodes: OrderedDict[tuple[str, str], tuple[int, np.ndarray, np.ndarray | None]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._episodes)

    def observe(self, agent_id: str, episode_id: str, step: int, obs: np.ndarray) -> np.ndarray | None:
        """Record ``obs`` [25] at ``step``; returns the episode's observation at ``step - 1`` or None."""
        if not episode_id:
            return None
        key = (agent_id, episode_id)
        obs = np.array(obs, dtype=np.float64).reshape(-1)
        with self._lock:
            entry = self._episodes.get(key)
            if entry is not None and entry[0] == step:
                previous = entry[2]  # the same step again: keep its previous observation
            elif entry is not None and entry[0] == step - 1:
                previous = entry[1]
            else:
                previous = None
            self._episodes[key] = (step, obs, previous)
            self._episodes.move_to_end(key)
            while len(self._episodes) > self.max_episodes:
                self._episodes.popitem(last=False)
        return previous

    def previous(self, agent_id: str, episode_id: str, step: int) -> np.ndarray | None:
        """The observation before ``step`` recorded by :meth:`observe` for this step, or None."""
        with self._lock:
            entry = self._episodes.get((agent_id, episode_id))
        return entry[2] if entry is not None and entry[0] == step else None


#: One memory per name, shared by an agent's monitor (which records every row) and its fallback
#: (which sees only the substituted rows). Name it per config (``memory:`` kwarg) when several
#: configs run in one process.
_MEMORIES: dict[str, EpisodeMemory] = {}
_MEMORIES_LOCK = threading.Lock()


def episode_memory(name: str) -> EpisodeMemory:
    """The process's :class:`EpisodeMemory` called ``name`` (created on first use)."""
    with _MEMORIES_LOCK:
        return _MEMORIES.setdefault(name, EpisodeMemory())


def _others_accel(memory: EpisodeMemory | None, observations: np.ndarray, batch: Any,
                  record: bool) -> np.ndarray | None:
    """[batch, 4] observed accelerations (0 without a previous observation), or None if off."""
    if memory is None:
        return None
    obs = np.asarray(observations, dtype=np.float64).reshape(len(observations), -1)
    agent_id = str(getattr(batch, "agent_id", ""))
    ids = list(getattr(batch, "episode_ids", None) or [""] * len(obs))
    steps = np.asarray(getattr(batch, "steps", np.zeros(len(obs))), dtype=np.int64).reshape(-1)
    accel = np.zeros((len(obs), 4))
    for i in range(len(obs)):
        step = int(steps[i]) if i < len(steps) else 0
        prev = (memory.observe(agent_id, ids[i], step, obs[i]) if record
                else memory.previous(agent_id, ids[i], step))
        if prev is not None:
            accel[i] = estimate_accel(prev[None], obs[i][None])[0]
    return accel


def onnx_session(path: str | Path, what: str = "model"):
    """A single-threaded CPU ONNX Runtime session for ``path`` (relative paths: this folder)."""
    import onnxruntime as ort

    path = Path(path) if Path(path).is_absolute() else HERE / path
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} is missing (train it: examples/highway/train_agent.py)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _model(target_speeds, horizon, followups, lead_decel, lateral_clearance) -> KinematicModel:
    return KinematicModel(
        target_speeds=tuple(float(s) for s in target_speeds),
        horizon=int(horizon),
        followups=tuple(followups),
        lead_decel=float(lead_decel),
        lateral_clearance=float(lateral_clearance),
    )


def _rank_model(target_speeds, rank_horizon, lead_decel, lateral_clearance) -> KinematicModel | None:
    """The longer look that ranks substitutes (and judges traps): all four follow-ups."""
    if int(rank_horizon) <= 0:
        return None
    followups = ("hold", "brake", "left", "right")
    return _model(target_speeds, rank_horizon, followups, lead_decel, lateral_clearance)


def _valid(actions: np.ndarray) -> np.ndarray:
    """[batch] bool: the action is a meta-action index 0..4."""
    a = np.asarray(actions)
    return (a >= 0) & (a < N_ACTIONS)


class ShieldMargins:
    """``kind: python`` monitor: the proposed action's margin, the best margin (m), and whether a
    strictly safer meta-action exists.

    Args:
        target_speeds: the env's ``action.target_speeds`` (m/s, ascending): the model must know
            what FASTER / SLOWER reach.
        horizon, followups, lead_decel, lateral_clearance: :class:`KinematicModel` settings.
        threshold, tie_tolerance: the choice rule's (m; the fallback's must be the same), for the
            ``improvable`` signal (:func:`kinematic_model.improvable`).
        observed_accel: the others keep the acceleration observed over the episode's last decision
            (:func:`kinematic_model.estimate_accel` from the previous observation, kept per
            ``(agent_id, episode_id)`` in :class:`EpisodeMemory`); False: constant velocity.
        memory: the :class:`EpisodeMemory` name, the same in the agent's fallback.
        rank_horizon, trap_threshold: with both set, an action whose margin over ``rank_horizon``
            decisions (follow-ups hold, brake, left, right) is below ``trap_threshold`` m counts
            as unsafe (:func:`kinematic_model.trapped_margins`); the fallback's must be the same.
    """

    def __init__(
        self,
        target_speeds: list[float] = (20.0, 25.0, 30.0),  # type: ignore[assignment]
        horizon: int = 1,
        followups: list[str] = ("hold", "brake"),  # type: ignore[assignment]
        lead_decel: float = 0.0,
        lateral_clearance: float = 2.0,
        threshold: float = 3.0,
        tie_tolerance: float = 1.0,
        observed_accel: bool = False,
        memory: str = "highway",
        rank_horizon: int = 0,
        trap_threshold: float | None = None,
    ) -> None:
        self.model = _model(target_speeds, horizon, followups, lead_decel, lateral_clearance)
        self.threshold = float(threshold)
        self.tie_tolerance = float(tie_tolerance)
        self.memory = episode_memory(memory) if observed_accel else None
        self.rank_model = _rank_model(target_speeds, rank_horizon, lead_decel, lateral_clearance)
        self.trap_threshold = None if trap_threshold is None else float(trap_threshold)
        if self.trap_threshold is not None and self.rank_model is None:
            raise ValueError("trap_threshold needs rank_horizon >= 1 (the horizon the trap is judged over)")

    def __call__(self, observations: np.ndarray, actions: np.ndarray, batch: Any) -> dict[str, np.ndarray]:
        """obs [batch, 25], actions [batch] -> {"margin", "best_margin"} (m) and {"improvable"}
        (1.0: a strictly safer action exists, so the choice rule changes the proposal; 0.0 else;
        NaN for an action outside 0..4), each [batch]."""
        accel = _others_accel(self.memory, observations, batch, record=True)
        margins = self.model.margins_all(observations, accel)  # [batch, 5]
        if self.trap_threshold is not None:
            ranking = self.rank_model.margins_all(observations, accel)  # type: ignore[union-attr]
            margins = trapped_margins(margins, ranking, self.trap_threshold)
        actions = np.asarray(actions).reshape(-1)
        valid = _valid(actions)
        rows = np.arange(len(actions))
        safe_index = np.where(valid, actions, 0).astype(np.int64)
        proposed = np.where(valid, margins[rows, safe_index], np.nan)
        better = improvable(margins, safe_index, self.threshold, self.tie_tolerance).astype(np.float64)
        return {"margin": proposed, "best_margin": margins.max(axis=1),
                "improvable": np.where(valid, better, np.nan)}


class ShieldChoice:
    """``kind: python`` fallback: :func:`kinematic_model.shield_choice` with the agent's Q.

    Args:
        threshold: the margin (m) an action needs to be safe (the monitor's signal threshold).
        tie_tolerance: margins within this many metres of the largest tie when nothing is safe.
        scores: the agent's ONNX (``obs`` [batch, 25] -> Q [batch, 5]); relative to this folder.
        target_speeds, horizon, followups, lead_decel, lateral_clearance, observed_accel, memory:
            as :class:`ShieldMargins` (the same values).
        rank_horizon: > 0: rank the substitutes by a second model of this many decisions with
            follow-ups hold, brake, left and right (:func:`kinematic_model.shield_choice_ranked`);
            0: :func:`kinematic_model.shield_choice`.
        trap_threshold: as :class:`ShieldMargins` (the same value).
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
        observed_accel: bool = False,
        memory: str = "highway",
        rank_horizon: int = 0,
        trap_threshold: float | None = None,
    ) -> None:
        self.threshold = float(threshold)
        self.tie_tolerance = float(tie_tolerance)
        self.model = _model(target_speeds, horizon, followups, lead_decel, lateral_clearance)
        self.memory = episode_memory(memory) if observed_accel else None
        self.rank_model = _rank_model(target_speeds, rank_horizon, lead_decel, lateral_clearance)
        self.trap_threshold = None if trap_threshold is None else float(trap_threshold)
        if self.trap_threshold is not None and self.rank_model is None:
            raise ValueError("trap_threshold needs rank_horizon >= 1 (the horizon the trap is judged over)")
        self.session = onnx_session(scores, "scores model")
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
        accel = _others_accel(self.memory, observations, batch, record=False)
        margins = self.model.margins_all(observations, accel)  # [batch, 5]
        q = self.q(observations)
        actions = np.asarray(actions).reshape(-1)
        # An invalid proposal becomes a sixth column that is never safe and never chosen.
        n = len(actions)
        margins6 = np.concatenate([margins, np.full((n, 1), -np.inf)], axis=1)
        q6 = np.concatenate([q, np.full((n, 1), -np.inf)], axis=1)
        proposed = np.where(_valid(actions), actions, N_ACTIONS).astype(np.int64)
        if self.rank_model is None:
            return shield_choice(margins6, q6, proposed, self.threshold, self.tie_tolerance)
        ranking = self.rank_model.margins_all(observations, accel)
        if self.trap_threshold is not None:
            margins6[:, :N_ACTIONS] = trapped_margins(margins, ranking, self.trap_threshold)
        ranking6 = np.concatenate([ranking, np.full((n, 1), -np.inf)], axis=1)
        return shield_choice_ranked(margins6, ranking6, q6, proposed, self.threshold, self.tie_tolerance)
