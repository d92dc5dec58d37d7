"""A real plugin module for ``kind: python`` monitors, fallbacks and dynamics models in tests.

Configs name these as ``callable: "tests.support.plugins:NAME"``.
"""

from __future__ import annotations

import numpy as np

from interlock.reachability.correction import EpisodeResidualMean

# ---------------------------------------------------------------------------- dynamics models


class LineModel:
    """A point on a line, obs ``[x]``; discrete actions 0, 1, 2 move it by ``-step``, 0, ``+step``.

    One member per entry of ``steps`` (the members disagree on the step size); ``drift`` is added
    at every step (a world the test controls). Records the row count of every call.
    """

    def __init__(self, steps: list[float], drift: float = 0.0) -> None:
        self.steps = np.asarray(steps, dtype=np.float64)
        self.drift = drift
        self.calls: list[int] = []

    def __call__(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``[N, 1]``, ``[N]`` -> ``[K, N, 1]``."""
        self.calls.append(len(observations))
        move = (np.asarray(actions, np.float64) - 1.0)[None, :, None] * self.steps[:, None, None]
        return observations[None] + move + self.drift


def planar_model(observations: np.ndarray, actions: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Observation ``[N, V, F]`` (a vehicle table), action ``[N]``: every vehicle's feature 0 moves by
    ``scale * (action - 1)``; one model, ``[N, V, F]`` out (the shape of a highway kinematic model)."""
    out = np.array(observations, dtype=np.float64)
    out[:, :, 0] += scale * (np.asarray(actions, np.float64)[:, None] - 1.0)
    return out


def wrong_shape_model(observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
    return np.zeros((len(observations), observations.shape[1] + 1))


def raising_model(observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
    raise RuntimeError("model exploded")


# ---------------------------------------------------------------------------- monitors


def distance_monitor(observations, actions, batch, limit: float = 1.0) -> dict[str, np.ndarray]:
    """``far``: |obs[0]| / limit (trips above 1 in the tests' configs); ``action``: the action as a float."""
    obs = np.asarray(observations, np.float64).reshape(len(observations), -1)
    return {"far": np.abs(obs[:, 0]) / limit, "action": np.asarray(actions, np.float64).reshape(len(obs))}


def wrong_length_monitor(observations, actions, batch) -> dict[str, np.ndarray]:
    return {"far": np.zeros(len(observations) + 1)}


def list_monitor(observations, actions, batch) -> list[float]:
    return [0.0] * len(observations)


#: The residual stores of :class:`ResidualFeed` instances, by their ``feed`` name (tests feed them).
FEEDS: dict[str, EpisodeResidualMean] = {}


class ResidualFeed:
    """A stand-in residual source: a python monitor whose object defines ``residual_bias``.

    Its store (``FEEDS[feed]``) is fed by the test with ``actual - predicted`` next observations;
    the signal ``bias_norm`` is the L2 norm of each row's episode bias.
    """

    def __init__(self, obs_dim: int, feed: str = "default") -> None:
        self.store = FEEDS[feed] = EpisodeResidualMean(obs_dim)

    def __call__(self, observations, actions, batch) -> dict[str, np.ndarray]:
        return {"bias_norm": np.linalg.norm(self.residual_bias(batch), axis=1)}

    def residual_bias(self, batch) -> np.ndarray:
        return self.store.residual_bias(batch.agent_id, batch.episode_ids)


class NoBias:
    """A python monitor object without ``residual_bias`` (not a residual source)."""

    def __call__(self, observations, actions, batch) -> dict[str, np.ndarray]:
        return {"zero": np.zeros(len(observations))}


class BrokenInit:
    def __init__(self, **kwargs) -> None:
        raise ValueError(f"bad kwargs {sorted(kwargs)}")


NOT_CALLABLE = 3

# ---------------------------------------------------------------------------- fallbacks


def toward_zero(observations, actions, batch, left: int = 0, right: int = 2) -> np.ndarray:
    """Discrete line controller: ``[N]`` actions moving obs[0] towards 0 (1 when already there)."""
    x = np.asarray(observations, np.float64).reshape(len(observations), -1)[:, 0]
    return np.where(x > 0, left, np.where(x < 0, right, 1)).astype(np.int64)


def wrong_shape_fallback(observations, actions, batch) -> np.ndarray:
    return np.zeros((len(observations), 2), np.int64)


def out_of_space_fallback(observations, actions, batch) -> np.ndarray:
    return np.full(len(observations), 7, np.int64)
