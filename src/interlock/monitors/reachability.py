"""The ``reachability`` monitor: exact shields over finite models, recoverability over learned dynamics.

Tabular model (``model: {kind: tabular, transitions: FILE.npz}``): the tables of
:mod:`interlock.reachability.shield_build` are solved (or read from the cache of
``interlock shield build``) at load; a check is a table lookup per row.

Dynamics model (``model: {kind: dynamics_ensemble, model: FILE.onnx}``): each
proposed action is checked by rolling the backup policy out under every ensemble
member (:mod:`interlock.reachability.recoverability`).

Example config::

    monitors:
      - kind: reachability
        name: shield
        model: {kind: tabular, transitions: cliffwalking.npz}
    policy:
      rules:
        - {name: shield, when: "tripped.shield.unsafe", verdict: substitute, fallback: safe}
    fallbacks:
      safe: {kind: shield, monitor: shield}
"""

from __future__ import annotations

import logging

import numpy as np

from interlock.batch import Batch, SignalBatch
from interlock.config import ReachabilityMonitorConfig
from interlock.errors import ConfigError
from interlock.monitors.base import Monitor
from interlock.reachability.constraints import BatchedCondition
from interlock.reachability.recoverability import OnnxBackupPolicy, OnnxDynamics, Recoverability
from interlock.reachability.shield_build import ShieldSettings, ShieldTables, default_cache_path, tables_for

log = logging.getLogger(__name__)


class TabularReachabilityMonitor(Monitor):
    """Shield lookups on a finite model. Signals: ``unsafe``, ``risk``, ``lost``, ``irreversibility``.

    * ``unsafe``: 1.0 where the shield forbids the action (it can leave the winning region;
      with ``risk:``, its risk exceeds delta). Threshold 0.5.
    * ``risk``: probability of entering an unsafe state within the risk horizon after the
      action, acting as safely as possible afterwards. Threshold: delta (0 without ``risk:``).
    * ``lost``: 1.0 where the shield allows no action at the current state. Threshold 0.5.
    * ``irreversibility``: expected share of the states reachable now that the action makes
      unreachable (relative reachability). Threshold ``irreversibility_threshold`` (0.5).

    A state index outside the model, or not a whole number, raises (the engine fails closed).
    """

    kind = "reachability"

    def __init__(self, cfg: ReachabilityMonitorConfig, spaces, runtime, where: str) -> None:
        super().__init__(cfg.name, spaces, runtime)
        self.where = where
        model = cfg.model
        if not spaces.action.discrete:
            raise ConfigError(f"{where}: a tabular reachability model needs a discrete action space")
        size = int(np.prod(spaces.observation.shape))
        field = model.state_field
        if field is None and size != 1:
            raise ConfigError(
                f"{where}.model.state_field: the observation has {size} elements; say which "
                "one holds the state index (a flat index), or send the index alone (shape [])"
            )
        if field is not None and field >= size:
            raise ConfigError(
                f"{where}.model.state_field is {field}, but the observation has {size} elements"
            )
        self.field = field or 0
        self.transitions = runtime.resolve(model.transitions)
        risk = cfg.risk
        self.settings = ShieldSettings(
            delta=risk.delta if risk else None,
            horizon=risk.horizon if risk else ShieldSettings.horizon,
            relative=risk.relative if risk else False,
            relative_reachability=cfg.relative_reachability,
        )
        self.cache = (
            runtime.resolve(model.cache)
            if model.cache
            else default_cache_path(self.transitions, self.settings)
        )
        self.risk_threshold = risk.delta if risk else 0.0
        self.irreversibility_threshold = (
            0.5 if cfg.irreversibility_threshold is None else cfg.irreversibility_threshold
        )
        self.tables: ShieldTables | None = None
        self.loaded_from = ""

    @property
    def signal_names(self) -> list[str]:
        return ["unsafe", "risk", "lost", "irreversibility"]

    def load(self) -> None:
        tables, origin = tables_for(self.transitions, self.settings, cache=self.cache)
        if tables.n_actions != self.spaces.action.n:
            raise ConfigError(
                f"{self.where}.model: {self.transitions} has {tables.n_actions} actions; the "
                f"agent's action space has n={self.spaces.action.n}"
            )
        if origin == "solved" and tables.n_states * tables.n_actions > 1_000_000:
            log.warning(
                "%s: solved %s at load; run `interlock shield build` to cache the tables",
                self.where,
                self.transitions,
            )
        self.tables = tables
        self.loaded_from = origin
        self.ready = True

    def states(self, observations: np.ndarray) -> np.ndarray:
        """``[batch]`` int64 state indices from ``[batch, *obs_shape]`` observations.

        Raises:
            ValueError: an index is not a whole number or lies outside the model.
        """
        tables = self.require_tables()
        raw = np.asarray(observations).reshape(len(observations), -1)[:, self.field]
        if raw.dtype.kind == "f" and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
            raise ValueError(f"state index {raw.tolist()} is not a whole number")
        s = raw.astype(np.int64)
        bad = (s < 0) | (s >= tables.n_states)
        if bad.any():
            raise ValueError(
                f"state index {int(s[bad][0])} is outside the model's states [0, {tables.n_states})"
            )
        return s

    def require_tables(self) -> ShieldTables:
        """The loaded tables; raises if :meth:`load` has not run (the engine then fails closed)."""
        if self.tables is None:
            raise RuntimeError(f"{self.where}: the monitor is not loaded")
        return self.tables

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        t = self.require_tables()
        s = self.states(batch.observations)
        a = np.asarray(batch.actions).reshape(len(batch)).astype(np.int64)
        valid = (a >= 0) & (a < t.n_actions)
        ac = np.where(valid, a, 0)
        unsafe = np.where(valid, ~t.allowed[s, ac], True).astype(np.float64)
        risk = np.where(valid, 1.0 - t.safety[s, ac].astype(np.float64), 1.0)
        lost = (~t.allowed[s].any(axis=1)).astype(np.float64)
        irr = np.where(valid, t.irreversibility[s, ac].astype(np.float64), 1.0)
        return {
            "unsafe": SignalBatch.above(unsafe, 0.5),
            "risk": SignalBatch.above(risk, self.risk_threshold),
            "lost": SignalBatch.above(lost, 0.5),
            "irreversibility": SignalBatch.above(irr, self.irreversibility_threshold),
        }


