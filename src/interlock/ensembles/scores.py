"""Uncertainty scores from the outputs of K ensemble members (pure numpy, batched).

Every function takes member outputs with a leading member axis ``[K, batch, ...]``
and returns ``[batch]`` float64 scores; larger means "the members disagree more",
i.e. the data the ensemble was trained on said less about this input.
"""

from __future__ import annotations

import numpy as np

#: Signals each ensemble kind produces, in order.
SIGNALS: dict[str, list[str]] = {
    "q": ["q_std", "q_std_ratio"],
    "policy": ["mutual_info", "disagreement"],
    "dynamics": ["disagreement", "disagreement_max"],
}

_add = np.add.reduce


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
    p = np.asarray(pred, np.float64).reshape(pred.shape[0], pred.shape[1], -1)
    std = member_std(p)  # [batch, d]
    if scale is not None:
        std = std / np.asarray(scale, np.float64).reshape(1, -1)
    mean = np.true_divide(_add(std, 1), std.shape[1])  # std.mean(axis=1), bit for bit
    return {"disagreement": mean, "disagreement_max": np.maximum.reduce(std, 1)}


def lower_bound(q: np.ndarray, bound: str = "min", k: float = 1.0) -> np.ndarray:
    """``[batch, n_actions]`` lower confidence bound of Q over members.

    ``min``: the worst member (maximin); ``mean_minus_std``: mean - k * std.
    """
    q = np.asarray(q, np.float64)
    if bound == "min":
        return q.min(axis=0)
    return q.mean(axis=0) - k * q.std(axis=0)
