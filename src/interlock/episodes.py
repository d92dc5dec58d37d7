"""Episode state kept in the server: what a ``transition`` monitor remembers per ``(agent_id, episode_id)``.

Each episode holds the step it last saw, the observation of that step and the action that
was executed there (told by the engine after deciding), the sequential shift statistic and an
exponentially weighted mean of the dynamics residual (with ``statistic: signed``, the shift
statistic is an array: two CUSUMs per group and dimension, ``16 * groups * dims`` bytes). The
store is an LRU bounded two ways:
at most ``max_episodes`` entries (the least recently used goes first) and a TTL (an episode
not seen for ``ttl_seconds`` is dropped). A dropped episode is not an error: its next check
starts it afresh (surprise 0, statistic 0), exactly like a new episode; docs/shift.md explains
why that is the safe direction for ``--workers`` and replicas.

Episode facts for rules (``episode.shifted``, ``episode.steps_since_shift``, ``episode.steps``)
are derived from the state by :meth:`EpisodeStore.facts`; :func:`episode_columns` combines the
facts of every monitor that keeps episode state.

The API a shield uses to correct its dynamics online::

    bias = store.residual_bias("lander-1", ["ep-7", "ep-9"])   # [2, obs_dim], observation units
    seen = store.residual_counts("lander-1", ["ep-7", "ep-9"])  # [2] residuals averaged so far

``bias`` is the (bias-corrected) exponentially weighted mean of ``observed next obs - predicted
next obs`` over the episode so far; add it to a prediction to correct it. Unknown episodes give
zeros and count 0.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar, runtime_checkable

import numpy as np

__all__ = [
    "EPISODE_FIELDS",
    "NEVER_SHIFTED",
    "EpisodeFacts",
    "EpisodeFactsSource",
    "EpisodeState",
    "EpisodeStore",
    "RuleHolds",
    "episode_columns",
]

#: ``episode.steps_since_shift`` of an episode whose shift signal never tripped: large, so that
#: ``episode.steps_since_shift < 50`` reads "a shift within the last 50 steps" with no second test.
#: (2**31 - 1 leaves CEL's int64 arithmetic on it far from overflow.)
NEVER_SHIFTED = 2**31 - 1

#: The episode facts rules read, with their CEL types: ``episode.<name>``.
EPISODE_FIELDS: dict[str, str] = {"shifted": "bool", "steps_since_shift": "int", "steps": "int"}


@dataclass(slots=True)
class EpisodeState:
    """One episode as one monitor saw it.

    Attributes:
        first_step: The step the state started at (0 for a whole episode; later after lost state).
        step: The latest step checked.
        obs: ``[obs_dim]`` float64 observation of ``step`` (the start of the next transition).
        action: The action executed at ``step`` (``[*action_shape]``), None until the engine tells it
            or when it was not a valid action: the next step then has no transition to predict.
        statistic: The sequential shift statistic after ``step`` (CUSUM; with ``statistic: signed`` the
            largest entry of ``signed``).
        signed: ``[2, groups, dims]`` float64 two-sided CUSUMs (``S+``, ``S-``) per group (the executed
            action with ``spread: per_action``, else one) and selected dimension, with ``statistic:
            signed``; None before the first update and with ``statistic: energy``. Never changed in
            place (a retry or a failed batch must not see a half-updated array): an update replaces
            it. ``16 * groups * dims`` bytes (LunarLander, 4 actions x 3 dims: 192 bytes).
        shift_step: The step at which the statistic first crossed its threshold, or None.
        bias: ``[obs_dim]`` float64 exponentially weighted sum of residuals (not yet bias-corrected).
        weight: The EW weight sum matching ``bias`` (``bias / weight`` is the corrected mean).
        residuals: Residuals averaged into ``bias``.
        last_surprise: The surprise of ``step`` (answered again if the step is sent again).
        last_seen: ``time.monotonic()`` of the latest access.
    """

    first_step: int
    step: int
    obs: np.ndarray
    action: np.ndarray | None = None
    statistic: float = 0.0
    signed: np.ndarray | None = None
    shift_step: int | None = None
    bias: np.ndarray | None = None
    weight: float = 0.0
    residuals: int = 0
    last_surprise: float = 0.0
    last_seen: float = 0.0

    def mean_residual(self, obs_dim: int) -> np.ndarray:
        """``[obs_dim]`` bias-corrected EW mean residual (zeros before the first residual)."""
        if self.bias is None or self.weight <= 0.0:
            return np.zeros(obs_dim)
        return self.bias / self.weight


class EpisodeFacts(NamedTuple):
    """Episode facts of a batch, one value a row (``[batch]`` each), as rules read them."""

    shifted: np.ndarray  # bool
    steps_since_shift: np.ndarray  # int64, NEVER_SHIFTED when not shifted
    steps: np.ndarray  # int64

    @classmethod
    def empty(cls, n: int) -> EpisodeFacts:
        return cls(np.zeros(n, bool), np.full(n, NEVER_SHIFTED, np.int64), np.zeros(n, np.int64))


class _Seen(Protocol):
    last_seen: float


_S = TypeVar("_S", bound=_Seen)


class _BoundedEpisodes(Generic[_S]):
    """Entries keyed by ``(agent_id, episode_id)``: an LRU with a TTL and a size bound.

    Args:
        max_episodes: Most episodes kept; beyond, the least recently seen is dropped.
        ttl_seconds: An episode not seen for this long is dropped.
        clock: Seconds, monotonic (tests inject a fake one).

    Thread-safe: every method holds one lock (the engine decides on one thread per process;
    the lock only keeps direct callers safe).
    """

    def __init__(
        self,
        max_episodes: int = 10_000,
        ttl_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_episodes < 1 or ttl_seconds <= 0:
            raise ValueError("max_episodes must be >= 1 and ttl_seconds > 0")
        self.max_episodes = max_episodes
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._states: OrderedDict[tuple[str, str], _S] = OrderedDict()
        self._lock = threading.Lock()
        #: Episodes dropped by the size bound / the TTL since construction.
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._states)

    def _expire(self, now: float) -> None:
        """Drop episodes older than the TTL; the LRU order puts them first."""
        cutoff = now - self.ttl_seconds
        states = self._states
        while states:
            key, st = next(iter(states.items()))
            if st.last_seen >= cutoff:
                break
            del states[key]
            self.expired += 1

    def get(self, agent_id: str, episode_id: str) -> _S | None:
        """The episode's entry (marked as just seen), or None when unknown, expired or dropped."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            st = self._states.get((agent_id, episode_id))
            if st is not None:
                st.last_seen = now
                self._states.move_to_end((agent_id, episode_id))
            return st

    def put(self, agent_id: str, episode_id: str, state: _S) -> None:
        """Store (or replace) the episode's entry, dropping the least recent beyond ``max_episodes``."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            state.last_seen = now
            key = (agent_id, episode_id)
            self._states[key] = state
            self._states.move_to_end(key)
            while len(self._states) > self.max_episodes:
                self._states.popitem(last=False)
                self.evicted += 1

    def peek(self, agent_id: str, episode_id: str) -> _S | None:
        """The entry without marking it seen (for reading facts and biases)."""
        with self._lock:
            st = self._states.get((agent_id, episode_id))
            if st is not None and st.last_seen < self.clock() - self.ttl_seconds:
                return None
            return st

    def drop(self, agent_id: str, episode_id: str | None = None) -> int:
        """Forget one episode, or every episode of ``agent_id``; returns how many were dropped."""
        with self._lock:
            keys = [
                k for k in self._states if k[0] == agent_id and (episode_id is None or k[1] == episode_id)
            ]
            for k in keys:
                del self._states[k]
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()


class EpisodeStore(_BoundedEpisodes[EpisodeState]):
    """Episode states keyed by ``(agent_id, episode_id)`` (bounds and locking: :class:`_BoundedEpisodes`),
    with the read-only views rules and shields use."""

    # ------------------------------------------------------------------ read-only views

    def facts(self, agent_id: str, episode_ids: Sequence[str], steps: np.ndarray) -> EpisodeFacts:
        """Episode facts of each row at its own step (``steps``: ``[batch]`` int64).

        ``shifted``: the statistic crossed its threshold at or before this step;
        ``steps_since_shift``: this step minus that step (:data:`NEVER_SHIFTED` when not shifted);
        ``steps``: steps of the episode this process has seen up to this one (``step - first_step
        + 1``; it restarts with lost state). Unknown episodes: not shifted, 0 steps.
        """
        n = len(episode_ids)
        out = EpisodeFacts.empty(n)
        for i, eid in enumerate(episode_ids):
            st = self.peek(agent_id, eid) if eid else None
            if st is None:
                continue
            t = int(steps[i])
            if t < st.first_step:  # the row predates a restart inside this batch
                continue
            out.steps[i] = t - st.first_step + 1
            if st.shift_step is not None and st.shift_step <= t:
                out.shifted[i] = True
                out.steps_since_shift[i] = t - st.shift_step
        return out

    def residual_bias(self, agent_id: str, episode_ids: Sequence[str], obs_dim: int) -> np.ndarray:
        """``[batch, obs_dim]`` EW mean residual (observed - predicted next obs) of each row's episode."""
        out = np.zeros((len(episode_ids), obs_dim))
        for i, eid in enumerate(episode_ids):
            st = self.peek(agent_id, eid) if eid else None
            if st is not None:
                out[i] = st.mean_residual(obs_dim)
        return out

    def residual_counts(self, agent_id: str, episode_ids: Sequence[str]) -> np.ndarray:
        """``[batch]`` int64: residuals averaged into each row's :meth:`residual_bias` (0: none yet)."""
        out = np.zeros(len(episode_ids), np.int64)
        for i, eid in enumerate(episode_ids):
            st = self.peek(agent_id, eid) if eid else None
            if st is not None:
                out[i] = st.residuals
        return out


