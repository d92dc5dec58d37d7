"""Calibrate a ``transition`` monitor from in-distribution episodes (docs/shift.md, "Calibration").

Input: whole in-distribution episodes, from a transitions ``.npz`` (``obs``, ``action``, and
``next_obs`` or consecutive rows; episodes from ``episode`` or the end flags) or rolled out
from a Gymnasium environment with a policy ONNX (:func:`rollout_episodes`).

The episodes are split three ways, by whole episodes: a *scale* part, a *threshold* part and a
*held-out* part (``holdout``; the rest halved). Then:

1. the residual ``next_obs - mean prediction`` of every transition, and the members' standard
   deviation (one model run per 4096 rows, with a tqdm bar);
2. ``residual_scale``: each dimension's residual RMS on the scale part (``scale_statistic:
   median_abs``: 1.4826 x the median absolute residual, a robust RMS; floored at 1e-8); with
   ``spread: per_action`` also ``residual_scale_per_action`` ``[n_actions, obs_dim]``: the same
   statistic over the rows that executed each action, at least the ``spread_floor`` quantile of the pooled
   absolute residual of the dimension (an action whose outcome the model predicts almost exactly
   must not turn a tiny residual into a huge surprise); an action with fewer than
   ``spread_min_rows`` rows keeps the global scale. The surprise of a row then divides by the scale
   of the action it executed (``residual_bias`` stays on the global scale);
3. on the threshold part, with that scale (and with ``disagreement: add`` the members' standard
   deviation; the surprise is the monitor's own :meth:`~TransitionMonitor.surprise`): ``surprise``
   threshold = conformal ``(1 - step_rate)`` quantile of per-step surprise; ``drift`` = conformal
   ``(1 - episode_rate)`` quantile of each episode's *mean* surprise (in-distribution episodes
   differ: on CartPole the mean surprise of an episode ranges 0.2-1.6; with this drift all but
   about ``episode_rate`` of them make the CUSUM drift down, so the threshold covers fluctuations,
   not a linear climb over long episodes; ``drift_rule: step_mean`` takes the mean per-step
   surprise instead, as the LunarLander detector study chose: faster detection, the threshold then
   absorbs the climb); ``shift`` threshold = conformal ``(1 - episode_rate)`` quantile of each
   episode's largest CUSUM value (at least ``drift``); ``residual_bias`` threshold = conformal
   ``(1 - step_rate)`` quantile of the per-step EW bias norm; with ``statistic: signed`` the drift
   is not calibrated (the config's ``drift``, else :data:`~interlock.monitors.transition.SIGNED_DRIFT`)
   and the ``shift`` threshold is the conformal ``(1 - episode_rate)`` quantile of each episode's
   largest signed statistic (:func:`~interlock.monitors.transition.signed_cusum` of the monitor's own
   :meth:`~TransitionMonitor.normalised` ``z``, grouped by executed action with ``spread: per_action``);
4. on the held-out part: the per-step false-alarm rate of ``surprise`` and ``residual_bias`` and
   the per-episode false-alarm rate of ``shift`` actually measured, written beside them.

The scale and the thresholds come from different episodes so that the thresholds see surprise
as it will be on new episodes, not on the episodes the scale was fitted to.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from interlock.ensembles.common import EnsembleError
from interlock.ensembles.data import Transitions
from interlock.ensembles.thresholds import conformal_threshold
from interlock.monitors.transition import (
    TransitionMonitor,
    cusum,
    signed_cusum,
    signed_cusum_streams,
    surprise_of,
)

__all__ = [
    "EpisodeData",
    "JointCalibration",
    "TransitionCalibration",
    "calibrate_transition",
    "episodes_of",
    "joint_shift_thresholds",
    "rollout_episodes",
]


@dataclass
class EpisodeData:
    """In-distribution transitions grouped by episode (rows of one episode consecutive, in step order).

    Attributes:
        obs: ``[N, obs_dim]`` float64 observation acted on.
        action: ``[N, *action_shape]`` action executed.
        next_obs: ``[N, obs_dim]`` float64 observation that followed.
        episode: ``[N]`` int64 episode number.
        source: Where the data came from (for messages and the thresholds file).
    """

    obs: np.ndarray
    action: np.ndarray
    next_obs: np.ndarray
    episode: np.ndarray
    source: str
    #: ``[N]`` group of each row (e.g. the behaviour policy), or None.
    group: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.obs)


def episodes_of(data: Transitions, group_by: str | None = None) -> EpisodeData:
    """Transitions of a ``.npz`` as :class:`EpisodeData`: ``next_obs``, else the next row of the episode.

    ``group_by`` names an array of the file that gives each row's group (``EpisodeData.group``).

    Raises:
        EnsembleError: there is no way to tell what followed a row, or no ``group_by`` array.
    """
    group = None
    if group_by is not None:
        group = data.get(group_by)
        if group is None:
            raise EnsembleError(
                f"{data.source} has no '{group_by}' array for --group-by; "
                f"its arrays: {', '.join(data.arrays)}"
            )
        group = np.asarray(group).reshape(len(data))
    ep = data.episodes()
    nxt = data.get("next_obs")
    if nxt is not None:
        order = np.argsort(ep, kind="stable")  # rows of an episode together, in their recorded order
        return EpisodeData(
            data.obs[order].astype(np.float64),
            data.action[order],
            np.asarray(nxt, np.float64).reshape(len(data), -1)[order],
            ep[order],
            data.source,
            None if group is None else group[order],
        )
    same = np.flatnonzero(ep[1:] == ep[:-1])  # row i is followed by row i + 1 of its episode
    if same.size == 0:
        raise EnsembleError(
            f"{data.source} has no 'next_obs' array and no two consecutive rows of one episode; "
            "record next_obs (see docs/ensembles.md) or whole episodes with an 'episode' array"
        )
    return EpisodeData(
        data.obs[same].astype(np.float64),
        data.action[same],
        data.obs[same + 1].astype(np.float64),
        ep[same],
        data.source,
        None if group is None else group[same],
    )


def rollout_episodes(
    env_id: str,
    policy_path: str,
    spaces: Any,
    episodes: int,
    seed: int = 0,
    policy_output: str = "logits",
    progress: bool = True,
    env_kwargs: dict[str, Any] | None = None,
    act: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
    lockstep: int = 64,
) -> EpisodeData:
    """Roll ``policy_path`` (an ONNX policy: obs -> logits or action) out in ``env_id`` for ``episodes``.

    Episode ``e`` is reset with seed ``seed + e``. Only in-distribution settings belong here. Up to
    ``lockstep`` episodes run side by side, one policy call (and one ``act`` call) per step for all of
    them; the data is in episode order, as if they had run one after another.
    ``act(obs [n, obs_dim], proposed actions [n, ...], episodes [n], steps [n]) -> executed actions``:
    what runs instead of the policy's actions (a guard's rules, ``interlock calibrate --under-rule``);
    the data holds the executed actions.
    """
    import gymnasium as gym
    import onnxruntime as ort
    from tqdm import tqdm

    from interlock.reachability.recoverability import OnnxBackupPolicy

    session = ort.InferenceSession(str(policy_path), providers=["CPUExecutionProvider"])
    policy = OnnxBackupPolicy(
        session, spaces.action, policy_output, obs_shape=spaces.observation.shape, where="--policy"
    )
    envs = [gym.make(env_id, **(env_kwargs or {})) for _ in range(max(1, min(lockstep, episodes)))]
    rows: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    try:
        with tqdm(total=episodes, desc=f"rolling out {env_id}", unit="episode", disable=not progress) as bar:
            for first in range(0, episodes, len(envs)):
                ids = list(range(first, min(first + len(envs), episodes)))
                obs = {e: envs[k].reset(seed=seed + e)[0] for k, e in enumerate(ids)}
                env_of = {e: envs[k] for k, e in enumerate(ids)}
                steps = dict.fromkeys(ids, 0)
                active = list(ids)
                while active:
                    flat = np.stack([np.asarray(obs[e], np.float64).reshape(-1) for e in active])
                    actions = np.asarray(policy.act(flat))
                    if act is not None:
                        at = np.asarray([steps[e] for e in active])
                        executed = act(flat, actions, np.asarray(active), at)
                        actions = np.asarray(executed).reshape(actions.shape).astype(actions.dtype)
                    still = []
                    for j, e in enumerate(active):
                        a = actions[j]
                        nxt, _, terminated, truncated, _ = env_of[e].step(
                            a.item() if spaces.action.discrete else a
                        )
                        rows.setdefault(e, []).append((flat[j], a, np.asarray(nxt, np.float64).reshape(-1)))
                        obs[e], steps[e] = nxt, steps[e] + 1
                        if terminated or truncated:
                            bar.update(1)
                        else:
                            still.append(e)
                    active = still
    finally:
        for env in envs:
            env.close()
    ordered = [(e, r) for e in range(episodes) for r in rows[e]]
    return EpisodeData(
        np.stack([r[0] for _, r in ordered]),
        np.stack([r[1] for _, r in ordered]),
        np.stack([r[2] for _, r in ordered]),
        np.asarray([e for e, _ in ordered], np.int64),
        f"{env_id} x {episodes}",
    )


@dataclass
class TransitionCalibration:
    """What :func:`calibrate_transition` chose and measured."""

    monitor: str
    residual_scale: list[float]
    drift: float
    thresholds: dict[str, float]
    held_out_step_rate: dict[str, float]
    held_out_episode_rate: float
    episodes: dict[str, int]
    median_surprise: float
    path: str = ""
    #: With groups: each group's own shift threshold (the largest is the one used).
    shift_per_group: dict[str, float] | None = None
    #: ``[n_actions][obs_dim]`` with ``spread: per_action``, else None.
    residual_scale_per_action: list[list[float]] | None = None
    #: ``[obs_dim]`` floor of the per-action scales, and the scale part's rows per action.
    spread_floor_values: list[float] | None = None
    rows_per_action: list[int] | None = None
    #: The episode numbers of each part (scale, threshold, held_out), to reproduce or audit the split.
    split: dict[str, list[Any]] | None = None
    #: The drift the config fixes (``drift:``, which overrides the file's at load), and the held-out
    #: per-episode rate at it with the threshold calibrated here; None when the config sets none.
    config_drift: float | None = None
    held_out_episode_rate_config_drift: float | None = None
    #: The monitor's ``statistic`` (energy | signed): what ``shift`` adds up.
    statistic: str = "energy"
    #: ``--intervention-budget``: the share of calm steps that may follow a trip (None: not asked).
    intervention_budget: float | None = None
    #: Held-out share of calm steps at or after the episode's first trip, at the drift the monitor
    #: runs with: what a response latched on ``episode.shifted`` (a handover) would intervene on.
    held_out_after_trip_share: float = 0.0
    #: ``statistic: signed``: each CUSUM stream's own per-episode threshold (the quantile of its
    #: episode maxima alone), largest first, keyed "action A obs[D] up|down" ("obs[D] up|down" with
    #: one group; actions outside ``score_actions`` left out): which streams set ``shift``, and what a monitor
    #: watching fewer of them (``dims``, ``score_actions``) would need.
    shift_per_stream: dict[str, float] | None = None
    #: The running statistic on the threshold and held-out episodes (for :func:`joint_shift_thresholds`).
    paths: RunPaths | None = field(default=None, repr=False)
    #: Set by :func:`joint_shift_thresholds` when the threshold was chosen with the agent's other monitors.
    joint: JointCalibration | None = None

    def summary(self) -> str:
        t, h = self.thresholds, self.held_out_step_rate
        return "\n".join(
            [
                f"transition monitor '{self.monitor}': episodes {self.episodes['scale']} (scale) / "
                f"{self.episodes['threshold']} (thresholds) / {self.episodes['held_out']} (held out)",
                f"  residual_scale {[float(f'{v:.4g}') for v in self.residual_scale]}",
            ]
            + (
                [
                    f"  per action (rows {self.rows_per_action}; floor "
                    f"{[float(f'{v:.3g}') for v in self.spread_floor_values or []]}):",
                    *(
                        f"    action {a}: {[float(f'{v:.3g}') for v in row]}"
                        for a, row in enumerate(self.residual_scale_per_action)
                    ),
                ]
                if self.residual_scale_per_action is not None
                else []
            )
            + [
                f"  surprise: median {self.median_surprise:.3g}, threshold {t['surprise']:.4g} "
                f"(held-out per-step FAR {h['surprise']:.4f})",
                f"  residual_bias: threshold {t['residual_bias']:.4g} "
                f"(held-out per-step FAR {h['residual_bias']:.4f})",
                f"  shift ({'signed CUSUM, z units' if self.statistic == 'signed' else 'CUSUM'}): drift "
                f"{self.drift:.4g}, threshold {t['shift']:.4g} "
                f"(held-out per-episode FAR {self.held_out_episode_rate:.4f})",
            ]
            + (
                [
                    f"  the config fixes drift: {self.config_drift:.4g}, which the monitor runs with (the "
                    f"file's {self.drift:.4g} is for the record); held-out per-episode FAR at it "
                    f"{self.held_out_episode_rate_config_drift:.4f}"
                ]
                if self.config_drift is not None
                else []
            )
            + [
                f"  steps at or after a trip (a latched response's interventions): held out "
                f"{self.held_out_after_trip_share:.4f}"
                + (f" (budget {self.intervention_budget:g})" if self.intervention_budget is not None else "")
            ]
            + self._stream_lines()
            + ([f"wrote the calibration of '{self.monitor}' to {self.path}"] if self.path else [])
        )

    def _stream_lines(self, show: int = 4) -> list[str]:
        """The streams behind a signed ``shift`` threshold: the largest few and the quietest."""
        if not self.shift_per_stream:
            return []
        items = list(self.shift_per_stream.items())
        fmt = "; ".join(f"{k} {v:.3g}" for k, v in items[:show])
        lines = [f"  its streams' own thresholds, largest first: {fmt}"]
        if len(items) > show:
            lines.append(
                f"  ... the quietest: {items[-1][0]} {items[-1][1]:.3g} (a monitor limited to quiet streams "
                "with dims / score_actions has a lower threshold: docs/shift.md)"
            )
        return lines


def stream_groups(monitor: TransitionMonitor) -> list[int]:
    """The signed statistic's groups that can move: with ``spread: per_action`` and ``score_actions``
    only those actions' (the others are never scored), else all."""
    watched = monitor.cfg.score_actions
    if monitor.n_groups > 1 and watched is not None:
        return [g for g in range(monitor.n_groups) if g in watched]
    return list(range(monitor.n_groups))


