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
from dataclasses import dataclass

import numpy as np

from interlock.batch import Batch, SignalBatch
from interlock.config import ReachabilityMonitorConfig
from interlock.errors import ConfigError
from interlock.monitors.base import Monitor
from interlock.plugins import load_callable
from interlock.reachability.candidates import Candidates, CandidateSet
from interlock.reachability.constraints import BatchedCondition
from interlock.reachability.correction import ResidualSource, batch_bias
from interlock.reachability.recoverability import (
    Continuation,
    Dynamics,
    OnnxBackupPolicy,
    OnnxDynamics,
    PolicyContinuation,
    PythonDynamics,
    Recoverability,
    RepeatContinuation,
    RolloutResult,
)
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


@dataclass(frozen=True)
class CandidateResult:
    """Every candidate of every row, rolled out.

    Attributes:
        candidates: The :class:`~interlock.reachability.candidates.Candidates` (``C`` per row).
        share: ``[batch, C]`` share of members whose rollout fails.
        margin: ``[batch, C]`` fewest steps before a constraint breaks, over members.
        safe: ``[batch, C]`` bool, the share is within the monitor's threshold.
    """

    candidates: Candidates
    share: np.ndarray
    margin: np.ndarray
    safe: np.ndarray


class RecoverabilityMonitor(Monitor):
    """Rollouts under a dynamics model. Signals: ``unsafe``, ``irreversibility``, ``margin``.

    * ``irreversibility``: share of members under which the rollout from the proposed
      action's next state breaks a constraint or never re-enters the safe set. Threshold
      ``irreversibility_threshold`` (0.0: any failing member trips it).
    * ``unsafe``: 1.0 where ``irreversibility`` is tripped. Threshold 0.5.
    * ``margin``: fewest steps before a constraint breaks, over members (``horizon`` when none
      does). Tripped when below ``min_margin``.

    Shield mode (``candidates:``) rolls out every candidate action of every row in the same
    batch and adds ``safe_count`` (candidates whose worst case stays inside the constraints;
    tripped at 0) and ``best_margin`` (the largest worst-case margin of any candidate; tripped
    below ``min_margin``). The model may be an ONNX ensemble or a ``kind: python`` model, the
    rollout may follow the backup policy, another policy or the first action
    (``continuation:``), and every prediction may be shifted by the episode's residual bias
    (``correction:``).
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
        self.candidate_set = (
            CandidateSet(spaces.action, cfg.candidates.samples, cfg.candidates.seed, f"{where}.candidates")
            if cfg.candidates is not None
            else None
        )
        self.correction: ResidualSource | None = None
        self.engine: Recoverability | None = None

    @property
    def signal_names(self) -> list[str]:
        base = ["unsafe", "irreversibility", "margin"]
        return base + (["safe_count", "best_margin"] if self.candidate_set is not None else [])

    def bind(self, monitors) -> None:
        """Find the ``correction:`` monitor among the agent's monitors (by name)."""
        corr = self.cfg.correction
        if corr is None:
            return
        where = f"{self.where}.correction"
        source = monitors.get(corr.monitor)
        if source is None:
            have = ", ".join(sorted(monitors)) or "none"
            raise ConfigError(
                f"{where}.monitor names '{corr.monitor}', which is not a monitor of this agent ({have})"
            )
        if not isinstance(source, ResidualSource):
            raise ConfigError(
                f"{where}.monitor '{corr.monitor}' is a {type(source).__name__}, which has no "
                "residual_bias(batch); name a transition monitor or a python monitor whose object "
                "defines residual_bias"
            )
        self.correction = source

    def _dynamics(self) -> Dynamics:
        model = self.cfg.model
        where = f"{self.where}.model"
        if model.kind == "python":
            fn = load_callable(model.callable, model.kwargs, where)
            return PythonDynamics(
                fn, self.spaces.observation.shape, self.spaces.action, model.predicts, where
            )
        session = self.runtime.session(model.model, what=f"{where}.model")
        return OnnxDynamics(
            session,
            self.obs_dim,
            self.spaces.action,
            model.predicts,
            model.obs_input,
            model.action_input,
            model.output_name,
            where=where,
        )

    def _policy(self, model: str, output: str, input_name, output_name, where: str) -> OnnxBackupPolicy:
        return OnnxBackupPolicy(
            self.runtime.session(model, what=f"{where}.model"),
            self.spaces.action,
            output,
            input_name,
            output_name,
            self.spaces.observation.shape,
            where=where,
        )

    def load(self) -> None:
        cfg = self.cfg
        dyn = self._dynamics()
        bp = cfg.backup_policy
        backup = (
            self._policy(bp.model, bp.output, bp.input_name, bp.output_name, f"{self.where}.backup_policy")
            if bp is not None
            else None
        )
        cont: Continuation | None = None
        c = cfg.continuation
        if c is not None and c.kind == "policy":
            assert c.model is not None  # the config model checks it
            cont = PolicyContinuation(
                self._policy(c.model, c.output, c.input_name, c.output_name, f"{self.where}.continuation")
            )
        elif c is not None and c.kind == "repeat":
            cont = RepeatContinuation()
        self.engine = Recoverability(dyn, backup, self.constraints, self.safe_set, cfg.horizon, cont)
        src = self.correction
        if (
            src is not None
            and getattr(src, "ready", False)
            and not getattr(src, "provides_residual_bias", True)
        ):
            raise ConfigError(
                f"{self.where}.correction.monitor '{self.cfg.correction.monitor}': its python object "
                "defines no residual_bias(batch) -> [batch, obs_dim]"
            )
        self.ready = True

    def require_engine(self) -> Recoverability:
        if self.engine is None:
            raise RuntimeError(f"{self.where}: the monitor is not loaded")
        return self.engine

    def bias(self, batch: Batch) -> np.ndarray | None:
        """``[batch, obs_dim]`` correction of ``batch``'s rollouts (``gain`` x the source's bias), or None."""
        if self.correction is None or self.cfg.correction is None:
            return None
        b = batch_bias(self.correction, batch, self.obs_dim, f"{self.where}.correction")
        return self.cfg.correction.gain * b

    def evaluate(
        self, observations: np.ndarray, actions: np.ndarray, bias: np.ndarray | None = None
    ) -> RolloutResult:
        """The :class:`~interlock.reachability.recoverability.RolloutResult` of ``[N, ...]`` rows.

        ``bias`` ``[N, obs_dim]`` shifts every prediction of row ``n`` (None: no correction).
        """
        engine = self.require_engine()
        return engine.rollout(np.asarray(observations).reshape(len(observations), -1), actions, bias)

    def evaluate_candidates(self, batch: Batch, candidate_set: CandidateSet | None = None) -> CandidateResult:
        """Roll out every candidate of every row of ``batch`` in one rollout of ``batch x C`` rows.

        Args:
            batch: The rows (their proposed actions are among the candidates).
            candidate_set: Which candidates; default the monitor's own (``candidates:``), else
                every action (discrete) or 16 samples (box).
        """
        engine = self.require_engine()
        cset = candidate_set or self.candidate_set or CandidateSet(self.spaces.action, where=self.where)
        n = len(batch)
        obs = np.asarray(batch.observations).reshape(n, -1)
        backup = engine.backup.act(obs) if engine.backup is not None else None
        cands = cset.build(np.asarray(batch.actions), backup)
        C = cands.count
        bias = self.bias(batch)
        flat_act = cands.actions.reshape(n * C, *self.spaces.action.shape)
        result = self.evaluate(
            np.repeat(obs, C, axis=0), flat_act, None if bias is None else np.repeat(bias, C, axis=0)
        )
        share = result.failing_share.reshape(n, C)
        return CandidateResult(cands, share, result.worst_margin.reshape(n, C), share <= self.threshold)

    def _signals(self, share: np.ndarray, margin: np.ndarray) -> dict[str, SignalBatch]:
        irr = SignalBatch.above(share, self.threshold)
        margin = margin.astype(np.float64)
        return {
            "unsafe": SignalBatch.above(irr.tripped.astype(np.float64), 0.5),
            "irreversibility": irr,
            "margin": SignalBatch(margin, float(self.cfg.min_margin), ~(margin >= self.cfg.min_margin)),
        }

    def check_row(self, batch: Batch) -> list[tuple[float, float, bool]] | None:
        """One row's rollout, its signals read in Python (:meth:`_signals` of one value); None in
        shield mode (``candidates:``)."""
        if self.candidate_set is not None or len(batch) != 1:
            return None
        result = self.evaluate(batch.observations, batch.actions, self.bias(batch))
        failed = result.failed.reshape(-1).tolist()  # [K] of the one row
        share = sum(failed) / len(failed)  # failing_share: an exact count over K, correctly rounded
        worst = float(min(result.margin.reshape(-1).tolist()))
        threshold, min_margin = float(self.threshold), float(self.cfg.min_margin)
        irreversible = not share <= threshold  # SignalBatch.above (NaN cannot occur: a count)
        return [
            (1.0 if irreversible else 0.0, 0.5, irreversible),
            (share, threshold, irreversible),
            (worst, min_margin, not worst >= self.cfg.min_margin),
        ]

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        if self.candidate_set is None:
            result = self.evaluate(batch.observations, batch.actions, self.bias(batch))
            return self._signals(result.failing_share, result.worst_margin)
        res = self.evaluate_candidates(batch)
        rows = np.arange(len(batch))
        col = res.candidates.proposed
        out = self._signals(res.share[rows, col], res.margin[rows, col])
        safe_count = res.safe.sum(axis=1).astype(np.float64)
        best = res.margin.max(axis=1).astype(np.float64)
        out["safe_count"] = SignalBatch(safe_count, 0.5, ~(safe_count >= 0.5))
        out["best_margin"] = SignalBatch(best, float(self.cfg.min_margin), ~(best >= self.cfg.min_margin))
        return out


def build_reachability(cfg: ReachabilityMonitorConfig, spaces, runtime, where: str) -> Monitor:
    """The monitor class that fits ``cfg.model.kind``."""
    if cfg.model.kind == "tabular":
        return TabularReachabilityMonitor(cfg, spaces, runtime, where)
    return RecoverabilityMonitor(cfg, spaces, runtime, where)
