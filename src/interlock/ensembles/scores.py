"""Uncertainty scores from the outputs of K ensemble members (pure numpy, batched).

Every function takes member outputs with a leading member axis ``[K, batch, ...]``
and returns ``[batch]`` float64 scores; larger means "the members disagree more",
i.e. the data the ensemble was trained on said less about this input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Signals each ensemble kind produces, in order.
SIGNALS: dict[str, list[str]] = {
    "q": ["q_std", "q_std_ratio"],
    "policy": ["mutual_info", "disagreement"],
    "dynamics": ["disagreement", "disagreement_max"],
}

_add = np.add.reduce

#: One-row scores are computed on plain Python floats when fewer values than this are summed:
#: numpy sums fewer than 8 values one after the other (its pairwise summation starts at 8), so the
#: same additions in the same order give the same bits (tests/test_one_row.py pins it).
_IN_ORDER = 8


def _std_in_order(xs: Sequence[float]) -> float:
    """:func:`member_std` of ``len(xs) < _IN_ORDER`` values as numpy computes it: sum in order,
    divide, squared deviations summed in order, divide, square root (IEEE, correctly rounded)."""
    k = len(xs)
    total = 0.0
    for v in xs:
        total += v
    mean = total / k
    acc = 0.0
    for v in xs:
        dev = v - mean
        acc += dev * dev
    return math.sqrt(acc / k)


def member_mean(x: np.ndarray) -> np.ndarray:
    """``x.mean(axis=0)`` of a float64 array, bit for bit, without ``ndarray.mean``'s Python wrapper
    (which costs more than the arithmetic at batch 1)."""
    out: np.ndarray = np.true_divide(_add(x, 0), x.shape[0])
    return out


def member_std(x: np.ndarray) -> np.ndarray:
    """``x.std(axis=0)`` of a float64 array, bit for bit (numpy's own steps: mean, squared deviations,
    their mean, square root), without ``ndarray.std``'s Python wrapper."""
    k = x.shape[0]
    dev = x - np.true_divide(_add(x, 0, keepdims=True), k)
    np.square(dev, out=dev)
    var = np.true_divide(_add(dev, 0), k)
    out: np.ndarray = np.sqrt(var, out=var)
    return out