def stream_labels(monitor: TransitionMonitor) -> list[str]:
    """Names of the signed CUSUM streams of :func:`stream_groups`, in ``[side, group, dim]`` order."""
    dims = range(monitor.obs_dim) if monitor.dims is None else monitor.dims.tolist()
    groups = [f"action {g} " for g in stream_groups(monitor)] if monitor.n_groups > 1 else [""]
    return [f"{g}obs[{d}] {side}" for side in ("up", "down") for g in groups for d in dims]


def _per_episode(values: np.ndarray, episode: np.ndarray) -> list[np.ndarray]:
    """Split ``[N]`` values into episodes (rows of an episode are consecutive)."""
    cuts = np.flatnonzero(episode[1:] != episode[:-1]) + 1
    return np.split(values, cuts)


def _bias_norms(
    residual: np.ndarray, episode: np.ndarray, monitor: TransitionMonitor, scored: np.ndarray
) -> np.ndarray:
    """``[N]`` the ``residual_bias`` signal at each row (EW mean residual / scale, RMS); a row not
    ``scored`` leaves the bias as it was (NaN before the episode's first scored row)."""
    beta = monitor.beta
    out = np.zeros(len(residual))
    bias = np.zeros(residual.shape[1])
    weight = 0.0
    for i in range(len(residual)):
        if i == 0 or episode[i] != episode[i - 1]:
            bias[:], weight = 0.0, 0.0
        if scored[i]:
            bias = (1.0 - beta) * bias + beta * residual[i]
            weight = (1.0 - beta) * weight + beta
        if weight:
            out[i] = surprise_of((bias / weight)[None], monitor.scale, monitor.dims, "rms")[0]
        else:  # no scored row yet in this episode
            out[i] = np.nan
    return out


