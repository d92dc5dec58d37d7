"""The ``quantilizer`` fallback (Taylor 2016): a q-quantilizer over a reference policy.

Rank the actions by the ensemble-mean Q, keep the best actions until they hold a
share ``q`` of the reference policy's probability mass (the boundary action
keeps only the part of its mass that fits), renormalise, and sample. With
``q = 1`` this is the reference policy; as ``q -> 0`` it approaches the greedy
action. Unlike argmax it cannot pick an action the reference policy would
(almost) never take, which bounds how far it strays from known behaviour.

Sampling uses ``numpy.random.default_rng(seed)``, created at load: the same
config and the same requests give the same substitutes.

Example config::

    fallbacks:
      careful:
        kind: quantilizer
        model: q_ensemble.onnx
        reference: policy.onnx       # logits [batch, n]; omit for a uniform reference
        q: 0.25
        seed: 7
"""

from __future__ import annotations

import threading

import numpy as np

from interlock.ensembles.common import ORT_TO_NUMPY
from interlock.ensembles.model import EnsembleModel
from interlock.ensembles.scores import softmax
from interlock.errors import ConfigError
from interlock.fallbacks.base import Fallback


def quantilize(reference: np.ndarray, values: np.ndarray, q: float) -> np.ndarray:
    """The q-quantilizer's action distribution.

    Args:
        reference: ``[batch, n]`` reference probabilities (rows sum to 1).
        values: ``[batch, n]`` action values to rank by (higher is better).
        q: Share of reference mass to keep, in (0, 1].

    Returns:
        ``[batch, n]`` probabilities: the reference restricted to its top-q mass by value.
    """
    order = np.argsort(-values, axis=1, kind="stable")
    p_sorted = np.take_along_axis(reference, order, axis=1)
    before = np.cumsum(p_sorted, axis=1) - p_sorted
    kept_sorted = np.clip(q - before, 0.0, p_sorted)
    kept = np.zeros_like(reference)
    np.put_along_axis(kept, order, kept_sorted, axis=1)
    total = kept.sum(axis=1, keepdims=True)
    # A reference with no mass (all zeros) would divide by 0: fall back to the best-valued action.
    empty = total[:, 0] <= 0
    if empty.any():
        kept[empty] = 0.0
        kept[empty, order[empty, 0]] = 1.0
        total = kept.sum(axis=1, keepdims=True)
    return kept / total


class QuantilizerFallback(Fallback):
    """Samples from the top-q reference mass ranked by ensemble-mean Q (discrete actions)."""

    kind = "quantilizer"

    def __init__(
        self,
        name,
        spaces,
        runtime,
        model: str,
        q: float = 0.1,
        reference: str | None = None,
        reference_output: str = "logits",
        seed: int = 0,
        output_name: str | None = None,
        where: str = "fallback",
    ) -> None:
        super().__init__(name, spaces, runtime)
        if not spaces.action.discrete:
            raise ConfigError(
                f"{where}: the quantilizer samples discrete actions; this agent's actions are a box"
            )
        if not 0.0 < q <= 1.0:
            raise ConfigError(f"{where}.q must be in (0, 1], got {q}")
        self.q = float(q)
        self.seed = seed
        self.where = where
        self.reference = reference
        self.reference_output = reference_output
        self.model = EnsembleModel(runtime, model, where, output_name)
        self._lock = threading.Lock()

    def load(self) -> None:
        self.model.load()
        self.model.require_q_values(self.spaces.action.n)
        self._ref = None
        if self.reference:
            sess = self.runtime.session(self.reference, what=f"{self.where}.reference")
            inp = sess.get_inputs()[0]
            self._ref = (sess, inp.name, ORT_TO_NUMPY.get(inp.type, np.float32), sess.get_outputs()[0].name)
        self.rng = np.random.default_rng(self.seed)
        self.ready = True

    def reference_probs(self, observations: np.ndarray) -> np.ndarray:
        """``[batch, n]`` reference policy probabilities (uniform without a reference model)."""
        n_rows, n = len(observations), self.spaces.action.n
        if self._ref is None:
            return np.full((n_rows, n), 1.0 / n)
        sess, name, dtype, out = self._ref
        (raw,) = sess.run([out], {name: np.ascontiguousarray(observations, dtype=dtype)})
        raw = np.asarray(raw, np.float64).reshape(n_rows, -1)
        if raw.shape[1] != n:
            raise ValueError(f"reference policy gave {raw.shape[1]} values per row for {n} actions")
        if self.reference_output == "logits":
            return softmax(raw)
        if (raw < 0).any():
            raise ValueError("reference policy probabilities are negative")
        return raw / raw.sum(axis=1, keepdims=True)

    def distribution(self, observations: np.ndarray) -> np.ndarray:
        """``[batch, n]`` the quantilizer's action probabilities."""
        mean_q = self.model.run(observations).astype(np.float64).mean(axis=0)
        if not np.isfinite(mean_q).all():
            raise ValueError("the Q-ensemble returned NaN or Inf")
        return quantilize(self.reference_probs(observations), mean_q, self.q)

    def propose(self, batch, signals) -> np.ndarray:
        probs = self.distribution(batch.observations)
        with self._lock:  # the generator is not thread-safe
            u = self.rng.random(len(probs))
        cdf = np.cumsum(probs, axis=1)
        idx = (cdf <= u[:, None] * cdf[:, -1:]).sum(axis=1)  # first action whose cdf exceeds u
        return np.minimum(idx, probs.shape[1] - 1).astype(self.spaces.action.dtype)
