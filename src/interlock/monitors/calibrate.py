"""Set the thresholds of ``uncertainty`` and ``transition`` monitors from in-distribution data.

``transition`` monitors are calibrated per episode by
:mod:`interlock.monitors.calibrate_transition` (per-step and per-episode false-alarm targets);
what follows is the ``uncertainty`` part.

The data (a transitions ``.npz``: ``obs`` and ``action``, optionally ``episode``)
is split into a calibration part and a held-out part (by whole episodes when
there are at least four). Each signal's threshold is the conformal
``(1 - rate)`` quantile of its calibration scores (the ``ceil((n + 1)(1 - rate))``-th
smallest), so that a new in-distribution row exceeds it with probability at
most ``rate``; the false-alarm rate actually measured on the held-out part is
reported next to it, per signal and for "any signal of the monitor".

The thresholds go into the file the monitor's ``thresholds_file`` names (or
``--output``), together with the SHA-256 of the ensemble they belong to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from interlock.ensembles.common import EnsembleError
from interlock.ensembles.data import Transitions, load_transitions, split_indices
from interlock.ensembles.model import file_sha256
from interlock.ensembles.thresholds import conformal_threshold, update_thresholds_file
from interlock.errors import ConfigError


@dataclass
class SignalCalibration:
    signal: str
    threshold: float
    calibration_rate: float
    held_out_rate: float


@dataclass
class MonitorCalibration:
    monitor: str
    path: str
    signals: list[SignalCalibration]
    held_out_any_rate: float


@dataclass
class CalibrationReport:
    """What :func:`calibrate` measured and wrote."""

    agent: str
    target: float
    calibration_rows: int
    held_out_rows: int
    monitors: list[MonitorCalibration] = field(default_factory=list)
    transitions: list = field(default_factory=list)  # [TransitionCalibration]

    def summary(self) -> str:
        lines = [
            f"agent {self.agent}: target false-alarm rate {self.target:g}; {self.calibration_rows} "
            f"rows to set "
            f"thresholds, {self.held_out_rows} held out to measure them",
            f"{'signal':34s} {'threshold':>12s} {'FAR (calibration)':>18s} {'FAR (held out)':>15s}",
        ]
        for m in self.monitors:
            for s in m.signals:
                lines.append(
                    f"{m.monitor + '.' + s.signal:34s} {s.threshold:12.5g} {s.calibration_rate:18.4f} "
                    f"{s.held_out_rate:15.4f}"
                )
            lines.append(f"{m.monitor + ' (any signal)':34s} {'':12s} {'':18s} {m.held_out_any_rate:15.4f}")
            lines.append(f"wrote thresholds of '{m.monitor}' to {m.path}")
        lines.extend(t.summary() for t in self.transitions)
        if self.transitions and self.transitions[0].joint is not None:
            lines.append(self.transitions[0].joint.summary())
        return "\n".join(lines)


def joint_record(joint) -> dict:
    """The thresholds file's record of a joint calibration (``JointCalibration``)."""
    return {
        "monitors": joint.monitors,
        "per_episode": joint.episode_rate,
        "intervention_budget": joint.intervention_budget,
        "rank": joint.rank,
        "union_false_alarm_rate": {
            "threshold_part": joint.fit_union_rate,
            "held_out": joint.held_out_union_rate,
        },
        "held_out_union_steps_after_trip": joint.held_out_union_after_trip_share,
        "held_out_episodes": joint.held_out_episodes,
        # how likely the held-out trips are if the target held (small: expect more calm trips)
        "held_out_over_target_p": joint.held_out_over_target,
    }


def monitor_scores(monitor, data: Transitions, rows: np.ndarray, spaces, batch_size: int = 4096):
    """``{signal: [len(rows)]}`` raw scores of ``monitor`` on the given rows, in batches."""
    from interlock.batch import Batch

    obs_shape = spaces.observation.shape
    out: dict[str, list[np.ndarray]] = {s: [] for s in monitor.signal_names}
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        obs = data.obs[idx].reshape(len(idx), *obs_shape).astype(spaces.observation.dtype)
        act = np.asarray(data.action[idx])
        act = act.astype(spaces.action.dtype).reshape(len(idx), *spaces.action.shape)
        batch = Batch(data.source, obs, act, np.zeros(len(idx), np.int64))
        for s, v in monitor.scores(batch).items():
            out[s].append(np.asarray(v, np.float64))
    return {s: np.concatenate(v) if v else np.zeros(0) for s, v in out.items()}