def residual_scale(residual: np.ndarray, statistic: str) -> np.ndarray:
    """``[obs_dim]`` scale of ``[N, obs_dim]`` residuals: RMS, or 1.4826 x median ``|r|`` (``median_abs``)."""
    if statistic == "median_abs":
        return 1.4826 * np.median(np.abs(residual), axis=0)
    return np.sqrt(np.mean(residual**2, axis=0))


def per_action_scale(
    residual: np.ndarray, actions: np.ndarray, monitor: TransitionMonitor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residual scale per executed action (``spread: per_action``; module docstring, step 2).

    Args:
        residual: ``[N, obs_dim]`` residuals of the scale part.
        actions: ``[N]`` the discrete action each row executed.
        monitor: Its ``scale`` (the global one) already set.

    Returns:
        ``([n_actions, obs_dim] scale, [obs_dim] floor, [n_actions] rows per action)``.
    """
    cfg = monitor.cfg
    floor = np.maximum(np.quantile(np.abs(residual), cfg.spread_floor, axis=0), 1e-8)
    scale = np.tile(monitor.scale, (monitor.n_actions, 1))
    counts = np.bincount(actions, minlength=monitor.n_actions)
    for a in range(monitor.n_actions):
        if counts[a] >= cfg.spread_min_rows:
            scale[a] = np.maximum(residual_scale(residual[actions == a], cfg.scale_statistic), floor)
    return scale, floor, counts


@dataclass
class RunPaths:
    """One monitor's ``shift`` statistic as it runs (at the drift it runs with), per episode."""

    #: ``[T_e]`` per threshold-part episode, and per held-out episode (the same split for every monitor
    #: calibrated from the same data and seed).
    fit: list[np.ndarray]
    held_out: list[np.ndarray]
    #: ``[n_fit]`` group of each threshold-part episode (``--group-by``), else None.
    fit_groups: np.ndarray | None
    #: The least threshold allowed (energy: the drift; signed: 0).
    floor: float


@dataclass
class JointCalibration:
    """What :func:`joint_shift_thresholds` chose and measured for the union of an agent's monitors."""

    monitors: list[str]
    episode_rate: float
    intervention_budget: float | None
    #: Threshold-part episodes each monitor's threshold may leave above it (the common rank chosen).
    rank: int
    fit_union_rate: float
    held_out_union_rate: float
    held_out_union_after_trip_share: float
    #: How many held-out episodes ``held_out_union_rate`` is measured on (0: none held out).
    held_out_episodes: int = 0

    @property
    def held_out_over_target(self) -> float | None:
        """The one-sided binomial p-value of at least the held-out trips seen if the true per-episode
        rate were the target; None when nothing was held out. Small: the calm episodes trip more often
        than the target beyond chance (the threshold part did not show how much they vary)."""
        return over_target_p_value(self.held_out_union_rate, self.held_out_episodes, self.episode_rate)

    def summary(self) -> str:
        budget = "" if self.intervention_budget is None else f", budget {self.intervention_budget:g}"
        text = (
            f"joint ({', '.join(self.monitors)}: episode.shifted is any of them; target "
            f"{self.episode_rate:g} per episode{budget}): each threshold leaves {self.rank} "
            f"threshold-part episode(s) above it; union trips {self.fit_union_rate:.4f} (threshold part), "
            f"held out {self.held_out_union_rate:.4f}; held-out steps at or after a trip "
            f"{self.held_out_union_after_trip_share:.4f}"
        )
        p = self.held_out_over_target
        if p is not None and p < OVER_TARGET_P:
            text += (
                f"\n  warning: the held-out episodes trip at {self.held_out_union_rate:.1%} of "
                f"{self.held_out_episodes}, over the {self.episode_rate:g} target beyond chance "
                f"(p = {p:.3f}). Expect more calm trips than the target, each a handover to the "
                "fallback: calibrate on more episodes (--episodes), and check the guarded calm trip rate "
                "(e.g. in shadow mode) before relying on these thresholds"
            )
        return text


#: :attr:`JointCalibration.held_out_over_target` below this: the summary warns.
OVER_TARGET_P = 0.05


def over_target_p_value(rate: float, episodes: int, target: float) -> float | None:
    """``P(X >= k)`` for ``X ~ Binomial(episodes, target)`` and ``k = round(rate * episodes)``: how
    likely at least the observed trips are if the true rate were ``target``; None for no episodes."""
    if episodes <= 0:
        return None
    k = round(rate * episodes)
    if k <= 0:
        return 1.0
    if target <= 0.0:
        return 0.0
    if target >= 1.0:
        return 1.0
    n, log_p, log_q = episodes, math.log(target), math.log1p(-target)
    lg = math.lgamma
    # in log space: C(n, i) overflows a float for a few thousand episodes
    terms = [lg(n + 1) - lg(i + 1) - lg(n - i + 1) + i * log_p + (n - i) * log_q for i in range(k, n + 1)]
    top = max(terms)
    return float(min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms)))


