"""Transitions from the decision log: one agent's recorded traffic as ``(obs, action, next_obs)`` rows.

An agent that is not an ONNX file (remote, another language) cannot be rolled out for
``interlock calibrate --env --policy``, but with ``server.audit.record: all`` its traffic is in the
audit log: every decision with its ``episode_id``, ``step``, observation and executed action. Two
records of one episode at steps ``t`` and ``t + 1`` are one transition: the observation at ``t``,
the action executed at ``t`` (the ``action`` column: the proposed one in shadow mode or on ALLOW,
the fallback's on SUBSTITUTE) and the observation at ``t + 1``. The last step of an episode has no
successor Interlock saw, so it yields no row.

:func:`transitions_from_records` builds the arrays of a transitions ``.npz``
(:mod:`interlock.ensembles.data`) that ``interlock calibrate --data`` reads;
``interlock audit export --agent ID --npz OUT.npz`` writes them.

Example:
    >>> from interlock.audit import AuditQuery, open_backend
    >>> from interlock.audit.transitions import transitions_from_records
    >>> log = open_backend("interlock-audit.db"); log.open()  # doctest: +SKIP
    >>> found = transitions_from_records(log.query(AuditQuery(agent_id="cartpole")))  # doctest: +SKIP
    >>> found.obs.shape, found.counts.gaps  # doctest: +SKIP
    ((4872, 4), 0)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from interlock.audit.record import AuditRecord

__all__ = ["AuditTransitions", "TransitionCounts", "transitions_from_records"]


@dataclass
class TransitionCounts:
    """What :func:`transitions_from_records` read and why records yielded no transition.

    Attributes:
        records: Records read.
        episodes: Distinct non-empty ``episode_id`` values among them.
        episodes_used: Episodes with at least one transition (rows of the arrays).
        transitions: Rows produced.
        gaps: Breaks between recorded steps of an episode (step ``t`` followed by ``t + k``, ``k > 1``):
            the log lacks the steps in between (``record: non_allow`` keeps only some decisions).
        duplicates: Records of an ``(episode_id, step)`` already seen (the first decision is kept).
        skipped: Records with an empty ``episode_id`` (the agent did not send one: they cannot be chained).
        without_action: Records with no executed action (HALT without a fail-safe action); the
            transition from such a step is dropped.
        nonfinite: Records whose observation holds NaN or Inf (``allow_nonfinite`` agents); no
            transition to or from them.
    """

    records: int = 0
    episodes: int = 0
    episodes_used: int = 0
    transitions: int = 0
    gaps: int = 0
    duplicates: int = 0
    skipped: int = 0
    without_action: int = 0
    nonfinite: int = 0

    def summary(self) -> str:
        """One line for people, e.g. ``120 records, 2 episodes (2 with transitions), 118 transitions``."""
        text = (
            f"{self.records} record(s), {self.episodes} episode(s) ({self.episodes_used} with transitions), "
            f"{self.transitions} transition(s)"
        )
        losses = {
            "gap(s) between recorded steps": self.gaps,
            "duplicate (episode, step) record(s) dropped": self.duplicates,
            "record(s) without episode_id skipped": self.skipped,
            "record(s) without an executed action (HALT)": self.without_action,
            "record(s) with a non-finite observation": self.nonfinite,
        }
        return text + "".join(f"; {n} {what}" for what, n in losses.items() if n)


@dataclass
class AuditTransitions:
    """One agent's transitions from the audit log, rows of an episode together in step order.

    Attributes:
        obs: ``[N, obs_dim]`` observation acted on (the recorded float dtype; other dtypes as float64).
        action: ``[N]`` int64 executed action for discrete agents, ``[N, act_dim]`` float for box agents.
        next_obs: ``[N, obs_dim]`` the observation recorded at the next step, same dtype as ``obs``.
        episode: ``[N]`` int64 episode code, 0.. in order of the episodes' first records.
        step: ``[N]`` int64 step of ``obs`` within its episode.
        episode_ids: The ``episode_id`` of each code (``episode_ids[episode[i]]``).
        counts: What was read and dropped.
    """

    obs: np.ndarray
    action: np.ndarray
    next_obs: np.ndarray
    episode: np.ndarray
    step: np.ndarray
    episode_ids: list[str]
    counts: TransitionCounts = field(default_factory=TransitionCounts)

    def __len__(self) -> int:
        return len(self.obs)

    def arrays(self) -> dict[str, np.ndarray]:
        """The transitions ``.npz`` arrays (:mod:`interlock.ensembles.data`): ``obs``, ``action``,
        ``next_obs``, ``episode``, ``step`` and ``episode_id`` (``[N]`` str, to find a row in the log)."""
        ids = np.asarray(self.episode_ids, dtype=str)
        return {
            "obs": self.obs,
            "action": self.action,
            "next_obs": self.next_obs,
            "episode": self.episode,
            "step": self.step,
            "episode_id": ids[self.episode] if len(self.episode) else np.zeros(0, dtype=str),
        }


def _layout(first: AuditRecord) -> tuple[tuple[int, ...], np.dtype, tuple[int, ...], bool]:
    """``(obs_shape, obs_dtype for the arrays, action_shape, discrete)`` of the agent's first record."""
    obs_dtype = first.observation.dtype if first.observation.dtype.kind == "f" else np.dtype(np.float64)
    act = first.proposed_action
    discrete = act.dtype.kind in "iu" and act.size == 1
    return first.observation.shape, obs_dtype, act.shape, discrete