def rules_only_guard(loaded: Any, agent: str, rules: list[str]) -> Any:
    """A loaded :class:`~interlock.engine.Guard` of ``loaded`` whose agent ``agent`` keeps only the
    policy rules named ``rules`` (its monitors, fallbacks and everything else as configured).

    Raises:
        ConfigError: a name is not one of the agent's rules, or a monitor cannot load (e.g. its
            thresholds file does not exist yet: calibrate once without ``--under-rule`` first).
    """
    from interlock.config import LoadedConfig
    from interlock.engine import Guard

    agents = list(loaded.config.agents)
    index = next(i for i, a in enumerate(agents) if a.id == agent)
    cfg = agents[index]
    known = [r.name for r in cfg.policy.rules]
    unknown = [r for r in rules if r not in known]
    if unknown:
        raise ConfigError(
            f"{loaded.source}: --under-rule {', '.join(unknown)}: agent '{agent}' has no such rule "
            f"(its rules: {', '.join(str(k) for k in known) or 'none'})"
        )
    kept = [r for r in cfg.policy.rules if r.name in rules]
    agents[index] = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"rules": kept})})
    reduced = LoadedConfig(
        loaded.config.model_copy(update={"agents": agents}), loaded.base_dir, loaded.version, loaded.source
    )
    try:
        return Guard(reduced).load()
    except ConfigError as exc:
        raise ConfigError(f"--under-rule runs the agent's monitors as configured now: {exc}") from exc


def guarded_act(guard: Any, agent: str, obs_shape: tuple[int, ...]) -> Any:
    """``act`` of :func:`~interlock.monitors.calibrate_transition.rollout_episodes`: the proposed actions
    of a lockstep batch checked by ``guard`` in one call (episode ``calibrate-<e>``, its step), the
    decisions' actions executed."""
    from interlock.types import CheckInput

    def act(obs: np.ndarray, actions: np.ndarray, episodes: np.ndarray, steps: np.ndarray) -> np.ndarray:
        rows = [
            CheckInput(agent, obs[i].reshape(obs_shape), actions[i], episode_id=f"calibrate-{e}", step=int(t))
            for i, (e, t) in enumerate(zip(episodes.tolist(), steps.tolist(), strict=True))
        ]
        out = []
        for d, e, t in zip(guard.check(rows), episodes.tolist(), steps.tolist(), strict=True):
            if d.action is None:
                raise EnsembleError(f"--under-rule: episode {e} step {t}: {d.verdict.name}, no action")
            out.append(np.asarray(d.action))
        return np.stack(out)

    return act