def first_trip_steps(paths: list[np.ndarray], threshold: float) -> np.ndarray:
    """``[n]`` per episode the first step whose statistic exceeds ``threshold`` (episode length if none)."""
    return np.asarray([int(np.argmax(p > threshold)) if np.any(p > threshold) else len(p) for p in paths])


def _union(paths: list[list[np.ndarray]], thresholds: list[float]) -> tuple[np.ndarray, float]:
    """``[n]`` whether any monitor trips in each episode, and the share of steps at or after the first."""
    first = np.min([first_trip_steps(p, h) for p, h in zip(paths, thresholds, strict=True)], axis=0)
    lengths = np.asarray([len(p) for p in paths[0]])
    total = max(int(lengths.sum()), 1)
    return first < lengths, float((lengths - np.minimum(first, lengths)).sum() / total)


def joint_shift_thresholds(
    cals: list[TransitionCalibration], episode_rate: float, intervention_budget: float | None = None
) -> JointCalibration:
    """Choose the ``shift`` thresholds of an agent's transition monitors together (``--joint``).

    ``episode.shifted`` is true once **any** of them trips, so the per-episode target and the
    intervention budget are about their union, not each monitor. Each monitor's threshold is its
    ``(rank + 1)``-th largest episode maximum on the threshold part (at least its floor), one ``rank``
    for all, the largest for which the union trips in no more threshold-part episodes than a single
    conformal ``(1 - episode_rate)`` threshold would allow (per group with ``--group-by``) and, with
    a budget, leaves at most that share of threshold-part steps at or after the union's first trip.
    Rank 0 (every threshold at its largest calm maximum) always qualifies. Sets the thresholds on the
    calibrations (``thresholds["shift"]``, the held-out rates) and returns what the union measured.
    """
    runs: list[RunPaths] = []
    for c in cals:
        if c.paths is None:
            raise EnsembleError(
                f"'{c.monitor}': joint calibration needs its running statistic (calibrate_transition)"
            )
        runs.append(c.paths)
    fit = [r.fit for r in runs]
    n = len(fit[0])
    if any(len(f) != n for f in fit):
        raise EnsembleError("joint calibration needs every monitor calibrated on the same episodes and split")
    groups = runs[0].fit_groups
    masks = [np.ones(n, bool)] if groups is None else [groups == g for g in np.unique(groups)]
    # what one conformal (1 - episode_rate) threshold lets through, per group
    allowed = [
        int(m.sum()) - min(math.ceil((int(m.sum()) + 1) * (1 - episode_rate)), int(m.sum())) for m in masks
    ]
    maxima = [np.sort([float(x.max()) if len(x) else 0.0 for x in f])[::-1] for f in fit]

    def at(rank: int) -> list[float]:
        return [max(float(m[min(rank, n - 1)]), r.floor) for m, r in zip(maxima, runs, strict=True)]

    rank = max(allowed)
    while rank > 0:
        tripped, share = _union(fit, at(rank))
        within = all(int(tripped[m].sum()) <= a for m, a in zip(masks, allowed, strict=True))
        if within and (intervention_budget is None or share <= intervention_budget):
            break
        rank -= 1
    chosen = at(rank)
    fit_tripped, _ = _union(fit, chosen)
    held = [r.held_out for r in runs]
    held_tripped, held_share = _union(held, chosen)
    for c, h, hp in zip(cals, chosen, held, strict=True):
        c.thresholds["shift"] = h
        c.held_out_episode_rate = float(np.mean([float(x.max()) > h if len(x) else False for x in hp]))
        c.held_out_after_trip_share = after_trip_share(hp, h)
        if c.config_drift is not None:  # the paths are at the config's drift already
            c.held_out_episode_rate_config_drift = c.held_out_episode_rate
    joint = JointCalibration(
        [c.monitor for c in cals],
        episode_rate,
        intervention_budget,
        rank,
        float(np.mean(fit_tripped)),
        float(np.mean(held_tripped)),
        held_share,
        len(held_tripped),
    )
    for c in cals:
        c.joint = joint
    return joint