class RecoverabilityMonitor(Monitor):
    """Backup-policy rollouts under a dynamics ensemble. Signals: ``unsafe``, ``irreversibility``, ``margin``.

    * ``irreversibility``: share of members under which the rollout from the proposed
      action's next state breaks a constraint or never re-enters the safe set. Threshold
      ``irreversibility_threshold`` (0.0: any failing member trips it).
    * ``unsafe``: 1.0 where ``irreversibility`` is tripped. Threshold 0.5.
    * ``margin``: fewest steps before a constraint breaks, over members (``horizon`` when none
      does). Tripped when below ``min_margin``.
    """

    kind = "reachability"

    def __init__(self, cfg: ReachabilityMonitorConfig, spaces, runtime, where: str) -> None:
        super().__init__(cfg.name, spaces, runtime)
        self.cfg = cfg
        self.where = where
        self.obs_dim = int(np.prod(spaces.observation.shape))
        self.constraints = [
            BatchedCondition(expr, self.obs_dim, f"{where}.constraints.{name}")
            for name, expr in cfg.constraints.items()
        ]
        self.safe_set = (
            BatchedCondition(cfg.safe_set, self.obs_dim, f"{where}.safe_set") if cfg.safe_set else None
        )
        self.threshold = 0.0 if cfg.irreversibility_threshold is None else cfg.irreversibility_threshold
        self.engine: Recoverability | None = None

    @property
    def signal_names(self) -> list[str]:
        return ["unsafe", "irreversibility", "margin"]

    def load(self) -> None:
        cfg, model = self.cfg, self.cfg.model
        session = self.runtime.session(model.model, what=f"{self.where}.model.model")
        dyn = OnnxDynamics(
            session,
            self.obs_dim,
            self.spaces.action,
            model.predicts,
            model.obs_input,
            model.action_input,
            model.output_name,
            where=f"{self.where}.model",
        )
        bp = cfg.backup_policy
        backup = OnnxBackupPolicy(
            self.runtime.session(bp.model, what=f"{self.where}.backup_policy.model"),
            self.spaces.action,
            bp.output,
            bp.input_name,
            bp.output_name,
            self.spaces.observation.shape,
            where=f"{self.where}.backup_policy",
        )
        self.engine = Recoverability(dyn, backup, self.constraints, self.safe_set, cfg.horizon)
        self.ready = True

    def evaluate(self, observations: np.ndarray, actions: np.ndarray):
        """The :class:`~interlock.reachability.recoverability.RolloutResult` of ``[N, ...]`` rows."""
        if self.engine is None:
            raise RuntimeError(f"{self.where}: the monitor is not loaded")
        return self.engine.rollout(np.asarray(observations).reshape(len(observations), -1), actions)

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        result = self.evaluate(batch.observations, batch.actions)
        share = result.failing_share
        irr = SignalBatch.above(share, self.threshold)
        margin = result.worst_margin.astype(np.float64)
        return {
            "unsafe": SignalBatch.above(irr.tripped.astype(np.float64), 0.5),
            "irreversibility": irr,
            "margin": SignalBatch(margin, float(self.cfg.min_margin), ~(margin >= self.cfg.min_margin)),
        }


def build_reachability(cfg: ReachabilityMonitorConfig, spaces, runtime, where: str) -> Monitor:
    """The monitor class that fits ``cfg.model.kind``."""
    if cfg.model.kind == "tabular":
        return TabularReachabilityMonitor(cfg, spaces, runtime, where)
    return RecoverabilityMonitor(cfg, spaces, runtime, where)