def transitions_from_records(records: Iterable[AuditRecord]) -> AuditTransitions:
    """Pair consecutive steps of each episode of ONE agent's audit records into transitions.

    Records are grouped by ``episode_id`` and ordered by ``step``; steps ``t`` and ``t + 1`` of an
    episode give the row ``obs`` = observation at ``t``, ``action`` = action executed at ``t``,
    ``next_obs`` = observation at ``t + 1``. Dropped, and counted in :class:`TransitionCounts`:
    records without an ``episode_id``, later records of an ``(episode_id, step)`` already seen
    (the log is read oldest first, so the first decision is kept), transitions across a gap in the
    steps, from a step without an executed action (HALT without a fail-safe), or to or from a
    non-finite observation.

    Args:
        records: One agent's records, oldest first (``SqlAuditBackend.query`` order); may be a
            generator: only each record's observation and action are kept.

    Returns:
        The arrays (``[N, obs_dim]`` obs and next_obs, ``[N]`` int64 or ``[N, act_dim]`` float action,
        ``[N]`` int64 episode and step; see :class:`AuditTransitions`) and the counts. With no
        transition the arrays have zero rows.

    Raises:
        ValueError: records of several agents, or of one agent with observations or actions of
            different shapes (a config change within the period: export one period with --since/--until).
    """
    counts = TransitionCounts()
    agent: str | None = None
    layout: tuple[tuple[int, ...], np.dtype, tuple[int, ...], bool] | None = None
    # episode_id -> step -> (flat observation or None when non-finite, executed action or None)
    episodes: dict[str, dict[int, tuple[np.ndarray | None, np.ndarray | None]]] = {}
    for r in records:
        counts.records += 1
        if agent is None:
            agent = r.agent_id
        elif r.agent_id != agent:
            raise ValueError(
                f"records of agents '{agent}' and '{r.agent_id}': transitions are one agent's; "
                "select one agent (interlock audit export --agent ID)"
            )
        if layout is None:
            layout = _layout(r)
        obs_shape, obs_dtype, act_shape, discrete = layout
        if r.observation.shape != obs_shape or r.proposed_action.shape != act_shape:
            raise ValueError(
                f"agent '{agent}': decision {r.decision_id} has observation shape "
                f"{list(r.observation.shape)} and action shape {list(r.proposed_action.shape)}, earlier "
                f"records {list(obs_shape)} and {list(act_shape)} (the config changed?); export a period "
                "with one layout (--since/--until)"
            )
        if not r.episode_id:
            counts.skipped += 1
            continue
        steps = episodes.setdefault(r.episode_id, {})
        if r.step in steps:
            counts.duplicates += 1
            continue
        flat = np.asarray(r.observation, obs_dtype).reshape(-1)
        finite = bool(np.isfinite(flat).all())
        counts.nonfinite += not finite
        steps[r.step] = (flat if finite else None, None if r.action is None else np.asarray(r.action))
        if r.action is None:
            counts.without_action += 1
    counts.episodes = len(episodes)

    obs_rows: list[np.ndarray] = []
    act_rows: list[np.ndarray] = []
    next_rows: list[np.ndarray] = []
    step_rows: list[int] = []
    code_rows: list[int] = []
    episode_ids: list[str] = []
    for episode_id, steps in episodes.items():  # dicts keep insertion order: first record first
        ordered = sorted(steps)
        code = len(episode_ids)
        for t, t_next in itertools.pairwise(ordered):
            if t_next != t + 1:
                counts.gaps += 1
                continue
            obs, action = steps[t]
            nxt, _ = steps[t_next]
            if obs is None or nxt is None or action is None:
                continue
            obs_rows.append(obs)
            act_rows.append(action)
            next_rows.append(nxt)
            step_rows.append(t)
            code_rows.append(code)
        if code_rows and code_rows[-1] == code:
            episode_ids.append(episode_id)
    counts.episodes_used = len(episode_ids)
    counts.transitions = len(obs_rows)

    if layout is None:
        obs_dim, obs_dtype, act_shape, discrete = 0, np.dtype(np.float64), (), True
    else:
        obs_shape, obs_dtype, act_shape, discrete = layout
        obs_dim = int(np.prod(obs_shape))
    n = len(obs_rows)
    if discrete:
        action = np.asarray([int(a.reshape(())) for a in act_rows], np.int64)
    else:
        act_dtype = np.float64 if not act_rows or act_rows[0].dtype.kind != "f" else act_rows[0].dtype
        act_dim = int(np.prod(act_shape))
        action = (
            np.stack([a.reshape(-1) for a in act_rows]).astype(act_dtype, copy=False)
            if act_rows
            else np.zeros((0, act_dim), act_dtype)
        )
    return AuditTransitions(
        obs=np.stack(obs_rows) if n else np.zeros((0, obs_dim), obs_dtype),
        action=action,
        next_obs=np.stack(next_rows) if n else np.zeros((0, obs_dim), obs_dtype),
        episode=np.asarray(code_rows, np.int64),
        step=np.asarray(step_rows, np.int64),
        episode_ids=episode_ids,
        counts=counts,
    )