def running_maxima(paths: list[np.ndarray]) -> np.ndarray:
    """``[sum T_e]`` each step's largest statistic so far in its episode, all episodes concatenated."""
    return np.concatenate([np.maximum.accumulate(p) for p in paths if len(p)] or [np.zeros(0)])


def after_trip_share(paths: list[np.ndarray], threshold: float) -> float:
    """Share of steps at or after their episode's first trip (statistic above ``threshold``).

    A response latched on ``episode.shifted`` (a handover for the rest of the episode) intervenes on
    exactly these steps. Equals the share of steps whose running maximum exceeds the threshold.

    Args:
        paths: ``[T_e]`` the shift statistic after each step, one array per episode.
    """
    running = running_maxima(paths)
    return float(np.mean(running > threshold)) if len(running) else 0.0


def calibrate_transition(
    monitor: TransitionMonitor,
    data: EpisodeData,
    step_rate: float = 0.01,
    episode_rate: float = 0.05,
    holdout: float = 0.3,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 4096,
    intervention_budget: float | None = None,
) -> TransitionCalibration:
    """Fit the residual scale and choose drift and thresholds (module docstring); sets them on ``monitor``.

    Args:
        monitor: A loaded monitor (``require_thresholds=False``).
        data: Whole in-distribution episodes.
        step_rate: Target share of in-distribution steps whose ``surprise`` (``residual_bias``) trips.
        episode_rate: Target share of in-distribution episodes in which ``shift`` ever trips.
        holdout: Share of episodes held out to measure the rates.
        seed: Seeds the split.
        progress: Show a tqdm bar.
        intervention_budget: Share of calm steps that may come at or after a trip (a latched
            response's interventions; :func:`after_trip_share`); the ``shift`` threshold is raised, if
            need be, to the ``(1 - budget)`` quantile of the threshold part's running maxima (at the
            drift the monitor runs with), so that the calibration episodes stay within it.

    Raises:
        EnsembleError: too few episodes, or shapes that do not fit the agent.
    """
    from tqdm import tqdm

    for name, rate in (("per-step", step_rate), ("per-episode", episode_rate)):
        if not 0.0 < rate < 1.0:
            raise EnsembleError(f"the {name} false-alarm rate must be in (0, 1), got {rate}")
    if intervention_budget is not None and not 0.0 < intervention_budget < 1.0:
        raise EnsembleError(f"the intervention budget must be in (0, 1), got {intervention_budget}")
    if data.obs.shape[1] != monitor.obs_dim:
        raise EnsembleError(
            f"{data.source}: observations have {data.obs.shape[1]} values; "
            f"the agent observes {monitor.obs_dim}"
        )
    uniq = np.unique(data.episode)
    if len(uniq) < 6:
        raise EnsembleError(
            f"{data.source} has {len(uniq)} episode(s); calibrating a transition monitor needs whole "
            "episodes, at least 6 (better 100+: the per-episode threshold is a quantile over episodes)"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(uniq)
    n_held = max(1, round(holdout * len(uniq)))
    n_scale = max(1, (len(uniq) - n_held) // 2)
    parts = {
        "scale": perm[n_held : n_held + n_scale],
        "threshold": perm[n_held + n_scale :],
        "held_out": perm[:n_held],
    }
    residual = np.empty_like(data.next_obs)
    member_std = np.empty_like(data.next_obs)  # [N, obs_dim], read with disagreement: add
    starts = range(0, len(data), batch_size)
    for start in tqdm(starts, desc=f"predicting ({monitor.name})", unit="batch", disable=not progress):
        sl = slice(start, start + batch_size)
        predicted = monitor.predict_with_spread(data.obs[sl], np.asarray(data.action[sl]))
        residual[sl] = data.next_obs[sl] - predicted.next_obs
        member_std[sl] = predicted.member_std
    masks = {k: np.isin(data.episode, v) for k, v in parts.items()}
    ok = monitor.scored(data.obs, data.next_obs, np.asarray(data.action))  # score_when, score_actions
    if not ok[masks["scale"]].any() or not ok[masks["threshold"]].any():
        raise EnsembleError(
            f"{data.source}: score_when ({monitor.cfg.score_when}) and score_actions "
            f"({monitor.cfg.score_actions}) select no transition of the scale or threshold part; check "
            "them against the data"
        )
    masks = {k: m & ok for k, m in masks.items()}
    monitor.scale = np.maximum(residual_scale(residual[masks["scale"]], monitor.cfg.scale_statistic), 1e-8)
    floor = counts = None
    row_scale = monitor.scale
    groups = np.zeros(len(data), np.int64)  # the signed statistic's group of each row
    if monitor.cfg.spread == "per_action":
        actions = np.asarray(data.action).reshape(len(data))
        if not np.issubdtype(actions.dtype, np.integer):
            if not np.all(actions == np.round(actions)):
                raise EnsembleError(f"{data.source}: spread: per_action needs integer (discrete) actions")
            actions = actions.astype(np.int64)
        outside = (actions < 0) | (actions >= monitor.n_actions)
        if outside.any():
            raise EnsembleError(
                f"{data.source}: {int(outside.sum())} row(s) have actions outside [0, {monitor.n_actions}) "
                f"(e.g. {actions[outside][0]}); per-action scales need the agent's own discrete actions"
            )
        sm = masks["scale"]
        monitor.action_scale, floor, counts = per_action_scale(residual[sm], actions[sm], monitor)
        row_scale = monitor.scale_for(actions)
        groups = monitor.groups_of(actions)
    surprise = monitor.surprise(residual, row_scale, member_std)  # exactly as the monitor computes it
    surprise[~ok] = np.nan  # not scored: the CUSUM keeps its value (cusum), like the monitor
    signed_z = None
    if monitor.signed:  # the monitor's own z, clipped as it clips it
        signed_z = monitor.signed_z(monitor.normalised(residual, row_scale, member_std))
        signed_z[~ok] = np.nan  # not scored: the CUSUMs keep their values (signed_update)
    bias = _bias_norms(residual, data.episode, monitor, ok)

    fit = masks["threshold"]
    s_fit = surprise[fit]
    part = np.isin(data.episode, parts["threshold"])  # whole episodes, unscored rows too
    rows = np.arange(len(data))
    fit_rows = _per_episode(rows[part], data.episode[part])  # row indices of each episode
    if signed_z is not None:
        drift = monitor.signed_drift

        def episode_path(r: np.ndarray, k: float) -> np.ndarray:
            return signed_cusum(signed_z[r], groups[r], monitor.n_groups, k)

    else:
        if monitor.cfg.drift_rule == "step_mean":
            drift = float(np.mean(s_fit[np.isfinite(s_fit)]))
        else:
            means = [float(np.nanmean(surprise[r])) for r in fit_rows if np.isfinite(surprise[r]).any()]
            drift = conformal_threshold(np.asarray(means), episode_rate)

        def episode_path(r: np.ndarray, k: float) -> np.ndarray:
            return cusum(surprise[r], k)

    # each threshold-part episode's statistic at the calibrated drift, run once; with signed, also the
    # largest value of each (side, group, dimension) stream: which streams the threshold comes from
    kept = stream_groups(monitor)  # the other actions' streams never move
    fit_at_drift: list[np.ndarray] = []
    peaks: list[np.ndarray] = []
    for r in fit_rows:
        if signed_z is not None:
            path, peak = signed_cusum_streams(signed_z[r], groups[r], monitor.n_groups, drift)
            peaks.append(peak[:, kept].ravel())
        else:
            path = episode_path(r, drift)
        fit_at_drift.append(path)
    ep_max = np.asarray([float(path.max()) for path in fit_at_drift])
    shift = conformal_threshold(ep_max, episode_rate)
    per_stream = None
    if peaks:
        stacked = np.stack(peaks)
        own = {
            k: conformal_threshold(stacked[:, i], episode_rate) for i, k in enumerate(stream_labels(monitor))
        }
        per_stream = dict(sorted(own.items(), key=lambda kv: -kv[1]))
    per_group = None
    if data.group is not None:  # every group (behaviour policy) within the target, not only the pool
        ep_group = np.asarray([g[0] for g in _per_episode(data.group[part], data.episode[part])])
        per_group = {
            str(g): conformal_threshold(ep_max[ep_group == g], episode_rate) for g in np.unique(ep_group)
        }
        shift = max(per_group.values())
    # energy: the config's drift overrides the file's when the monitor loads (signed: it is the drift)
    fixed = monitor.cfg.drift if signed_z is None else None
    run_drift = drift if fixed is None else fixed

    def at_run_drift(episodes: list[np.ndarray], at_drift: list[np.ndarray]) -> list[np.ndarray]:
        """The statistic as the running monitor computes it (at the config's drift when it fixes one)."""
        return at_drift if run_drift == drift else [episode_path(r, run_drift) for r in episodes]

    fit_paths = at_run_drift(fit_rows, fit_at_drift)
    if intervention_budget is not None:
        shift = max(shift, conformal_threshold(running_maxima(fit_paths), intervention_budget))
    thresholds = {
        "surprise": conformal_threshold(s_fit, step_rate),
        # energy: at least the drift; signed: drift and statistic are not in the same units
        "shift": shift if signed_z is not None else max(shift, drift),
        "residual_bias": conformal_threshold(bias[fit], step_rate),
    }
    held = masks["held_out"]
    whole = np.isin(data.episode, parts["held_out"])
    held_rows = _per_episode(rows[whole], data.episode[whole])
    held_at_drift = [episode_path(r, drift) for r in held_rows]
    held_max = np.asarray([float(path.max()) for path in held_at_drift])
    held_paths = at_run_drift(held_rows, held_at_drift)
    held_share = after_trip_share(held_paths, thresholds["shift"])
    monitor.drift = drift
    monitor.thresholds.update(thresholds)
    fixed_rate = None
    if fixed is not None:
        held_fixed = [float(path.max()) for path in held_paths]  # run_drift is the fixed drift
        fixed_rate = float(np.mean(np.asarray(held_fixed) > thresholds["shift"]))
    return TransitionCalibration(
        monitor=monitor.name,
        residual_scale=monitor.scale.tolist(),
        drift=drift,
        thresholds=thresholds,
        held_out_step_rate={
            "surprise": float(np.mean(~(surprise[held] <= thresholds["surprise"]))),
            "residual_bias": float(np.mean(~(bias[held] <= thresholds["residual_bias"]))),
        },
        held_out_episode_rate=float(np.mean(held_max > thresholds["shift"])),
        episodes={k: len(v) for k, v in parts.items()},
        median_surprise=float(np.median(s_fit)),
        residual_scale_per_action=None if monitor.action_scale is None else monitor.action_scale.tolist(),
        spread_floor_values=None if floor is None else floor.tolist(),
        rows_per_action=None if counts is None else counts.tolist(),
        shift_per_group=per_group,
        split={k: v.tolist() for k, v in parts.items()},
        config_drift=fixed,
        held_out_episode_rate_config_drift=fixed_rate,
        statistic=monitor.cfg.statistic,
        intervention_budget=intervention_budget,
        held_out_after_trip_share=held_share,
        shift_per_stream=per_stream,
        paths=RunPaths(
            fit_paths,
            held_paths,
            None if data.group is None else ep_group,
            0.0 if signed_z is not None else run_drift,
        ),
    )
