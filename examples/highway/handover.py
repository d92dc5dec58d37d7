"""A dense-traffic detector for the Simplex handover of ``interlock_handover.yaml`` (issue 11).

``kind: python`` monitor :class:`DenseTraffic`. Denser traffic is visible in every observation:
highway-env places the other vehicles at reset with spacing ``1 / vehicles_density``, so at density
2 the observed vehicles are about half as far away as at density 1 (HANDOVER_RULE.md). Per step:

* ``closeness`` (m): mean over the 4 observed vehicles of ``min(|dx|, 100)`` (an absent vehicle
  counts 100 m; ``dx`` is the observation's relative x times 200 m, highway-env's normalisation);
* ``score`` (m): the running mean of ``closeness`` over the episode's steps so far (a nominal agent
  closing up on one car for a few steps does not trip it; dense traffic trips it at once);
* ``shifted``: 1.0 from the first step with ``score < threshold`` to the end of the episode, else 0.0.

The threshold is calibrated on nominal episodes only (``handover_calibrate.py`` ->
``handover_thresholds.json``); keep the ``threshold`` kwarg and the ``score`` signal's threshold
equal to the file's ``threshold_m``.

Per-episode state, keyed by ``(agent_id, episode_id)`` and ordered by ``step`` like Interlock's
transition monitor (docs/shift.md "Sequencing per episode"): step 0, an unknown episode, a gap or a
rewind start the episode afresh; the same step again (a retried request) returns what it returned
before without counting the step twice; rows without an episode id keep no state (each row is
judged alone). Bounded: the least recently used episodes beyond ``max_episodes`` are dropped
(about 0.2 kB each); a dropped or lost episode restarts its running mean, unshifted.

Interface (numpy in, numpy out; docs/shield.md "Plugins"):
``(observations [batch, 25] float32, actions [batch], batch) -> {"closeness", "score", "shifted"}``,
each float64 ``[batch]``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from highway_shield import ShieldChoice

X_SCALE = 200.0  # highway-env's Kinematics x normalisation: 5 * Vehicle.MAX_SPEED (m)
FAR_M = 100.0  # a vehicle farther than this (or absent) counts as this far


def closeness(observations: np.ndarray) -> np.ndarray:
    """obs [batch, 25] or [batch, 5, 5] -> [batch] mean capped distance (m) of the 4 observed vehicles."""
    rows = np.asarray(observations, dtype=np.float64).reshape(-1, 5, 5)[:, 1:, :]  # [batch, 4, 5]
    present = rows[:, :, 0] > 0.5
    dx = np.minimum(np.abs(rows[:, :, 1]) * X_SCALE, FAR_M)
    return np.where(present, dx, FAR_M).mean(axis=1)


@dataclass
class _Episode:
    step: int
    total: float  # sum of closeness up to and including `step`
    count: int
    shifted: bool
    before: tuple[float, int, bool]  # (total, count, shifted) before `step`, for a repeated step


class DenseTraffic:
    """``kind: python`` monitor: is this episode's traffic denser than nominal? (latched)

    Args:
        threshold: the running mean (m) below which the episode counts as dense; calibrated on
            nominal episodes (``handover_thresholds.json``).
        max_episodes: episodes kept (least recently used dropped first).
    """

    def __init__(self, threshold: float, max_episodes: int = 10_000) -> None:
        if not np.isfinite(threshold) or threshold <= 0:
            raise ValueError(f"threshold must be a positive distance in metres, got {threshold!r}")
        self.threshold = float(threshold)
        self.max_episodes = int(max_episodes)
        self._lock = threading.Lock()
        self._episodes: OrderedDict[tuple[str, str], _Episode] = OrderedDict()

    def __len__(self) -> int:
        return len(self._episodes)

    def _advance(self, key: tuple[str, str] | None, step: int, value: float) -> tuple[float, bool]:
        """Count ``value`` at ``step`` for episode ``key``; returns (running mean, shifted)."""
        if key is None:  # no episode id: this row alone
            return value, value < self.threshold
        entry = self._episodes.get(key)
        if entry is not None and entry.step == step:
            total, count, shifted = entry.before  # a repeated step: recount it from the state before
        elif entry is not None and entry.step == step - 1:
            total, count, shifted = entry.total, entry.count, entry.shifted
        else:  # step 0, a new or lost episode, a gap or a rewind: start afresh
            total, count, shifted = 0.0, 0, False
        before = (total, count, shifted)
        total, count = total + value, count + 1
        mean = total / count
        shifted = shifted or mean < self.threshold
        self._episodes[key] = _Episode(step, total, count, shifted, before)
        self._episodes.move_to_end(key)
        while len(self._episodes) > self.max_episodes:
            self._episodes.popitem(last=False)
        return mean, shifted

    def __call__(self, observations: np.ndarray, actions: np.ndarray, batch: Any) -> dict[str, np.ndarray]:
        """obs [batch, 25], actions [batch] -> {"closeness", "score" (m), "shifted" (0/1)}, each [batch]."""
        near = closeness(observations)
        n = len(near)
        agent_id = str(getattr(batch, "agent_id", ""))
        ids = list(getattr(batch, "episode_ids", None) or [""] * n)
        steps = np.asarray(getattr(batch, "steps", np.zeros(n)), dtype=np.int64).reshape(-1)
        score, shifted = np.empty(n), np.empty(n)
        with self._lock:
            # Rows of one episode in one batch (a CheckBatch) are taken in step order.
            for i in sorted(range(n), key=lambda i: (ids[i], int(steps[i]))):
                key = (agent_id, ids[i]) if ids[i] else None
                mean, latched = self._advance(key, int(steps[i]), float(near[i]))
                score[i], shifted[i] = mean, float(latched)
        return {"closeness": near, "score": score, "shifted": shifted}



class ShieldedBackup(ShieldChoice):
    """``kind: python`` fallback: the backup drives, through the shield's choice rule (design C).

    The backup (``scores``: its ONNX, ``obs`` [batch, 25] -> Q [batch, 5]) proposes the argmax of its
    Q; :class:`highway_shield.ShieldChoice` then keeps it if its 1 s margin is safe, else picks the
    substitute ranked by the backup's Q. Same keyword arguments as ``ShieldChoice``.
    """

    def __call__(self, observations: np.ndarray, actions: np.ndarray, batch: Any) -> np.ndarray:
        """obs [batch, 25], the agent's proposals [batch] (ignored) -> meta-actions [batch] int64."""
        backup = np.argmax(self.q(observations), axis=1).astype(np.int64)
        return super().__call__(observations, backup, batch)
