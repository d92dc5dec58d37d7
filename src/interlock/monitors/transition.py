"""The ``transition`` monitor: did the world do what the dynamics ensemble expected? (docs/shift.md)

A shift of the dynamics (wind, a heavier load, a longer pole) is often invisible in any
single state and plain in what happens next. For each check, this monitor takes the agent's
previous observation and the action Interlock answered for it (the engine tells monitors
what was executed through :meth:`~interlock.monitors.base.Monitor.after_decide`), predicts
the next observation with a fused dynamics ensemble (the same format and loader as the
``uncertainty`` monitor: one session run per batch, ``[K, batch, obs_dim]``), and compares the
members' mean prediction with the observation that arrived.

Signals (``<name>.<signal>``):

=================  =====================================================================
``surprise``       RMS (or max, or mean square, each z^2 optionally clipped) over dimensions
                   of the residual divided by its calibrated in-distribution scale (one per
                   dimension, or with ``spread: per_action`` one per executed action and
                   dimension; with ``disagreement: add`` combined with the members' spread,
                   :meth:`TransitionMonitor.surprise`); 0 where the episode has no previous step
``shift``          ``statistic: energy`` (default): CUSUM over the episode,
                   ``S = max(0, S + surprise - drift)``; ``statistic: signed``: two-sided
                   CUSUMs of each selected dimension's normalised residual ``z`` per group
                   (:func:`signed_update`), the largest of them; tripped above its
                   threshold (per-episode false-alarm target)
``shifted``        1.0 from the first trip of ``shift`` to the end of the episode
``residual_bias``  RMS over dimensions of the episode's EW mean residual / scale
``scored``         how many of the episode's transitions the monitor has scored so far (those
                   ``score_when`` and ``score_actions`` let through): the evidence behind ``shift``,
                   for rules that act on a lower bar only once enough of it is in (never trips)
=================  =====================================================================

Sequencing per ``(agent_id, episode_id)`` (state in :class:`~interlock.episodes.EpisodeStore`):

* no state (new episode, lost or expired state), step 0, or a step below the last one (the
  episode was rewound): the episode starts afresh, surprise 0, statistic 0;
* the next step (last + 1) with a known executed action: a transition to predict;
* the same step again (a retry): the surprise it had, the statistic not advanced twice;
* the next step, but ``score_when`` does not hold for the previous or the arrived observation, or
  the executed action is not one of ``score_actions``: surprise 0, the statistic and the residual
  bias kept as they were;
* a step that skips ahead, or an unknown executed action (an action outside the space, a
  failed decision): no transition to predict, surprise 0, the statistic kept as it was;
* an empty episode_id: no episode, surprise 0 (the agent must send episode ids).

Rows of one episode in one batch are taken in step order; a later row's previous action is the
earlier row's proposed action (its decision is not known yet). ``check`` changes no state until
every row is computed, so the engine's row-by-row retry after a failure counts nothing twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from interlock.batch import Batch, SignalBatch
from interlock.config import TransitionMonitorConfig
from interlock.ensembles.model import EnsembleModel, file_sha256
from interlock.ensembles.thresholds import read_monitor_entry
from interlock.episodes import EpisodeFacts, EpisodeState, EpisodeStore
from interlock.errors import ConfigError
from interlock.monitors.base import Monitor
from interlock.reachability.constraints import BatchedCondition

log = logging.getLogger(__name__)

__all__ = [
    "SIGNALS",
    "SIGNED_DRIFT",
    "Prediction",
    "TransitionMonitor",
    "aggregate_surprise",
    "cusum",
    "normalised_residual",
    "signed_cusum",
    "signed_cusum_streams",
    "signed_update",
    "surprise_of",
]

SIGNALS = ("surprise", "shift", "shifted", "residual_bias", "scored")

#: The drift ``k`` of ``statistic: signed`` when the config sets none, in z units (scale units): the
#: CUSUM for a mean shift of ``delta`` is tuned at ``k = delta / 2``, so 0.5 aims at a persistent
#: shift of about one scale unit (LunarLander's weaker main engine: mean z of vy about -1.1) while an
#: in-distribution episode (mean z about 0 +- 0.1) drifts down by 0.4-0.6 per step.
SIGNED_DRIFT = 0.5


def normalised_residual(
    residual: np.ndarray, scale: np.ndarray, dims: np.ndarray | None = None
) -> np.ndarray:
    """``[n, len(dims)]`` (all dims by default) float64 ``z = residual / scale`` of ``[n, obs_dim]``
    residuals: the one normalisation behind ``surprise`` and the signed statistic.

    ``scale`` is ``[obs_dim]`` (one scale per dimension) or ``[n, obs_dim]`` (one per row: the scale of
    the action each row executed, ``spread: per_action``).
    """
    scale = np.asarray(scale, np.float64)
    z = np.asarray(residual, np.float64) / (scale[None, :] if scale.ndim == 1 else scale)
    return z if dims is None else z[:, dims]


def surprise_of(
    residual: np.ndarray,
    scale: np.ndarray,
    dims: np.ndarray | None = None,
    aggregate: str = "rms",
    clip: float | None = None,
) -> np.ndarray:
    """``[n]`` surprise of ``[n, obs_dim]`` residuals, each divided by ``scale``
    (:func:`normalised_residual`, then :func:`aggregate_surprise`)."""
    return aggregate_surprise(normalised_residual(residual, scale, dims), aggregate, clip)


def aggregate_surprise(z: np.ndarray, aggregate: str = "rms", clip: float | None = None) -> np.ndarray:
    """``[n]`` surprise of ``[n, d]`` normalised residuals ``z``.

    With ``clip`` capping each ``z^2``: ``rms``: root mean square over dimensions (about 1 in
    distribution when the scale is the residual's RMS); ``max``: the largest ``|z|``; ``mean_sq``: the
    mean of ``z^2`` (residual energy).
    """
    sq = z * z if clip is None else np.minimum(z * z, clip)
    if aggregate == "max":
        return np.sqrt(sq.max(axis=1))
    if aggregate == "mean_sq":
        return sq.mean(axis=1)
    return np.sqrt(np.mean(sq, axis=1))


class Prediction(NamedTuple):
    """The dynamics ensemble's answer for ``n`` transitions (one session run)."""

    #: ``[n, obs_dim]`` float64 members' mean next observation.
    next_obs: np.ndarray
    #: ``[n, obs_dim]`` float64 standard deviation over the K members' predictions (ddof 0).
    member_std: np.ndarray


def cusum(surprise: np.ndarray, drift: float) -> np.ndarray:
    """``[T]`` one-sided CUSUM ``S_t = max(0, S_{t-1} + s_t - drift)`` over one episode's surprises.

    A non-finite surprise leaves the statistic unchanged (the ``surprise`` signal trips on it).
    """
    out = np.zeros(len(surprise))
    s = 0.0
    for t, x in enumerate(np.asarray(surprise, np.float64).tolist()):
        if np.isfinite(x):
            s = max(0.0, s + x - drift)
        out[t] = s
    return out


def signed_update(sums: np.ndarray, z: np.ndarray, drift: float) -> np.ndarray:
    """One step of the two-sided CUSUM of ``statistic: signed``: the one formula the monitor and
    ``interlock calibrate`` share.

    Args:
        sums: ``[2, d]`` (``S+``, ``S-``) of one group before the step; not changed.
        z: ``[d]`` this step's normalised residuals (clipped to +-sqrt(clip) by the caller).
        drift: ``k`` (z units).

    Returns:
        ``[2, d]`` new array: ``S+ = max(0, S+ + z - k)``, ``S- = max(0, S- - z - k)``; a non-finite
        ``z`` leaves its dimension's pair as it was (the ``surprise`` signal trips on it).
    """
    z = np.asarray(z, np.float64)
    stepped = np.maximum(0.0, sums + np.stack([z, -z]) - drift)
    return np.where(np.isfinite(z)[None, :], stepped, sums)


def signed_cusum(z: np.ndarray, groups: np.ndarray, n_groups: int, drift: float) -> np.ndarray:
    """``[T]`` the ``statistic: signed`` shift value after each step of one episode.

    Args:
        z: ``[T, d]`` normalised residuals (NaN rows: not scored, nothing changes).
        groups: ``[T]`` int group of each step (executed action with ``spread: per_action``, else 0);
            a group outside ``[0, n_groups)`` updates nothing.
        n_groups: Groups kept.
        drift: ``k``.

    Returns:
        ``[T]`` the largest of the ``[2, n_groups, d]`` CUSUMs after each step (:func:`signed_update`).
    """
    return signed_cusum_streams(z, groups, n_groups, drift)[0]


def signed_cusum_streams(
    z: np.ndarray, groups: np.ndarray, n_groups: int, drift: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`signed_cusum` and, for calibration's report, where its value comes from.

    Returns:
        ``[T]`` the shift value after each step, and ``[2, n_groups, d]`` each CUSUM's (side, group,
        dimension) largest value over the episode.
    """
    sums = np.zeros((2, n_groups, z.shape[1]))
    peak = np.zeros_like(sums)
    out = np.zeros(len(z))
    for t, g in enumerate(np.asarray(groups).tolist()):
        if 0 <= g < n_groups:
            sums[:, g] = signed_update(sums[:, g], z[t], drift)
            peak[:, g] = np.maximum(peak[:, g], sums[:, g])
        out[t] = sums.max()
    return out, peak


@dataclass
class _Row:
    """What ``check`` does with one row (``plan``: fresh | predict | repeat | gap | none)."""

    plan: str
    state: EpisodeState | None = None
    prev_obs: np.ndarray | None = None
    prev_action: np.ndarray | None = None
    #: The state this row continues (stored, or an earlier row's of this batch, updated before this one).
    parent: EpisodeState | None = None


class TransitionMonitor(Monitor):
    """Surprise of observed transitions and an episode-level shift statistic (module docstring).

    Args:
        cfg: The monitor's config section.
        spaces: The agent's spaces.
        runtime: Shared ONNX sessions and path resolution.
        where: Config location for messages.
        require_thresholds: False only for calibration (a missing scale or threshold is then NaN).
        store: The episode store (default: a new one from the config's bounds).
    """

    kind = "transition"

    def __init__(
        self,
        cfg: TransitionMonitorConfig,
        spaces: Any,
        runtime: Any,
        where: str = "transition",
        require_thresholds: bool = True,
        store: EpisodeStore | None = None,
    ) -> None:
        super().__init__(cfg.name, spaces, runtime)
        self.cfg = cfg
        self.where = where
        self.obs_dim = int(np.prod(spaces.observation.shape))
        unknown = sorted(set(cfg.thresholds) - set(SIGNALS))
        if unknown:
            raise ConfigError(
                f"{where}.thresholds names {', '.join(unknown)}; a transition monitor's signals are "
                f"{', '.join(SIGNALS)}"
            )
        if cfg.dims is not None:
            bad = [d for d in cfg.dims if d >= self.obs_dim]
            if bad or not cfg.dims:
                raise ConfigError(
                    f"{where}.dims must list observation indices in [0, {self.obs_dim}); got {cfg.dims}"
                )
        if cfg.residual_scale is not None:
            self._check_scale(cfg.residual_scale, f"{where}.residual_scale")
        if cfg.spread == "per_action" and not spaces.action.discrete:
            raise ConfigError(
                f"{where}.spread is 'per_action', which needs a discrete action space (one residual scale "
                "per action); this agent's action space is a box: use spread: global"
            )
        self.n_actions = int(spaces.action.n) if spaces.action.discrete else 0
        #: ``score_actions``: the executed actions whose transitions are scored (None: all).
        self.score_actions: np.ndarray | None = None
        if cfg.score_actions is not None:
            if not spaces.action.discrete:
                raise ConfigError(
                    f"{where}.score_actions lists discrete actions; this agent's action space is a box: "
                    "remove it (score_when selects transitions by observation)"
                )
            bad = [a for a in cfg.score_actions if a >= self.n_actions]
            if bad:
                raise ConfigError(
                    f"{where}.score_actions must list actions in [0, {self.n_actions}); "
                    f"got {cfg.score_actions}"
                )
            self.score_actions = np.asarray(sorted(set(cfg.score_actions)), np.int64)
        self.signed = cfg.statistic == "signed"
        #: Groups of the signed statistic: one per action with ``spread: per_action``, else one.
        self.n_groups = self.n_actions if cfg.spread == "per_action" else 1
        self.dims = None if cfg.dims is None else np.asarray(cfg.dims, np.int64)
        self.score_when = None
        if cfg.score_when is not None:
            self.score_when = BatchedCondition(cfg.score_when, self.obs_dim, f"{where}.score_when")
        self.require_thresholds = require_thresholds
        self.model = EnsembleModel(runtime, cfg.model, where, cfg.output_name, needs_action=True)
        self.store = store or EpisodeStore(cfg.max_episodes, cfg.episode_ttl_seconds)
        self.beta = 1.0 - 0.5 ** (1.0 / cfg.bias_halflife)
        self.scale = np.full(self.obs_dim, np.nan)
        #: ``[n_actions, obs_dim]`` residual scale per executed action (``spread: per_action``), else None.
        self.action_scale: np.ndarray | None = None
        self.drift = float("nan")
        self.thresholds: dict[str, float] = {}

    @property
    def signal_names(self) -> list[str]:
        return list(SIGNALS)

    @property
    def signed_drift(self) -> float:
        """``k`` of ``statistic: signed``: the config's ``drift``, else :data:`SIGNED_DRIFT`."""
        return float(self.cfg.drift) if self.cfg.drift is not None else SIGNED_DRIFT

    def _check_scale(self, scale: list[float], where: str) -> np.ndarray:
        v = np.asarray(scale, np.float64)
        if v.shape != (self.obs_dim,) or not np.all(np.isfinite(v) & (v > 0)):
            raise ConfigError(
                f"{where} must hold {self.obs_dim} positive numbers (one per observation element), "
                f"got {len(v)}" + ("" if v.shape != (self.obs_dim,) else " with zeros, negatives or NaN")
            )
        return v

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        self.model.load()
        n_out = self.model.last_dim()
        if n_out is not None and n_out != self.obs_dim:
            raise ConfigError(
                f"{self.where}.model {self.model.path} predicts {n_out} values per member; the agent's "
                f"observation has {self.obs_dim}"
            )
        entry = self._file_entry()
        scale = self.cfg.residual_scale or entry.get("residual_scale")
        drift = self.cfg.drift if self.cfg.drift is not None else entry.get("drift")
        if self.signed:  # a setting in z units, not calibrated (SIGNED_DRIFT)
            drift = self.signed_drift
        thresholds = {k: float(v) for k, v in entry.get("thresholds", {}).items() if k in SIGNALS}
        thresholds.update(self.cfg.thresholds)
        thresholds.setdefault("shifted", 0.5)
        thresholds.setdefault("residual_bias", float("inf"))  # informational unless calibrated or set
        missing = [s for s in ("surprise", "shift") if s not in thresholds]
        missing += ["residual_scale"] if scale is None else []
        per_action = entry.get("residual_scale_per_action") if self.cfg.spread == "per_action" else None
        if self.cfg.spread == "per_action" and per_action is None:
            missing.append("residual_scale_per_action")
        missing += ["drift"] if drift is None else []
        if missing and self.require_thresholds:
            raise ConfigError(
                f"{self.where}: no {', '.join(missing)}; run `interlock calibrate --config FILE --agent ID "
                "--data in_dist.npz` (or --env ID --policy POLICY.onnx) and point thresholds_file: at its "
                "output, or set them in the config"
            )
        if scale is not None:
            self.scale = self._check_scale(list(scale), f"{self.where}: residual_scale")
        if per_action is not None:
            if len(per_action) != self.n_actions:
                raise ConfigError(
                    f"{self.where}: residual_scale_per_action in the thresholds file has {len(per_action)} "
                    f"rows; the action space has {self.n_actions} actions; re-run `interlock calibrate`"
                )
            self.action_scale = np.stack(
                [
                    self._check_scale(list(row), f"{self.where}: residual_scale_per_action[{a}]")
                    for a, row in enumerate(per_action)
                ]
            )
        self.drift = float("nan") if drift is None else float(drift)
        self.thresholds = thresholds
        self.ready = True

    def _file_entry(self) -> dict[str, Any]:
        if not self.cfg.thresholds_file:
            return {}
        path = self.runtime.resolve(self.cfg.thresholds_file)
        if not self.require_thresholds:  # calibrating: the entry is written anew, and may not exist yet
            if not path.is_file():
                return {}
            try:
                return read_monitor_entry(path, self.name, self.where)
            except ConfigError:  # no entry for this monitor yet (another monitor's calibration is there)
                return {}
        entry = read_monitor_entry(path, self.name, self.where)
        if entry.get("kind") != "transition":
            raise ConfigError(
                f"{self.where}.thresholds_file {path}: the entry for '{self.name}' is not a transition "
                "monitor's calibration; re-run `interlock calibrate`"
            )
        sha = entry.get("model_sha256")
        if self.require_thresholds and sha and sha != file_sha256(self.model.resolved):
            raise ConfigError(
                f"{self.where}: the calibration in {path} was made for another version of "
                f"{self.cfg.model} (sha256 {sha[:12]}...); re-run `interlock calibrate` for this model"
            )
        # (key, this config's value, what a file without the key was calibrated with; None: not checked)
        settings: tuple[tuple[str, Any, Any], ...] = (
            # files from before the option were calibrated with the energy statistic
            ("statistic", self.cfg.statistic, "energy"),
            # with signed, the threshold holds at the drift it was calibrated at (energy: the file's
            # drift is calibrated, and a config's drift overrides it)
            *((("drift", self.signed_drift, None),) if self.signed else ()),
            ("aggregate", self.cfg.aggregate, None),
            ("dims", self.cfg.dims, None),
            ("clip", self.cfg.clip, None),
            ("drift_rule", self.cfg.drift_rule, None),
            ("spread", self.cfg.spread, None),
            ("scale_statistic", self.cfg.scale_statistic, None),
            # files from before the option scored every action
            ("score_actions", self.cfg.score_actions or "all", "all"),
            ("spread_floor", self.cfg.spread_floor, None),
            ("spread_min_rows", self.cfg.spread_min_rows, None),
            # files from before the option were calibrated without the members' spread
            ("disagreement", self.cfg.disagreement, "none"),
            # recorded (and read) only with disagreement: add
            ("disagreement_scale", self.cfg.disagreement_scale, None),
        )
        for key, mine, absent in settings:  # calibration (require_thresholds False) writes the entry anew
            theirs = entry.get(key, absent)
            if self.require_thresholds and (key in entry or absent is not None) and theirs != mine:
                raise ConfigError(
                    f"{self.where}: {path} was calibrated with {key}={theirs}, the config says {mine}; "
                    "re-run `interlock calibrate`"
                )
        return entry

    # ------------------------------------------------------------------ request path

    def scale_for(self, actions: np.ndarray) -> np.ndarray:
        """``[n, obs_dim]`` residual scale of each row given its executed ``actions [n]`` (the global
        scale repeated with ``spread: global``)."""
        n = len(actions)
        if self.action_scale is None:
            return np.broadcast_to(self.scale, (n, self.obs_dim))
        idx = np.asarray(actions).reshape(n).astype(np.int64)
        known = (idx >= 0) & (idx < self.n_actions)  # a batch's provisional action may be outside the space
        return np.where(known[:, None], self.action_scale[np.where(known, idx, 0)], self.scale[None, :])

    def scored(self, obs: np.ndarray, next_obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``[n]`` bool: transitions ``obs [n, obs_dim] -> next_obs [n, obs_dim]`` after the executed
        ``actions [n, ...]`` that ``score_when`` and ``score_actions`` let the monitor score (all
        without them)."""
        ok = np.ones(len(obs), bool)
        if self.score_actions is not None:
            ok &= np.isin(np.asarray(actions).reshape(len(obs)), self.score_actions)
        if self.score_when is not None:
            ok &= self.score_when(obs) & self.score_when(next_obs)
        return ok

    def predict(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``[n, obs_dim]`` members' mean next observation for ``[n, obs_dim]`` obs and their actions."""
        return self.predict_with_spread(obs, actions).next_obs

    def predict_with_spread(self, obs: np.ndarray, actions: np.ndarray) -> Prediction:
        """Members' mean next observation and their standard deviation, ``[n, obs_dim]`` each, for
        ``[n, obs_dim]`` obs and their ``[n, ...]`` actions, from one session run."""
        shaped = obs.reshape(len(obs), *self.spaces.observation.shape).astype(self.spaces.observation.dtype)
        out = self.model.run(shaped, actions)  # [K, n, ...]
        members = out.reshape(out.shape[0], out.shape[1], -1).astype(np.float64)  # [K, n, obs_dim]
        mean = members.mean(axis=0)
        if mean.shape[1] != self.obs_dim:
            raise RuntimeError(
                f"{self.cfg.model} predicted {mean.shape[1]} values per row; observations have {self.obs_dim}"
            )
        # the std of a delta is the std of the next observation (obs is the same for every member)
        return Prediction(obs + mean if self.cfg.predicts == "delta" else mean, members.std(axis=0))

    def normalised(self, residual: np.ndarray, scale: np.ndarray, member_std: np.ndarray) -> np.ndarray:
        """``[n, d]`` normalised residual ``z`` of the selected ``dims`` (``d`` of them, default all):
        the one normalisation behind ``surprise`` and the signed statistic, in the monitor and in
        ``interlock calibrate``.

        Args:
            residual: ``[n, obs_dim]`` observed minus predicted next observation.
            scale: ``[obs_dim]`` or ``[n, obs_dim]`` calibrated residual scale (:meth:`scale_for`).
            member_std: ``[n, obs_dim]`` the members' standard deviation (:meth:`predict_with_spread`);
                read only with ``disagreement: add``, where each dimension is divided by
                ``sqrt(scale^2 + (disagreement_scale * member_std)^2)`` instead of ``scale``.
        """
        if self.cfg.disagreement == "add":
            spread = self.cfg.disagreement_scale * np.asarray(member_std, np.float64)
            scale = np.sqrt(np.square(np.asarray(scale, np.float64)) + spread * spread)
        return normalised_residual(residual, scale, self.dims)

    def surprise(self, residual: np.ndarray, scale: np.ndarray, member_std: np.ndarray) -> np.ndarray:
        """``[n]`` the ``surprise`` signal of ``[n, obs_dim]`` residuals (arguments of
        :meth:`normalised`): its ``z`` aggregated, each ``z^2`` capped at ``clip``."""
        return aggregate_surprise(
            self.normalised(residual, scale, member_std), self.cfg.aggregate, self.cfg.clip
        )

    def signed_z(self, z: np.ndarray) -> np.ndarray:
        """``[n, d]`` what the signed statistic adds up: :meth:`normalised`'s ``z`` clipped to
        +-sqrt(clip) with ``clip`` set (the same cap as on ``z^2``), else ``z``."""
        if self.cfg.clip is None:
            return z
        bound = float(np.sqrt(self.cfg.clip))
        return np.clip(z, -bound, bound)

    def groups_of(self, actions: np.ndarray) -> np.ndarray:
        """``[n]`` int64 signed-statistic group of each row's executed ``actions [n, ...]``: the action
        index with ``spread: per_action`` (-1, no update, for an action outside the space: a batch's
        provisional action), else 0."""
        n = len(actions)
        if self.cfg.spread != "per_action":
            return np.zeros(n, np.int64)
        idx = np.asarray(actions).reshape(n)
        whole = np.isfinite(idx) & (idx == np.round(idx)) if idx.dtype.kind == "f" else np.ones(n, bool)
        out = np.where(whole, idx, -1).astype(np.int64)
        return np.where((out >= 0) & (out < self.n_groups), out, -1)

    def _plan(self, batch: Batch, obs: np.ndarray) -> tuple[list[int], list[_Row], dict[str, EpisodeState]]:
        """Rows in (episode, step) order, what to do with each, and the new state per episode."""
        n = len(batch)
        eids = list(batch.episode_ids) if batch.episode_ids else [""] * n
        steps = batch.steps.tolist()
        order = sorted(range(n), key=lambda i: (eids[i], steps[i]))
        rows: list[_Row] = [_Row("none")] * n
        pending: dict[str, EpisodeState] = {}
        for i in order:
            eid, t = eids[i], steps[i]
            if not eid:
                continue
            cur = pending.get(eid) or self.store.get(batch.agent_id, eid)
            action = np.array(batch.actions[i])  # provisional: the executed one comes in after_decide
            if cur is not None and t == cur.step:
                rows[i] = _Row("repeat", cur)
                continue
            if cur is None or t == 0 or t < cur.step:
                new = EpisodeState(first_step=t, step=t, obs=obs[i], action=action)
                rows[i] = _Row("fresh", new)
            else:  # the running statistics are carried over from ``parent`` in check, in step order
                new = EpisodeState(first_step=cur.first_step, step=t, obs=obs[i], action=action)
                if t == cur.step + 1 and cur.action is not None:
                    rows[i] = _Row("predict", new, cur.obs, cur.action, cur)
                else:
                    rows[i] = _Row("gap", new, parent=cur)
            pending[eid] = new
        return order, rows, pending

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        n = len(batch)
        obs = batch.observations.reshape(n, -1).astype(np.float64)
        order, rows, pending = self._plan(batch, obs)
        todo = [i for i in range(n) if rows[i].plan == "predict"]
        residual = np.zeros((n, self.obs_dim))
        member_std = np.zeros((n, self.obs_dim))
        scale = np.tile(self.scale, (n, 1))
        scored = np.zeros(n, bool)
        groups = np.full(n, -1, np.int64)
        if todo:
            prev_obs = np.stack([rows[i].prev_obs for i in todo])  # type: ignore[misc]
            prev_act = np.stack([rows[i].prev_action for i in todo])  # type: ignore[misc]
            predicted = self.predict_with_spread(prev_obs, prev_act)
            residual[todo] = obs[todo] - predicted.next_obs
            member_std[todo] = predicted.member_std
            scale[todo] = self.scale_for(prev_act)
            scored[todo] = self.scored(prev_obs, obs[todo], prev_act)
            groups[todo] = self.groups_of(prev_act)
        z = self.normalised(residual, scale, member_std)  # [n, d]
        step_surprise = aggregate_surprise(z, self.cfg.aggregate, self.cfg.clip)
        signed_z = self.signed_z(z) if self.signed else None
        steps = batch.steps.tolist()
        surprise = np.zeros(n)
        shift = np.zeros(n)
        shifted = np.zeros(n)
        bias = np.zeros(n)
        evidence = np.zeros(n)
        h = self.thresholds.get("shift", float("nan"))
        for i in order:
            row = rows[i]
            st = row.state
            if st is None:
                continue
            if row.parent is not None:
                p = row.parent
                st.statistic, st.shift_step, st.weight, st.residuals = (
                    p.statistic,
                    p.shift_step,
                    p.weight,
                    p.residuals,
                )
                st.signed = p.signed  # never changed in place: an update below replaces it
                st.bias = None if p.bias is None else p.bias.copy()
            if row.plan == "predict" and scored[i]:
                s = float(step_surprise[i])
                r = residual[i]
                if signed_z is not None:
                    g = int(groups[i])
                    if g >= 0:
                        prev = np.zeros((2, self.n_groups, z.shape[1])) if st.signed is None else st.signed
                        sums = prev.copy()
                        sums[:, g] = signed_update(prev[:, g], signed_z[i], self.drift)
                        st.signed, st.statistic = sums, float(sums.max())
                        if st.shift_step is None and np.isfinite(h) and st.statistic > h:
                            st.shift_step = steps[i]
                elif np.isfinite(s):
                    st.statistic = max(0.0, st.statistic + s - self.drift)
                    if st.shift_step is None and np.isfinite(h) and st.statistic > h:
                        st.shift_step = steps[i]
                if np.all(np.isfinite(r)):
                    prev = np.zeros(self.obs_dim) if st.bias is None else st.bias
                    st.bias = (1.0 - self.beta) * prev + self.beta * r
                    st.weight = (1.0 - self.beta) * st.weight + self.beta
                    st.residuals += 1
                st.last_surprise = s
            elif row.plan in ("fresh", "gap", "predict"):  # predict: not scored (score_when)
                st.last_surprise = 0.0
            surprise[i] = st.last_surprise
            shift[i] = st.statistic
            shifted[i] = 1.0 if st.shift_step is not None and st.shift_step <= steps[i] else 0.0
            mean = st.mean_residual(self.obs_dim)
            bias[i] = float(surprise_of(mean[None], self.scale, self.dims, "rms")[0]) if st.residuals else 0.0
            evidence[i] = st.residuals
        for eid, st in pending.items():  # commit only now: a failure above changed nothing
            self.store.put(batch.agent_id, eid, st)
        t = self.thresholds
        return {
            "surprise": SignalBatch.above(surprise, t.get("surprise", float("nan"))),
            "shift": SignalBatch.above(shift, h),
            "shifted": SignalBatch.above(shifted, t.get("shifted", 0.5)),
            "residual_bias": SignalBatch.above(bias, t.get("residual_bias", float("inf"))),
            "scored": SignalBatch.above(evidence, float("inf")),
        }

    def after_decide(self, batch: Batch, executed_actions: np.ndarray, valid: np.ndarray) -> None:
        """Remember the executed action of each row's step (None where it is not a valid action)."""
        if not batch.episode_ids:
            return
        steps = batch.steps.tolist()
        for i, eid in enumerate(batch.episode_ids):
            if not eid:
                continue
            st = self.store.peek(batch.agent_id, eid)
            if st is not None and st.step == steps[i]:
                st.action = np.array(executed_actions[i]) if valid[i] else None

    # ------------------------------------------------------------------ episode state for others

    def episode_facts(self, batch: Batch) -> EpisodeFacts:
        """``episode.*`` facts of each row (:meth:`EpisodeStore.facts`)."""
        eids = list(batch.episode_ids) if batch.episode_ids else [""] * len(batch)
        return self.store.facts(batch.agent_id, eids, batch.steps)

    def residual_bias(self, batch: Batch) -> np.ndarray:
        """``[batch, obs_dim]`` EW mean residual (observation units) of each row's episode, for a shield
        to add to its predictions (:class:`interlock.reachability.correction.ResidualSource`); zeros for
        unknown episodes (see :meth:`EpisodeStore.residual_bias`). List this monitor before the shield:
        its ``check`` has then folded this step's transition in."""
        eids = list(batch.episode_ids) if batch.episode_ids else [""] * len(batch)
        return self.store.residual_bias(batch.agent_id, eids, self.obs_dim)

    def unload(self) -> None:
        self.store.clear()
        super().unload()