def q_scores(q: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of a Q-ensemble for the proposed actions.

    Args:
        q: ``[K, batch, n_actions]`` Q-values of every member.
        actions: ``[batch]`` proposed action indices.

    Returns:
        ``q_std``: ``[batch]`` std over members of Q(s, a) for the proposed action;
        ``q_std_ratio``: ``q_std`` divided by the spread (max - min over actions) of the
        ensemble-mean Q: how large the doubt is next to what the choice of action is worth
        (inf when every action has the same mean value).
    """
    q = np.asarray(q)
    if q.shape[1] == 1 and q.shape[0] < _IN_ORDER and q.dtype.kind == "f":
        one = q_scores_row(q, int(np.asarray(actions).reshape(-1)[0]))
        if one is not None:
            return {"q_std": np.array([one[0]]), "q_std_ratio": np.array([one[1]])}
    q = np.asarray(q, np.float64)
    if q.shape[1] == 1:
        return _q_scores_one(q, int(np.asarray(actions).reshape(-1)[0]))
    rows = np.arange(q.shape[1])
    qa = q[:, rows, np.asarray(actions, np.int64)]  # [K, batch]
    q_std = member_std(qa)
    mean = member_mean(q)  # [batch, n]
    spread = np.maximum.reduce(mean, 1) - np.minimum.reduce(mean, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(spread > 0, q_std / np.where(spread > 0, spread, 1.0), np.inf)
    return {"q_std": q_std, "q_std_ratio": ratio}


def _q_scores_one(q: np.ndarray, action: int) -> dict[str, np.ndarray]:
    """:func:`q_scores` of one row (``q`` ``[K, 1, n_actions]`` float64), bit for bit: the same numpy
    steps on the same ``[K, 1]`` and ``[1, n]`` shapes, the ratio's branch in Python."""
    q_std = member_std(q[:, :, action])  # [K, 1] view: the same reduction as the gathered copy
    mean = member_mean(q)  # [1, n]
    spread = float(np.maximum.reduce(mean, 1)[0] - np.minimum.reduce(mean, 1)[0])
    ratio = float(q_std[0]) / spread if spread > 0 else np.inf  # IEEE division, as numpy's
    return {"q_std": q_std, "q_std_ratio": np.array([ratio])}


def q_scores_row(q: np.ndarray, action: int) -> tuple[float, float] | None:
    """``(q_std, q_std_ratio)`` of one row, :func:`q_scores` bit for bit, on Python floats.

    Args:
        q: ``[K, 1, n_actions]`` float member Q-values of one row.
        action: The proposed action's index.

    Returns None for 8+ members, an action index outside ``0 .. n_actions - 1`` (numpy's indexing
    decides it) or a NaN mean Q (numpy's maximum propagates NaN, max() need not): the numpy path
    answers those. Float arithmetic never raises (inf and NaN propagate as in numpy).
    """
    k, n = q.shape[0], q.shape[-1]
    if k >= _IN_ORDER or not 0 <= action < n:
        return None
    flat = q.reshape(-1).tolist()  # member m's Q-values at [m * n : (m + 1) * n]
    q_std = _std_in_order(flat[action::n])
    means = []
    for j in range(n):
        total = 0.0
        for v in flat[j::n]:  # action j's K member values, in member order
            total += v
        mean = total / k
        if mean != mean:
            return None
        means.append(mean)
    spread = max(means) - min(means)
    return q_std, (q_std / spread if spread > 0 else math.inf)  # NaN spread: inf, as np.where's branch


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    p = np.clip(p, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=axis)


def policy_scores(out: np.ndarray, actions: np.ndarray, output: str = "logits") -> dict[str, np.ndarray]:
    """Scores of a policy ensemble (discrete actions).

    Args:
        out: ``[K, batch, n_actions]`` member logits (``output="logits"``) or probabilities.
        actions: ``[batch]`` proposed action indices.

    Returns:
        ``mutual_info``: ``[batch]`` mutual information between the prediction and the member,
        H[mean_k p_k] - mean_k H[p_k] (nats): the epistemic part of the predictive entropy;
        ``disagreement``: ``[batch]`` share of members whose most likely action is not the
        proposed one.
    """
    p = softmax(out) if output == "logits" else np.asarray(out, np.float64)
    mi = entropy(p.mean(axis=0)) - entropy(p).mean(axis=0)
    votes = p.argmax(axis=-1)  # [K, batch]
    disagreement = (votes != np.asarray(actions, np.int64)[None, :]).mean(axis=0)
    return {"mutual_info": np.maximum(mi, 0.0), "disagreement": disagreement.astype(np.float64)}


def dynamics_scores(pred: np.ndarray, scale: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Scores of a dynamics ensemble.

    Args:
        pred: ``[K, batch, state_dim]`` predicted next state (or state change) of every member.
        scale: ``[state_dim]`` typical size of each dimension's change (std over the training
            data); each dimension's disagreement is divided by it. None: no scaling.

    Returns:
        ``disagreement``: ``[batch]`` mean over dimensions of the member std / scale;
        ``disagreement_max``: ``[batch]`` the largest dimension's member std / scale.
    """
    if pred.shape[1] == 1 and pred.shape[0] < _IN_ORDER and pred.dtype.kind == "f":
        one = dynamics_scores_row(pred, scale)
        if one is not None:
            return {"disagreement": np.array([one[0]]), "disagreement_max": np.array([one[1]])}
    p = np.asarray(pred, np.float64).reshape(pred.shape[0], pred.shape[1], -1)
    std = member_std(p)  # [batch, d]
    if scale is not None:
        std = std / np.asarray(scale, np.float64).reshape(1, -1)
    mean = np.true_divide(_add(std, 1), std.shape[1])  # std.mean(axis=1), bit for bit
    return {"disagreement": mean, "disagreement_max": np.maximum.reduce(std, 1)}


def dynamics_scores_row(pred: np.ndarray, scale: np.ndarray | None) -> tuple[float, float] | None:
    """``(disagreement, disagreement_max)`` of one row, :func:`dynamics_scores` bit for bit, on Python
    floats.

    Args:
        pred: ``[K, 1, ...]`` float member predictions of one row (``d`` values per member).
        scale: As for :func:`dynamics_scores`.

    Returns None for 8+ members, no or 8+ dimensions (numpy's pairwise sum of the mean), a scale
    of 0 (Python's division raises) or a NaN std (numpy's maximum propagates NaN, max() need
    not): the numpy path decides those.
    """
    k = pred.shape[0]
    d = pred.size // k if k else 0
    if not 0 < d < _IN_ORDER or k >= _IN_ORDER:
        return None
    flat = pred.reshape(-1).tolist()  # member m's prediction at [m * d : (m + 1) * d]
    std = [_std_in_order(flat[j::d]) for j in range(d)]  # per dimension, over members
    if scale is not None:
        divisors = np.asarray(scale, np.float64).reshape(-1).tolist()
        if len(divisors) != d or 0.0 in divisors:
            return None  # numpy's broadcasting error / its inf and NaN
        std = [s / c for s, c in zip(std, divisors, strict=True)]
    total = 0.0
    for s in std:
        if s != s:
            return None
        total += s
    return total / d, max(std)


def lower_bound(q: np.ndarray, bound: str = "min", k: float = 1.0) -> np.ndarray:
    """``[batch, n_actions]`` lower confidence bound of Q over members.

    ``min``: the worst member (maximin); ``mean_minus_std``: mean - k * std.
    """
    q = np.asarray(q, np.float64)
    if bound == "min":
        return q.min(axis=0)
    return q.mean(axis=0) - k * q.std(axis=0)
