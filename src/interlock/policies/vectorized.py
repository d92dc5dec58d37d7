"""A vectorized fast path for simple CEL conditions: one numpy evaluation per batch, not one CEL call per row.

Most rules are comparisons of signals and observation elements joined by
``&&``/``||`` (``tripped.limits.tilt || signals.uncertainty.q_std > 0.6``,
``math.abs(obs[2]) < 0.1``). Evaluating them row by row through CEL costs a
few microseconds per rule per row; over a batch, numpy does all rows at once.

Rules and the ``rules`` monitor see ``obs``, ``action`` (discrete agents), ``step`` and,
for rules, the agent's known signals; the compiled subset, the probe check against CEL
and what keeps the CEL path are those of :mod:`interlock.policies.cel_numpy`, which the
reachability constraints share. An ``obs[i]`` past the end keeps the CEL path here, so
the row fails closed at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from interlock.policies.cel import CelEvalError
from interlock.policies.cel_numpy import Columns, NumpyCondition, Row, Scope, compile_checked, probe_columns

__all__ = [
    "Columns",
    "Row",
    "VectorizedCondition",
    "batch_columns",
    "batch_row",
    "compile_vectorized",
    "first_rules",
    "probe_rows",
]

#: A compiled condition: ``__call__(columns)`` -> ``[n]`` bool.
VectorizedCondition = NumpyCondition


def _scope(obs_size: int, discrete: bool, signals: Sequence[str] | None, episode: bool = False) -> Scope:
    known = tuple(signals) if signals is not None else None
    return Scope(obs_size, action=discrete, step=True, signals=known, episode=episode)


def _probe_columns(obs_size: int, discrete: bool, signals: Sequence[str], n: int, seed: int) -> Columns:
    return probe_columns(_scope(obs_size, discrete, signals), n, seed)


def probe_rows(cols: Columns) -> list[dict]:
    """The probe columns as CEL activations (one per row)."""
    sig: dict[str, dict[str, float]] = {}
    rows = []
    for i in range(cols.n):
        trip: dict[str, dict[str, bool]] = {}
        sig = {}
        for k, v in cols.signals.items():
            m, _, s = k.partition(".")
            sig.setdefault(m, {})[s] = float(v[i])
            trip.setdefault(m, {})[s] = bool(cols.tripped[k][i])
        episode = {f"episode.{k}": v[i].item() for k, v in (cols.episode or {}).items()}
        rows.append(
            {
                **episode,
                "obs": cols.obs[i].tolist(),
                "action": int(cols.action[i]) if cols.action is not None else [],
                "labels": {},
                "step": int(cols.step[i]) if cols.step is not None else 0,
                "agent_id": "",
                "episode_id": "",
                "signals": sig,
                "tripped": trip,
            }
        )
    return rows


def compile_vectorized(
    source: str,
    cel_predicate: Callable[[Mapping[str, object]], bool],
    obs_size: int,
    discrete: bool,
    signals: Sequence[str] | None,
    probes: int = 64,
    episode: bool = False,
) -> VectorizedCondition | None:
    """The vectorized form of ``source``, or None when it is outside the subset or disagrees with CEL.

    Args:
        source: The CEL condition text (already compiled and type-checked by CEL).
        cel_predicate: The CEL evaluation of the same condition (one activation -> bool).
        obs_size: Elements of one flattened observation.
        discrete: Whether ``action`` is an int.
        signals: Known ``"<m>.<s>"`` names (None: the expression may not read signals, as in
            the rules monitor).
        episode: ``episode.<field>`` is in scope (the agent keeps episode state).
    """
    scope = _scope(obs_size, discrete, signals, episode)
    return compile_checked(source, scope, cel_predicate, probe_rows, probes, seed=len(source))


def batch_columns(
    batch,
    signals: Mapping[str, np.ndarray] | None = None,
    tripped: Mapping[str, np.ndarray] | None = None,
    episode: Mapping[str, np.ndarray] | None = None,
) -> Columns:
    """Columns of a :class:`~interlock.monitors.base.Batch` (observations flattened to float64, as in CEL).

    ``episode``: ``"<field>"`` -> ``[n]`` episode facts (:func:`interlock.episodes.episode_columns`).
    """
    cached = batch.__dict__.get("_columns")
    if cached is None:
        n = len(batch)
        acts = batch.actions
        cached = Columns(
            n=n,
            obs=batch.observations.reshape(n, -1).astype(np.float64),
            action=acts.astype(np.int64) if acts.ndim == 1 and acts.dtype.kind in "iu" else None,
            step=np.asarray(batch.steps, dtype=np.int64),
            signals={},
            tripped={},
        )
        batch.__dict__["_columns"] = cached
    if signals is None:
        return cached
    return Columns(cached.n, cached.obs, cached.action, cached.step, signals, tripped or {}, episode)


def batch_row(
    batch,
    signals: Mapping[str, float] | None = None,
    tripped: Mapping[str, bool] | None = None,
) -> Row:
    """Row 0 of a one-row :class:`~interlock.monitors.base.Batch` as plain Python values: what
    :func:`batch_columns` holds for that row (observation flattened to float64, as in CEL)."""
    cached: Row | None = batch.__dict__.get("_row")
    if cached is None:
        acts = batch.actions
        cached = Row(
            obs=batch.observations.reshape(-1).astype(np.float64).tolist(),
            action=int(acts[0]) if acts.ndim == 1 and acts.dtype.kind in "iu" else None,
            step=int(batch.steps[0]),
        )
        batch.__dict__["_row"] = cached
    if signals is None:
        return cached
    return Row(cached.obs, cached.action, cached.step, signals, tripped or {})


def first_rules(
    rules: Sequence,
    cols: Columns,
    activation: Callable[[int], Mapping[str, object]],
    held: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[int, tuple[int, str]], list[int]]:
    """The first rule that holds on each row, as a column (what ``DecisionPolicy.decide`` picks row by row).

    Vectorized rules (``rule.vectorized``) are evaluated once over ``cols``. The others go
    through CEL (``rule.predicate(activation(i))``), only on the rows no earlier rule decided;
    ``activation(i)`` is built only for those rows. A CEL error stops the row (fail closed).

    Args:
        rules: The policy's compiled rules, in order.
        cols: The batch's columns with its signals (``n`` rows).
        activation: Row ``i``'s CEL activation.
        held: ``[n]`` int, the index of the rule held into each row (it decided the row's episode's
            previous step; -1: none). That rule also holds on the row while its ``hold_while``
            (``rule.hold``, ``rule.hold_vectorized``) does. None: nothing is held.

    Returns:
        ``first``: ``[n]`` int32, the index of the first rule that holds, -1 where none does;
        ``errors``: row -> (index of the rule that could not be evaluated, the CEL error), for
        rows where a rule raised before any rule held (their ``first`` is -1);
        ``kept``: the rows a rule decided only through its ``hold_while`` (its ``when`` was false).
    """
    n = cols.n
    first = np.empty(n, dtype=np.int32)
    first.fill(-1)
    errors: dict[int, tuple[int, str]] = {}
    undecided = np.ones(n, dtype=bool)
    kept: list[int] = []
    # One errstate for every vectorized rule (entering it costs about what one rule costs at batch 1).
    with np.errstate(all="ignore"):
        for k, rule in enumerate(rules):
            holding = None
            if held is not None and rule.hold is not None:
                holding = undecided & (held == k)
                if not holding.any():
                    holding = None
            hold_vectorized = rule.hold_vectorized if holding is not None else None
            if rule.vectorized is not None and (holding is None or hold_vectorized is not None):
                hit = undecided & rule.vectorized.unguarded(cols)
                if hold_vectorized is not None:
                    by_hold = holding & ~hit & hold_vectorized.unguarded(cols)
                    kept.extend(np.flatnonzero(by_hold).tolist())
                    hit |= by_hold
                first[hit] = k
                undecided &= ~hit
                continue
            for i in np.flatnonzero(undecided).tolist():
                try:
                    act = activation(i)
                    fired = rule.predicate(act)
                    if not fired and holding is not None and holding[i] and rule.hold(act):
                        fired = True
                        kept.append(i)
                except CelEvalError as e:
                    errors[i] = (k, str(e))
                    undecided[i] = False
                    continue
                if fired:
                    first[i] = k
                    undecided[i] = False
            if not undecided.any():
                break
    return first, errors, kept
