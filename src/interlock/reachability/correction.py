"""Online correction of rollout dynamics: the interface the shield reads, and a simple in-memory source.

A dynamics ensemble trained in one world is wrong in a shifted one, and wrong in a
consistent direction: a longer pole falls more slowly than the model predicts, wind
pushes the lander sideways. The rollout therefore adds, to every predicted next state of a
row, that row's episode's *residual bias*: the running mean of ``actual next observation
minus predicted next observation`` over the transitions seen so far in the episode. "Safe"
is then judged under the world as it is now.

The reachability monitor reads the bias from another monitor of the same agent, named by
``correction: {monitor: NAME}``; that monitor must implement :class:`ResidualSource`. The
``transition`` monitor (issue 11, item 1) is meant to be one: it keeps per-``(agent_id,
episode_id)`` state and exposes ``EpisodeStore.residual_bias(agent_id, episode_ids)``, so its
``residual_bias(batch)`` is one line. A ``python`` monitor whose object defines
``residual_bias`` is one too. :class:`EpisodeResidualMean` is a small reference store with the
same signature, fed by whoever observes the transitions (tests, an agent-side integration).

Order: list the source monitor before the reachability monitor, so that a source that
updates its state in ``check`` has already seen this step's observation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from interlock.batch import Batch


@runtime_checkable
class ResidualSource(Protocol):
    """Anything that gives the episode's residual bias of each row of a batch."""

    def residual_bias(self, batch: Batch) -> np.ndarray:
        """``[batch, obs_dim]`` float: the mean of ``actual - predicted`` next observation so far in
        each row's episode (zeros for an episode with no transition yet; NaN counts as zero)."""
        ...


class EpisodeResidualMean:
    """Running mean residual per ``(agent_id, episode_id)``, bounded (least recently used evicted).

    Args:
        obs_dim: ``d``.
        max_episodes: Most episodes kept; the least recently updated is dropped beyond it
            (its bias restarts from zero, as after a server restart).
        window: Mean over the last ``window`` residuals of the episode (None: all of them).
    """

    def __init__(self, obs_dim: int, max_episodes: int = 10_000, window: int | None = None) -> None:
        self.obs_dim = obs_dim
        self.max_episodes = max_episodes
        self.window = window
        self._episodes: OrderedDict[tuple[str, str], list[np.ndarray]] = OrderedDict()

    def add(self, agent_id: str, episode_ids: Sequence[str], residuals: np.ndarray) -> None:
        """Record one residual per row: ``residuals`` ``[batch, obs_dim]`` (actual - predicted)."""
        r = np.asarray(residuals, dtype=np.float64).reshape(len(episode_ids), self.obs_dim)
        for ep, row in zip(episode_ids, r, strict=True):
            key = (agent_id, ep)
            seen = self._episodes.pop(key, [])
            seen.append(row)
            if self.window is not None:
                del seen[: -self.window]
            self._episodes[key] = seen
            while len(self._episodes) > self.max_episodes:
                self._episodes.popitem(last=False)

    def reset(self, agent_id: str, episode_id: str) -> None:
        """Forget one episode."""
        self._episodes.pop((agent_id, episode_id), None)

    def residual_bias(self, agent_id: str, episode_ids: Sequence[str]) -> np.ndarray:
        """``[batch, obs_dim]``: each row's episode mean residual (zeros when none is known)."""
        out = np.zeros((len(episode_ids), self.obs_dim))
        for i, ep in enumerate(episode_ids):
            seen = self._episodes.get((agent_id, ep))
            if seen:
                out[i] = np.mean(seen, axis=0)
        return out


def batch_bias(source: ResidualSource, batch: Batch, obs_dim: int, where: str) -> np.ndarray:
    """``source``'s bias for ``batch``, checked to be ``[batch, obs_dim]``; NaN/Inf become 0."""
    b = np.asarray(source.residual_bias(batch), dtype=np.float64)
    if b.shape != (len(batch), obs_dim):
        raise ValueError(
            f"{where}: the residual source returned shape {list(b.shape)}; expected [{len(batch)}, {obs_dim}]"
        )
    return np.where(np.isfinite(b), b, 0.0)