def calibrate(
    config: str | Path,
    agent: str,
    data: str | Path | dict[str, np.ndarray] | None,
    rate: float = 0.01,
    holdout: float = 0.3,
    seed: int = 0,
    monitors: list[str] | None = None,
    output: str | Path | None = None,
    episode_rate: float = 0.05,
    env: str | None = None,
    policy: str | None = None,
    episodes: int = 100,
    env_seed: int = 0,
    policy_output: str = "logits",
    progress: bool = False,
    group_by: str | None = None,
    intervention_budget: float | None = None,
    joint: bool = False,
    under_rules: list[str] | None = None,
) -> CalibrationReport:
    """Calibrate every ``uncertainty`` and ``transition`` monitor of ``agent`` (or those named).

    Args:
        data: A transitions ``.npz`` (or its arrays); None to roll ``policy`` out in ``env`` instead.
        rate: Per-step false-alarm target of every signal (``shift``: see ``episode_rate``).
        episode_rate: Transition monitors: share of in-distribution episodes ``shift`` may trip in.
        env, policy, episodes, env_seed, policy_output: The rollout when ``data`` is None.
        progress: tqdm bars.
        group_by: Transition monitors: the ``.npz`` array naming each row's group (e.g. ``policy``); the
            shift threshold is the largest of the groups' own quantiles (see ``calibrate_transition``).
        intervention_budget: Transition monitors: share of calm steps that may follow a trip (what a
            response latched on ``episode.shifted`` intervenes on); raises ``shift`` if need be.
        joint: Transition monitors: ``episode_rate`` and ``intervention_budget`` hold for the union of
            the agent's transition monitors (``episode.shifted``), not for each
            (:func:`~interlock.monitors.calibrate_transition.joint_shift_thresholds`); all of them are
            calibrated together.
        under_rules: With a rollout: the policy's actions go through Interlock with only these rules of
            the agent's policy (its monitors as configured now, their current thresholds files), and the
            data holds what was executed: calibrate on the episodes the guard will produce before a
            trip, e.g. with a probe rule that fires an actuator early in every episode
            (:func:`rules_only_guard`).

    Raises:
        ConfigError: the config or agent is wrong, or no thresholds file is named.
        EnsembleError: the data is unusable.
    """
    from interlock.config import TransitionMonitorConfig, UncertaintyMonitorConfig, load_config
    from interlock.monitors import uncertainty_monitor
    from interlock.monitors.calibrate_transition import (
        calibrate_transition,
        episodes_of,
        joint_shift_thresholds,
        rollout_episodes,
    )
    from interlock.monitors.transition import TransitionMonitor
    from interlock.runtime import ModelRuntime
    from interlock.spaces import AgentSpaces

    if not 0.0 < rate < 1.0:
        raise EnsembleError(f"--false-alarm-rate must be in (0, 1), got {rate}")
    loaded = load_config(config)
    agent_cfg = next((a for a in loaded.config.agents if a.id == agent), None) or loaded.config.agent_for(
        agent
    )
    if agent_cfg is None:
        known = ", ".join(a.id for a in loaded.config.agents)
        raise ConfigError(f"{config}: no agent '{agent}' (configured: {known})")
    wanted = (UncertaintyMonitorConfig, TransitionMonitorConfig)
    chosen_all = [
        m for m in agent_cfg.monitors if isinstance(m, wanted) and (not monitors or m.name in monitors)
    ]
    if not chosen_all:
        names = ", ".join(m.name for m in agent_cfg.monitors)
        raise ConfigError(
            f"{config}: agent '{agent_cfg.id}' has no uncertainty or transition monitor"
            + (f" named {', '.join(monitors)}" if monitors else "")
            + f" (its monitors: {names})"
        )
    chosen = [m for m in chosen_all if isinstance(m, UncertaintyMonitorConfig)]
    transitions = [m for m in chosen_all if isinstance(m, TransitionMonitorConfig)]
    if joint:
        every = [m.name for m in agent_cfg.monitors if isinstance(m, TransitionMonitorConfig)]
        left_out = sorted(set(every) - {m.name for m in transitions})
        if not transitions or left_out:
            raise ConfigError(
                f"{config}: --joint calibrates every transition monitor of agent '{agent_cfg.id}' together "
                + (
                    f"(left out by --monitor: {', '.join(left_out)}; drop --monitor)"
                    if left_out
                    else "(it has none)"
                )
            )
    spaces = AgentSpaces.from_config(agent_cfg)
    runtime = ModelRuntime.for_config(loaded)
    episode_data = None
    if under_rules and data is not None:
        raise EnsembleError("--under-rule changes a rollout of --policy; --data is already recorded")
    if data is None:
        if group_by is not None:
            raise EnsembleError("--group-by names an array of --data; a rollout of --policy has no groups")
        if not (env and policy):
            raise EnsembleError("give --data FILE.npz, or --env ID and --policy POLICY.onnx to roll out")
        act = None
        if under_rules:
            guard = rules_only_guard(loaded, agent_cfg.id, under_rules)
            act = guarded_act(guard, agent_cfg.id, spaces.observation.shape)
        episode_data = rollout_episodes(
            env,
            policy,
            spaces,
            episodes,
            seed=env_seed,
            policy_output=policy_output,
            progress=progress,
            act=act,
        )
        data = {"obs": episode_data.obs, "action": episode_data.action, "episode": episode_data.episode}
    ds = load_transitions(data)
    if int(np.prod(spaces.observation.shape)) != ds.obs.shape[1]:
        raise EnsembleError(
            f"{ds.source}: observations have {ds.obs.shape[1]} values; agent '{agent_cfg.id}' observes "
            f"shape {list(spaces.observation.shape)}"
        )
    fit, held = split_indices(ds, holdout, seed)
    report = CalibrationReport(agent_cfg.id, rate, len(fit), len(held))
    for mcfg in chosen:
        where = f"{loaded.source}: agents[{agent_cfg.id}].monitors[{mcfg.name}]"
        target = output if output is not None else mcfg.thresholds_file
        if target is None:
            raise ConfigError(
                f"{where} has no thresholds_file: add `thresholds_file: thresholds.json` to it or "
                f"pass --output"
            )
        path = loaded.resolve(str(target)) if output is None else Path(output)
        monitor = uncertainty_monitor(mcfg, spaces, runtime, where, calibrating=True)
        monitor.load()
        cal = monitor_scores(monitor, ds, fit, spaces)
        test = monitor_scores(monitor, ds, held, spaces)
        signals = []
        any_trip = np.zeros(len(held), bool)
        for s in monitor.signal_names:
            thr = conformal_threshold(cal[s], rate)
            trip = ~(test[s] <= thr)
            any_trip |= trip
            signals.append(SignalCalibration(s, thr, float(np.mean(~(cal[s] <= thr))), float(np.mean(trip))))
        report.monitors.append(MonitorCalibration(mcfg.name, str(path), signals, float(np.mean(any_trip))))
        entry = {
            "model": mcfg.model,
            "model_sha256": file_sha256(monitor.model.resolved),
            "ensemble": mcfg.ensemble,
            "thresholds": {s.signal: s.threshold for s in signals},
            "held_out_false_alarm_rate": {s.signal: s.held_out_rate for s in signals},
            "held_out_any_signal_false_alarm_rate": float(np.mean(any_trip)),
            "samples": {"calibration": len(fit), "held_out": len(held)},
            "data": Path(ds.source).name,
        }
        update_thresholds_file(path, agent_cfg.id, rate, {mcfg.name: entry})
    calibrated = []
    for tcfg in transitions:
        where = f"{loaded.source}: agents[{agent_cfg.id}].monitors[{tcfg.name}]"
        target = output if output is not None else tcfg.thresholds_file
        if target is None:
            raise ConfigError(
                f"{where} has no thresholds_file: add `thresholds_file: thresholds.json` to it or "
                "pass --output"
            )
        path = loaded.resolve(str(target)) if output is None else Path(output)
        tmon = TransitionMonitor(tcfg, spaces, runtime, where, require_thresholds=False)
        tmon.load()
        if episode_data is None:
            episode_data = episodes_of(ds, group_by)
        cal = calibrate_transition(
            tmon,
            episode_data,
            step_rate=rate,
            episode_rate=episode_rate,
            holdout=holdout,
            seed=seed,
            progress=progress,
            intervention_budget=None if joint else intervention_budget,
        )
        cal.path = str(path)
        report.transitions.append(cal)
        calibrated.append((tcfg, tmon, cal, path))
    if joint:
        joint_shift_thresholds([c for _, _, c, _ in calibrated], episode_rate, intervention_budget)
    data_name = "" if episode_data is None else Path(episode_data.source).name
    for tcfg, tmon, cal, path in calibrated:
        entry = {
            "kind": "transition",
            "model": tcfg.model,
            "model_sha256": file_sha256(tmon.model.resolved),
            "statistic": tcfg.statistic,
            "aggregate": tcfg.aggregate,
            "dims": tcfg.dims,
            "clip": tcfg.clip,
            "drift_rule": tcfg.drift_rule,
            "residual_scale": cal.residual_scale,
            **(
                {
                    "spread": tcfg.spread,
                    "spread_floor": tcfg.spread_floor,
                    "spread_min_rows": tcfg.spread_min_rows,
                    "residual_scale_per_action": cal.residual_scale_per_action,
                    "spread_floor_values": cal.spread_floor_values,
                    "rows_per_action": cal.rows_per_action,
                }
                if tcfg.spread == "per_action"
                else {"spread": tcfg.spread}
            ),
            "scale_statistic": tcfg.scale_statistic,
            "score_actions": tcfg.score_actions or "all",
            **(
                {"disagreement": tcfg.disagreement, "disagreement_scale": tcfg.disagreement_scale}
                if tcfg.disagreement == "add"
                else {"disagreement": tcfg.disagreement}
            ),
            "drift": cal.drift,
            "thresholds": cal.thresholds,
            "false_alarm_rate": {"per_step": rate, "per_episode": episode_rate},
            "held_out_false_alarm_rate": {
                **cal.held_out_step_rate,
                "shift_per_episode": cal.held_out_episode_rate,
                "steps_after_trip": cal.held_out_after_trip_share,
            },
            **({"intervention_budget": intervention_budget} if intervention_budget is not None else {}),
            "episodes": cal.episodes,
            **({"group_by": group_by, "shift_threshold_per_group": cal.shift_per_group} if group_by else {}),
            **({"shift_threshold_per_stream": cal.shift_per_stream} if cal.shift_per_stream else {}),
            **({"joint": joint_record(cal.joint)} if cal.joint is not None else {}),
            "data": data_name,
        }
        update_thresholds_file(path, agent_cfg.id, rate, {tcfg.name: entry})
    return report
