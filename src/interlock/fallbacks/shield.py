"""The ``shield`` fallback: the agent's favourite among the actions a tabular shield allows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from interlock.errors import ConfigError
from interlock.fallbacks.binding import MonitorBoundFallback
from interlock.monitors.reachability import TabularReachabilityMonitor

_SCORE_INPUT = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def onnx_scores(session, observations: np.ndarray, n: int) -> np.ndarray:
    """The agent's scores ``[batch, n]`` float64 from an ONNX model of observations ``[batch, ...]``.

    Raises:
        ValueError: the model does not give ``n`` values per row.
    """
    inp = session.get_inputs()[0]
    dtype = _SCORE_INPUT.get(inp.type, np.float32)
    x = np.asarray(observations).astype(dtype)
    if len(inp.shape) != x.ndim:
        x = x.reshape(len(x), *([1] * (len(inp.shape) - 1))) if x.ndim == 1 else x.reshape(len(x), -1)
    (out,) = session.run(None, {inp.name: np.ascontiguousarray(x)})
    out = np.asarray(out, dtype=np.float64).reshape(len(x), -1)
    if out.shape[1] != n:
        raise ValueError(f"scores model returned {out.shape[1]} values per row; expected {n}")
    return out


class ShieldFallback(MonitorBoundFallback):
    """Picks, per row, the allowed action with the highest preference.

    Preference, highest first: the agent's scores (``scores:`` a ``.npy`` table
    ``[n_states, n_actions]`` or an ``.onnx`` model from observations ``[batch, ...]``
    to ``[batch, n_actions]`` Q-values or logits); else ``order:``; else the lowest
    index. Where the shield allows nothing (a lost state), it takes the actions with
    the highest probability of staying safe and picks among them the same way.
    """

    kind = "shield"
    monitor_class = TabularReachabilityMonitor
    monitor_what = "a reachability monitor with a tabular model"

    def __init__(
        self,
        name,
        spaces,
        runtime,
        monitor: str,
        scores: str | None = None,
        order: list[int] | None = None,
        where: str = "fallback",
    ) -> None:
        super().__init__(name, spaces, runtime, monitor, where)
        self.scores_path = scores
        if not spaces.action.discrete:
            raise ConfigError(f"{where}: the shield fallback needs a discrete action space")
        n = spaces.action.n
        if order is not None:
            if sorted(order) != sorted(set(order)) or any(not 0 <= a < n for a in order):
                raise ConfigError(f"{where}.order must list distinct actions in [0, {n}); got {order}")
            rank = np.full(n, -float(n))  # unlisted actions after every listed one
            rank[order] = -np.arange(len(order), dtype=np.float64)
        else:
            rank = -np.arange(n, dtype=np.float64)
        self._rank = rank
        self._table: np.ndarray | None = None
        self._session = None

    def load(self) -> None:
        self.require_bound()
        if self.scores_path:
            path = Path(self.scores_path)
            if path.suffix == ".npy":
                resolved = self.runtime.resolve(path)
                try:
                    table = np.load(resolved, allow_pickle=False)
                except Exception as e:
                    raise ConfigError(f"{self.where}.scores: cannot read {resolved}: {e}") from None
                n = self.spaces.action.n
                if table.ndim != 2 or table.shape[1] != n:
                    raise ConfigError(
                        f"{self.where}.scores: {resolved} has shape {list(table.shape)}; "
                        f"expected [n_states, {n}]"
                    )
                self._table = table.astype(np.float64)
            elif path.suffix == ".onnx":
                self._session = self.runtime.session(path, what=f"{self.where}.scores")
            else:
                raise ConfigError(
                    f"{self.where}.scores must be a .npy table or an .onnx model; got {path.name}"
                )
        self.ready = True

    def preferences(self, observations: np.ndarray, states: np.ndarray) -> np.ndarray:
        """``[batch, n_actions]`` float64, higher preferred."""
        n = self.spaces.action.n
        if self._table is not None:
            if (states >= len(self._table)).any():
                raise ValueError(
                    f"scores table has {len(self._table)} rows; state {int(states.max())} has none"
                )
            return self._table[states]
        if self._session is not None:
            return onnx_scores(self._session, observations, n)
        return np.broadcast_to(self._rank, (len(states), n))

    def propose(self, batch, signals) -> np.ndarray:
        mon = self.monitor
        tables = mon.require_tables()
        s = mon.states(batch.observations)
        allowed = tables.allowed[s]
        safety = tables.safety[s].astype(np.float64)
        safest = safety >= safety.max(axis=1, keepdims=True) - 1e-9
        mask = np.where(allowed.any(axis=1, keepdims=True), allowed, safest)
        prefs = np.asarray(self.preferences(batch.observations, s), dtype=np.float64)
        prefs = np.where(np.isnan(prefs), -np.inf, prefs)
        # Ties in preference go to the declared order.
        key = np.where(mask, prefs, -np.inf)
        best = key.max(axis=1, keepdims=True)
        tie = mask & (key >= best)
        choice = np.where(tie, self._rank[None, :], -np.inf).argmax(axis=1)
        return choice.astype(self.spaces.action.dtype)