@dataclass(slots=True)
class _Held:
    """One episode's latest decided step, its deciding rule and the rule held into it (-1: none)."""

    step: int
    rule: int
    held: int
    last_seen: float = 0.0


class RuleHolds(_BoundedEpisodes[_Held]):
    """Which rule decided each episode's latest step, for rules with ``hold_while`` (hysteresis).

    A rule with ``hold_while`` keeps deciding an episode's next step while that condition holds,
    even once its ``when`` no longer does. This remembers, per ``(agent_id, episode_id)``, the
    latest step decided and the index of the rule that decided it (-1: the default or a failure).
    :meth:`held` answers, for each row, the rule held into it: the rule of step ``step - 1``; for
    the same step sent again (a retry), what was held into that step the first time, so a retry
    gets the same answer. Any other step (a gap, a restart, a new episode, a row without an
    episode id) holds nothing: the rule must enter through ``when`` again.

    Bounded as :class:`EpisodeStore` is (an LRU with ``max_episodes`` entries and a TTL); a
    forgotten episode holds nothing, like a lost transition-monitor state.
    """

    def held(self, agent_id: str, episode_ids: Sequence[str], steps: np.ndarray) -> np.ndarray:
        """``[batch]`` int32: the index of the rule held into each row's step, -1 for none."""
        out = np.full(len(episode_ids), -1, np.int32)
        if not self._states:
            return out
        for i, eid in enumerate(episode_ids):
            entry = self.peek(agent_id, eid) if eid else None
            if entry is None:
                continue
            t = int(steps[i])
            if t == entry.step + 1:
                out[i] = entry.rule
            elif t == entry.step:
                out[i] = entry.held
        return out

    def record(
        self,
        agent_id: str,
        episode_ids: Sequence[str],
        steps: np.ndarray,
        rules: np.ndarray,
        held: np.ndarray,
    ) -> None:
        """Remember each row's deciding rule (``rules``: ``[batch]`` index, -1 for none) and what
        :meth:`held` answered for it (``held``), row by row in batch order."""
        for i, eid in enumerate(episode_ids):
            if eid:
                self.put(agent_id, eid, _Held(int(steps[i]), int(rules[i]), int(held[i])))


@runtime_checkable
class EpisodeFactsSource(Protocol):
    """A monitor that keeps episode state and can say each row's :class:`EpisodeFacts`."""

    def episode_facts(self, batch) -> EpisodeFacts:  # batch: interlock.batch.Batch
        """``[batch]`` facts of each row, after this batch's ``check``."""
        ...


def episode_columns(sources: Sequence[EpisodeFactsSource], batch) -> dict[str, np.ndarray] | None:
    """``episode.<field>`` -> ``[batch]`` column, combined over ``sources``; None without sources.

    With several transition monitors an episode is shifted when any of them tripped,
    ``steps_since_shift`` is the smallest value (the most recent first trip of any of them) and
    ``steps`` the largest count.
    """
    if not sources:
        return None
    facts = [s.episode_facts(batch) for s in sources]
    shifted = np.logical_or.reduce([f.shifted for f in facts])
    since = np.minimum.reduce([f.steps_since_shift for f in facts])
    steps = np.maximum.reduce([f.steps for f in facts])
    return {"shifted": shifted, "steps_since_shift": since, "steps": steps}
