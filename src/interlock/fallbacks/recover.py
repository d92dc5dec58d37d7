"""The ``recover`` and ``shield_choice`` fallbacks: choices among rolled-out candidate actions.

Both ask the monitor to roll out every candidate action of every row in one batch
(:meth:`~interlock.monitors.reachability.RecoverabilityMonitor.evaluate_candidates`); they
differ only in how they choose.
"""

from __future__ import annotations

import numpy as np

from interlock.errors import ConfigError
from interlock.fallbacks.binding import MonitorBoundFallback
from interlock.fallbacks.shield import onnx_scores
from interlock.monitors.reachability import CandidateResult, RecoverabilityMonitor
from interlock.reachability.candidates import CandidateSet


class RecoverFallback(MonitorBoundFallback):
    """Scores candidate actions with the monitor's rollout check, all rows and candidates in one batch.

    Candidates: every action (discrete); for box actions, ``candidates`` points drawn
    uniformly in the box once at load, plus per row the backup policy's action and the
    proposed action clipped to the box. Ranking, lexicographic: fewest failing members,
    then the largest worst-case margin, then the backup policy's action (the proposed
    one was flagged), then closeness to the proposed action.
    """

    kind = "recover"
    monitor_class = RecoverabilityMonitor
    monitor_what = "a reachability monitor with a dynamics_ensemble or python model"

    def __init__(
        self,
        name,
        spaces,
        runtime,
        monitor: str,
        candidates: int = 16,
        seed: int = 0,
        where: str = "fallback",
    ) -> None:
        super().__init__(name, spaces, runtime, monitor, where)
        self.candidate_set = CandidateSet(spaces.action, candidates, seed, where)

    def _evaluate(self, batch) -> CandidateResult:
        mon: RecoverabilityMonitor = self.monitor
        if mon.engine is None:
            raise RuntimeError(f"{self.where}: monitor '{self.monitor_name}' is not loaded")
        return mon.evaluate_candidates(batch, self.candidate_set)

    def _closeness(self, batch, res: CandidateResult) -> np.ndarray:
        """``[batch, C]`` distance of each candidate to the proposed action (0/1 for discrete)."""
        space = self.spaces.action
        n = len(batch)
        proposed = np.asarray(batch.actions)
        cands = res.candidates.actions
        if space.discrete:
            return (cands != proposed.reshape(n, 1)).astype(np.float64)
        span = np.where(space.high > space.low, space.high - space.low, 1.0).reshape(-1)
        diff = (cands - np.nan_to_num(proposed, nan=0.0)[:, None]).reshape(n, cands.shape[1], -1) / span
        return np.sqrt((diff**2).sum(axis=2))

    def _ranked(self, res: CandidateResult, closeness: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Per row in ``rows``: fewest failing members, largest worst-case margin, the backup's action,
        then the candidate closest to the proposed action."""
        return np.array(
            [
                np.lexsort((closeness[i], ~res.candidates.backup[i], -res.margin[i], res.share[i]))[0]
                for i in rows
            ],
            dtype=np.int64,
        )

    def propose(self, batch, signals) -> np.ndarray:
        res = self._evaluate(batch)
        n = len(batch)
        best = self._ranked(res, self._closeness(batch, res), np.arange(n))
        return res.candidates.actions[np.arange(n), best].astype(self.spaces.action.dtype)


class ShieldChoiceFallback(RecoverFallback):
    """The model-predictive shield's choice.

    Per row: the proposed action if its worst case over members stays inside the constraints
    (the monitor's threshold); else, among the safe candidates, the one the agent scores highest
    (``scores``: an ONNX model from observations ``[batch, ...]`` to ``[batch, n_actions]`` logits
    or Q-values; discrete actions only), or without scores the one with the largest worst-case
    margin (then the backup policy's action, then the closest to the proposed one); else, when no
    candidate is safe, the ``recover`` ranking (fewest failing members, then the largest margin).

    The candidates are the monitor's (``candidates:`` in shield mode), else this fallback's own.
    """

    kind = "shield_choice"

    def __init__(
        self,
        name,
        spaces,
        runtime,
        monitor: str,
        scores: str | None = None,
        candidates: int = 16,
        seed: int = 0,
        where: str = "fallback",
    ) -> None:
        super().__init__(name, spaces, runtime, monitor, candidates, seed, where)
        if scores is not None and not spaces.action.discrete:
            raise ConfigError(f"{where}.scores: agent scores [batch, n_actions] need a discrete action space")
        self.scores_path = scores
        self._scores = None

    def bind(self, monitors) -> None:
        super().bind(monitors)
        if self.monitor.candidate_set is not None:
            self.candidate_set = self.monitor.candidate_set

    def load(self) -> None:
        self.require_bound()
        if self.scores_path is not None:
            self._scores = self.runtime.session(self.scores_path, what=f"{self.where}.scores")
        self.ready = True

    def propose(self, batch, signals) -> np.ndarray:
        res = self._evaluate(batch)
        n = len(batch)
        rows = np.arange(n)
        safe = res.safe
        C = res.candidates.count
        # A proposed index outside the space (a row the engine sent here for an invalid action) is never kept.
        valid = (res.candidates.proposed >= 0) & (res.candidates.proposed < C)
        choice = np.where(valid, res.candidates.proposed, 0)
        need = ~valid | ~safe[rows, choice]
        if need.any():
            closeness = self._closeness(batch, res)
            if self._scores is not None:
                prefs = onnx_scores(self._scores, np.asarray(batch.observations), self.spaces.action.n)
                key = np.where(safe, np.where(np.isnan(prefs), -np.inf, prefs), -np.inf)
                # Among equally scored safe candidates: the larger worst-case margin.
                best_safe = np.array(
                    [np.lexsort((closeness[i], -res.margin[i], -key[i]))[0] for i in rows], dtype=np.int64
                )
            else:
                best_safe = np.array(
                    [
                        np.lexsort((closeness[i], ~res.candidates.backup[i], -res.margin[i], ~safe[i]))[0]
                        for i in rows
                    ],
                    dtype=np.int64,
                )
            any_safe = safe.any(axis=1)
            fallback = self._ranked(res, closeness, rows)
            choice = np.where(need, np.where(any_safe, best_safe, fallback), choice)
        return res.candidates.actions[rows, choice].astype(self.spaces.action.dtype)
