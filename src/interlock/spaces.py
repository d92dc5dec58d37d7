"""Observation and action spaces of one agent, and the checks requests must pass.

Shape and element kind are strict (a float observation for a float space, an
integer action for a discrete space); width is lenient (float64 is accepted for
a float32 space and converted), because clients in other languages rarely
control it. Action *values* are not checked here: an out-of-bounds or NaN action
is a signal of the ``action_space`` monitor, not a malformed request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from interlock.config import AgentConfig, BoxActionSpec, DiscreteActionSpec
from interlock.errors import InvalidRequest


def _kind(dtype: np.dtype) -> str:
    """ "bool", "float", "integer" or the dtype's name. From the kind character (what
    ``np.issubdtype(dtype, np.floating / np.integer)`` decides, at a fraction of its cost)."""
    kind = dtype.kind
    if kind == "b":
        return "bool"
    if kind == "f":
        return "float"
    if kind in "iu":
        return "integer"
    name: str = dtype.name
    return name


def _all_finite(values: np.ndarray) -> bool:
    """``np.isfinite(values).all()``; a few values are checked in Python (cheaper than two numpy calls)."""
    if values.size <= 64:
        return all(map(math.isfinite, values.reshape(-1).tolist()))
    return bool(np.isfinite(values).all())


def _bound(value: float | list[float] | None, shape: tuple[int, ...], what: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(shape, float(arr))
    if arr.size != int(np.prod(shape)):
        raise ValueError(
            f"{what} has {arr.size} values; the space of shape {list(shape)} needs 1 or {np.prod(shape)}"
        )
    return arr.reshape(shape)


@dataclass(frozen=True)
class ActionSpace:
    """A discrete (``n``) or box (``low``/``high``) action space.

    Actions in batches have shape ``[batch, *shape]`` (``[batch]`` for discrete).
    """

    discrete: bool
    shape: tuple[int, ...]
    dtype: np.dtype
    n: int = 0
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    @classmethod
    def from_spec(cls, spec: DiscreteActionSpec | BoxActionSpec) -> ActionSpace:
        if isinstance(spec, DiscreteActionSpec):
            return cls(discrete=True, shape=(), dtype=np.dtype(spec.dtype), n=spec.n)
        shape = tuple(spec.shape)
        return cls(
            discrete=False,
            shape=shape,
            dtype=np.dtype(spec.dtype),
            low=_bound(spec.low, shape, "action.low"),
            high=_bound(spec.high, shape, "action.high"),
        )

    def invalid(self, actions: np.ndarray) -> np.ndarray:
        """``[batch]`` bool: True where the action is not in the space (bounds, index, NaN/Inf)."""
        if self.discrete:  # on every request: two comparisons, not the distance
            a = np.asarray(actions).reshape(-1)
            return (a < 0) | (a >= self.n)
        return self.distance(actions) > 0

    def distance(self, actions: np.ndarray) -> np.ndarray:
        """``[batch]`` float64: how far each action lies outside the space (inf for NaN/bad index)."""
        a = np.asarray(actions)
        if self.discrete:
            ok = (a >= 0) & (a < self.n)
            return np.where(ok, 0.0, np.inf).reshape(len(a))
        flat = a.reshape(len(a), -1).astype(np.float64)
        low, high = self.bounds()
        lo = low.reshape(1, -1)
        hi = high.reshape(1, -1)
        excess = np.maximum(lo - flat, flat - hi).clip(min=0.0)
        dist = excess.max(axis=1) if flat.shape[1] else np.zeros(len(a))
        return np.where(np.isfinite(flat).all(axis=1), dist, np.inf)

    def project(self, actions: np.ndarray) -> np.ndarray:
        """Nearest action in the space: clip box actions (NaN to the midpoint), clamp indices."""
        a = np.asarray(actions)
        if self.discrete:
            indices: np.ndarray = np.clip(a, 0, self.n - 1).astype(self.dtype)
            return indices
        low, high = self.bounds()
        mid = (low + high) / 2
        filled = np.where(np.isnan(a), mid, a)
        clipped: np.ndarray = np.clip(filled, low, high).astype(self.dtype)
        return clipped

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``low`` and ``high`` of a box space (both ``shape``); from_spec always sets them for a box."""
        if self.low is None or self.high is None:
            raise ValueError("a box action space needs low and high; build it with ActionSpace.from_spec")
        return self.low, self.high

    def coerce(self, action: np.ndarray, field: str) -> np.ndarray:
        """Check one action's shape and kind; return it in this space's dtype."""
        a = np.asarray(action)
        if self.discrete:
            if _kind(a.dtype) != "integer":
                raise InvalidRequest(
                    f"{field} has dtype {a.dtype.name}; discrete actions are integers (int64)"
                )
            if a.shape not in ((), (1,)):
                raise InvalidRequest(
                    f"{field} has shape {list(a.shape)}; a discrete action is a scalar (shape [])"
                )
            return a.reshape(()).astype(self.dtype)
        if _kind(a.dtype) != "float":
            raise InvalidRequest(f"{field} has dtype {a.dtype.name}; box actions are {self.dtype.name}")
        if a.shape != self.shape:
            raise InvalidRequest(
                f"{field} has shape {list(a.shape)}; the action space expects {list(self.shape)}"
            )
        with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes Inf: flagged as invalid
            return a.astype(self.dtype, copy=False)


@dataclass(frozen=True)
class ObservationSpace:
    """The declared observation: shape, dtype, optional bounds."""

    shape: tuple[int, ...]
    dtype: np.dtype
    allow_nonfinite: bool = False
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def coerce(self, obs: np.ndarray, field: str) -> np.ndarray:
        """Check one observation's shape, kind and finiteness; return it in this space's dtype."""
        o = np.asarray(obs)
        if o.shape != self.shape:
            if o.size == 0 and int(np.prod(self.shape)) != 0:
                raise InvalidRequest(
                    f"{field} is empty; expected shape {list(self.shape)} of {self.dtype.name}"
                )
            raise InvalidRequest(f"{field} has shape {list(o.shape)}; expected {list(self.shape)}")
        want, got = _kind(self.dtype), _kind(o.dtype)
        if want != got:
            raise InvalidRequest(f"{field} has dtype {o.dtype.name}; expected {self.dtype.name}")
        if o.dtype == self.dtype:
            out = o  # astype(copy=False) would return it unchanged
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                out = o.astype(self.dtype, copy=False)
        # Checked after the conversion: 1e300 in float64 is finite but overflows float32 to Inf.
        if want == "float" and not self.allow_nonfinite and not _all_finite(out):
            bad = np.flatnonzero(~np.isfinite(out.reshape(-1)))[:5].tolist()
            overflow = " (or overflows " + self.dtype.name + ")" if np.isfinite(o).all() else ""
            raise InvalidRequest(
                f"{field} contains NaN or Inf{overflow} at flat index {bad}; send finite values "
                "(or set observation.allow_nonfinite)",
                reason="non_finite",
            )
        return out


@dataclass(frozen=True)
class AgentSpaces:
    observation: ObservationSpace
    action: ActionSpace

    @classmethod
    def from_config(cls, agent: AgentConfig) -> AgentSpaces:
        o = agent.observation
        shape = tuple(o.shape)
        obs = ObservationSpace(
            shape=shape,
            dtype=np.dtype(o.dtype),
            allow_nonfinite=o.allow_nonfinite,
            low=_bound(o.low, shape, "observation.low"),
            high=_bound(o.high, shape, "observation.high"),
        )
        return cls(observation=obs, action=ActionSpace.from_spec(agent.action))
