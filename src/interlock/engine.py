"""The Guard engine: validate, run monitors (batched), apply the policy, pick fallbacks.

This module knows nothing of gRPC. Servicers decode requests into
:class:`CheckInput`, call :meth:`Guard.check`, and encode the :class:`Decision`
list; tests drive the same class directly.

Fail closed: an exception in a monitor, rule or fallback gives the agent's
``fail_safe`` fallback (verdict SUBSTITUTE), or HALT when there is none or it
fails too. Only ``fail_mode: open`` turns an internal error into ALLOW.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from interlock.batch import Batch, SignalBatch, cel_activation
from interlock.config import AgentConfig, LoadedConfig, TransitionMonitorConfig
from interlock.episodes import EpisodeFactsSource, RuleHolds, episode_columns
from interlock.errors import ConfigError, InterlockError, InvalidRequest, UnknownAgent, shorten
from interlock.fallbacks import Fallback, build_fallback
from interlock.faultlog import FailureLog
from interlock.monitors import Monitor, build_monitor
from interlock.policies import DecisionPolicy
from interlock.policies.vectorized import Row, batch_columns, batch_row, first_rules
from interlock.runtime import ModelRuntime
from interlock.spaces import AgentSpaces
from interlock.stagetimes import StageTimes, time_ns
from interlock.types import CheckInput, Decision, Verdict, new_decision_id

log = logging.getLogger(__name__)

# Re-exported: the records moved to interlock.types so the agent side can use them without the engine.
__all__ = [
    "AgentRuntime",
    "CheckInput",
    "ColumnDecisions",
    "Decision",
    "Guard",
    "Verdict",
    "new_decision_id",
]


_VERDICT_OF = {
    "allow": Verdict.ALLOW,
    "substitute": Verdict.SUBSTITUTE,
    "escalate": Verdict.ESCALATE,
    "halt": Verdict.HALT,
}
_ALLOW, _SUBSTITUTE, _ESCALATE, _HALT = (int(v) for v in Verdict)
#: int -> Verdict without the enum's call machinery (Decision building, once per row).
_VERDICT_BY_INT = {int(v): v for v in Verdict}
#: Up to this many values, a finiteness check in Python beats numpy's (ufunc and reduction) calls.
_FEW_VALUES = 64
_DEFAULT_HALT_REASON = "no rule allowed the action and the policy default is halt"
#: Templates of a one-row ALLOW's columns (copied: a ColumnDecisions owns and may edit its columns).
_ONE_ALLOW = np.full(1, _ALLOW, np.int8)
_ONE_TRUE = np.ones(1, bool)
_ONE_ZERO = np.zeros(1, np.int32)
#: A one-row ``invalid`` mask, shared (read only: every user makes new arrays from it).
_ONE_TRUE_RO = np.ones(1, bool)
_ONE_FALSE_RO = np.zeros(1, bool)
_ONE_TRUE_RO.flags.writeable = False
_ONE_FALSE_RO.flags.writeable = False


class _RowAllow(NamedTuple):
    """A one-row batch the policy allows: its rule index and signals ([S] arrays and Python lists)."""

    rule: int
    values: np.ndarray
    tripped: np.ndarray
    thresholds: np.ndarray
    value_list: list[float]
    trip_list: list[bool]


@dataclass
class AgentPlan:
    """What one agent's decisions need, computed once at load (nothing per call looks names up).

    Rule index 0 and fallback index 0 are "" (none); rule ``k`` of the policy is index ``k + 1``.
    """

    signal_names: list[str]
    rule_names: list[str]
    rule_reasons: list[str]
    #: ``[rules + 1]`` int8: the verdict of each rule index (index 0: the policy default).
    rule_verdicts: np.ndarray
    #: Per rule index: the fallback a SUBSTITUTE / ESCALATE of that rule applies (None: none).
    rule_fallbacks: list[str | None]
    fallback_names: list[str]
    fallback_index: dict[str, int]


@dataclass
class ColumnDecisions:
    """The engine's answers for the ``n`` rows of one :class:`Batch`, as columns.

    Row ``i`` is the :class:`Decision` :meth:`decision` builds, built only for the rows that
    need one (escalation, audit, the list API). Rows absent from the sparse maps have no
    reasons beyond their rule's (``plan.rule_reasons[rules[i]]``), no errors and no escalation.

    Attributes:
        batch: The rows (observations ``[n, *obs_shape]``, proposed actions ``[n, *action_shape]``).
        verdicts: ``[n]`` int8 Verdict values.
        actions: ``[n, *action_shape]``: the action each row executes (its proposed action where
            ``has_action`` is False: HALT without a fail-safe action).
        has_action: ``[n]`` bool.
        rules: ``[n]`` int32 index into ``rule_names``.
        fallbacks: ``[n]`` int32 index into ``fallback_names``.
        values: ``[n, S]`` float64 signal values (NaN where the monitor did not run).
        thresholds: ``[S]`` float64.
        tripped: ``[n, S]`` bool.
        ran: ``[n, S]`` bool, where each signal was computed; None: everywhere.
        shadow: ``[n]`` int8 would-be verdicts in shadow mode (0: the row kept its fail-closed
            verdict); None when the agent is not in shadow mode.
        unchecked: Rows that were not checked at all (validation), with the error Check would raise.
    """

    agent_id: str
    config_version: str
    batch_id: str
    batch: Batch
    verdicts: np.ndarray
    actions: np.ndarray
    has_action: np.ndarray
    rules: np.ndarray
    fallbacks: np.ndarray
    signal_names: list[str]
    values: np.ndarray
    thresholds: np.ndarray
    tripped: np.ndarray
    ran: np.ndarray | None
    rule_names: list[str]
    rule_reasons: list[str]
    fallback_names: list[str]
    shadow: np.ndarray | None = None
    reasons: dict[int, list[str]] = field(default_factory=dict)
    errors: dict[int, list[str]] = field(default_factory=dict)
    escalation_ids: dict[int, str] = field(default_factory=dict)
    unchecked: dict[int, InterlockError] = field(default_factory=dict)
    _own_actions: bool = False

    def __len__(self) -> int:
        return len(self.verdicts)

    def decision_id(self, i: int) -> str:
        return f"{self.batch_id}-{i}"

    def reasons_of(self, i: int) -> list[str]:
        """Row ``i``'s reasons (the rule's reason unless more was said)."""
        r = self.reasons.get(i)
        if r is not None:
            return r
        k = int(self.rules[i])
        return [self.rule_reasons[k]] if k else []

    def _reasons_for_edit(self, i: int) -> list[str]:
        r = self.reasons.get(i)
        if r is None:
            r = self.reasons[i] = self.reasons_of(i)
        return r

    def set_action(self, rows: np.ndarray | list[int], actions: np.ndarray) -> None:
        """Write executed actions (``[len(rows), *action_shape]``) for ``rows``; copies the column once."""
        if not self._own_actions:
            self.actions = np.array(self.actions, copy=True)
            self._own_actions = True
        self.actions[rows] = actions
        self.has_action[rows] = True

    def halt(self, i: int, why: str) -> None:
        self.verdicts[i] = _HALT
        self.has_action[i] = False
        self.fallbacks[i] = 0
        self._reasons_for_edit(i).append(why)

    def needs_detail(self) -> np.ndarray:
        """``[n]`` bool: rows that are not a plain ALLOW (verdict, reasons, errors, escalation, unchecked)."""
        mask = self.verdicts != _ALLOW
        for rows in (self.reasons, self.errors, self.escalation_ids, self.unchecked):
            if rows:
                mask[list(rows)] = True
        return mask

    def decision(self, i: int, decision_id: str | None = None) -> Decision:
        """Row ``i`` as a :class:`Decision` (a fresh object; :meth:`put` writes changes back)."""
        b = self.batch
        names, vals, tr = self.signal_names, self.values[i].tolist(), self.tripped[i].tolist()
        th = self.thresholds.tolist()
        if self.ran is None:
            signals = list(zip(names, vals, th, tr, strict=True))
        else:
            done = self.ran[i].tolist()
            signals = [(names[j], vals[j], th[j], tr[j]) for j in range(len(names)) if done[j]]
        shadow_verdict = None
        if self.shadow is not None and self.shadow[i]:
            would = Verdict(int(self.shadow[i]))
            shadow_verdict = would
            signals.append(("shadow.would_verdict", float(int(would)), float(_ALLOW), would > 1))
        proposed = b.actions[i]
        return Decision(
            decision_id=decision_id or self.decision_id(i),
            agent_id=self.agent_id,
            verdict=_VERDICT_BY_INT[int(self.verdicts[i])],
            action=self.actions[i] if self.has_action[i] else None,
            proposed_action=proposed,
            observation=b.observations[i],
            signals=signals,
            reasons=list(self.reasons_of(i)),
            config_version=self.config_version,
            fallback=self.fallback_names[int(self.fallbacks[i])],
            rule=self.rule_names[int(self.rules[i])],
            escalation_id=self.escalation_ids.get(i, ""),
            episode_id=b.episode_ids[i] if b.episode_ids else "",
            step=int(b.steps[i]),
            labels=b.labels[i] if b.labels else {},
            errors=list(self.errors.get(i, ())),
            shadow_verdict=shadow_verdict,
        )

    def decisions(self, ids: Sequence[str] | None = None) -> list[Decision]:
        """Every row as a :class:`Decision` (the list API: Check, CheckBatch, the micro-batcher)."""
        return [self.decision(i, ids[i] if ids is not None else None) for i in range(len(self))]

    def put(self, i: int, d: Decision) -> None:
        """Write a row's :class:`Decision` back (after per-row work: fail-safe, escalation)."""
        self.verdicts[i] = int(d.verdict)
        if d.action is None:
            self.has_action[i] = False
        else:
            self.set_action([i], np.asarray(d.action)[None])
        self.rules[i] = self._name_index("rule_names", d.rule, int(self.rules[i]))
        self.fallbacks[i] = self._name_index("fallback_names", d.fallback, int(self.fallbacks[i]))
        k = int(self.rules[i])
        if i in self.reasons or d.reasons != ([self.rule_reasons[k]] if k else []):
            self.reasons[i] = list(d.reasons)
        if d.errors:
            self.errors[i] = list(d.errors)
        if d.escalation_id:
            self.escalation_ids[i] = d.escalation_id

    def _name_index(self, attr: str, name: str, current: int) -> int:
        """Index of ``name`` in the ``attr`` name list; a new name (e.g. the operator's) is appended
        to a copy (the lists are the agent plan's, shared by every batch)."""
        names: list[str] = getattr(self, attr)
        if names[current] == name:
            return current
        if name in names:
            return names.index(name)
        setattr(self, attr, [*names, name])
        if attr == "rule_names":
            self.rule_reasons = [*self.rule_reasons, ""]
        return len(names)

    def expand(self, n: int, rows: np.ndarray, unchecked: Mapping[int, InterlockError]) -> ColumnDecisions:
        """These answers (for ``rows`` of a larger batch of ``n``) spread over all ``n`` rows.

        The other rows are HALT without an action, their error in ``unchecked``.
        """
        s = len(self.signal_names)

        def spread(col: np.ndarray, fill: object) -> np.ndarray:
            out = np.full((n, *col.shape[1:]), fill, dtype=col.dtype)
            out[rows] = col
            return out

        at = rows.tolist()
        return ColumnDecisions(
            agent_id=self.agent_id,
            config_version=self.config_version,
            batch_id=self.batch_id,
            batch=self.batch,  # replaced by the caller with the full batch
            verdicts=spread(self.verdicts, _HALT),
            actions=spread(self.actions, 0),
            has_action=spread(self.has_action, False),
            rules=spread(self.rules, 0),
            fallbacks=spread(self.fallbacks, 0),
            signal_names=self.signal_names,
            values=spread(self.values, np.nan) if s else np.zeros((n, 0)),
            thresholds=self.thresholds,
            tripped=spread(self.tripped, True) if s else np.zeros((n, 0), bool),
            ran=spread(self.ran if self.ran is not None else np.ones((len(rows), s), bool), False),
            rule_names=self.rule_names,
            rule_reasons=self.rule_reasons,
            fallback_names=self.fallback_names,
            shadow=spread(self.shadow, 0) if self.shadow is not None else None,
            reasons={at[k]: v for k, v in self.reasons.items()},
            errors={at[k]: v for k, v in self.errors.items()},
            escalation_ids={at[k]: v for k, v in self.escalation_ids.items()},
            unchecked=dict(unchecked),
            _own_actions=True,
        )


class NotLoaded(RuntimeError):
    """API misuse: a :class:`Guard` was asked to decide before ``load()`` (or after ``unload()``)."""


class AgentRuntime:
    """One agent config compiled: spaces, monitors, policy and fallbacks, ready to decide."""

    def __init__(self, cfg: AgentConfig, runtime: ModelRuntime, config_version: str, where: str) -> None:
        self.config = cfg
        self.where = where
        self.config_version = config_version
        try:
            self.spaces = AgentSpaces.from_config(cfg)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        self.monitors: list[Monitor] = [
            build_monitor(m, self.spaces, runtime, f"{where}.monitors[{i}]")
            for i, m in enumerate(cfg.monitors)
        ]
        self.fallbacks: dict[str, Fallback] = {
            name: build_fallback(name, f, self.spaces, runtime, f"{where}.fallbacks.{name}")
            for name, f in cfg.fallbacks.items()
        }
        #: Rate-limited logs of failing stages ("monitor:<name>", "fallback:<name>").
        self.failure_logs: dict[str, FailureLog] = {}
        by_name = {m.name: m for m in self.monitors}
        for m in self.monitors:
            m.bind(by_name)  # monitors that read another (a reachability monitor's correction source)
        for f in self.fallbacks.values():
            f.bind(by_name)  # fallbacks that use a monitor's model (shield, backup, recover)
        self.signal_names = [f"{m.name}.{s}" for m in self.monitors for s in m.signal_names]
        #: The monitors the plan's signal order comes from (one-row answers are read in this order
        #: while ``monitors`` is unchanged).
        self._plan_monitors = list(self.monitors)
        #: Per monitor, its signal names and their "<monitor>.<signal>" keys (fixed at construction),
        #: filled on first use (a monitor may be added to ``monitors`` later, as tests do).
        self._monitor_keys: dict[Monitor, tuple[list[str], list[str]]] = {}
        #: Monitors that keep episode state (``episode.*`` in rules) and those told what was executed.
        self.episode_sources = [m for m in self.monitors if isinstance(m, EpisodeFactsSource)]
        self.after_decide = [m for m in self.monitors if type(m).after_decide is not Monitor.after_decide]
        self.policy = DecisionPolicy(
            cfg.policy,
            self.spaces.action.discrete,
            self.signal_names,
            f"{where}.policy",
            obs_size=int(np.prod(self.spaces.observation.shape)),
            episode=bool(self.episode_sources),
        )
        for i, rule in enumerate(cfg.policy.rules):
            if rule.verdict == "escalate" and not (rule.fallback or cfg.escalation.fallback or cfg.fail_safe):
                raise ConfigError(
                    f"{where}.policy.rules[{i}] ('{rule.name}') escalates but no fail-safe action exists for "
                    "when nobody answers: set the rule's fallback, escalation.fallback or fail_safe"
                )

        self.plan = self._plan()
        #: The policy's rules as scalar conditions on one row (None: some rule has no scalar form).
        scalar = [r.vectorized.scalar if r.vectorized is not None else None for r in self.policy.rules]
        self._scalar_rules: list[Callable[[Row], Any]] | None = (
            [f for f in scalar if f is not None] if all(f is not None for f in scalar) else None
        )
        #: Which rule decided each episode's latest step, when a rule has ``hold_while``.
        self.holds: RuleHolds | None = None
        if self.policy.holds:
            bounds = [m for m in cfg.monitors if isinstance(m, TransitionMonitorConfig)]
            self.holds = (
                RuleHolds(max(m.max_episodes for m in bounds), max(m.episode_ttl_seconds for m in bounds))
                if bounds
                else RuleHolds()
            )
        #: One-row batches take :meth:`_decide_one` (not for episode state: its facts feed the rules;
        #: not for held rules: what decided the episode's previous step does).
        self._one_row = self._scalar_rules is not None and not self.episode_sources and self.holds is None

    def _plan(self) -> AgentPlan:
        cfg = self.config
        rules = self.policy.rules
        verdicts = [_VERDICT_OF[self.policy.default]] + [_VERDICT_OF[r.verdict] for r in rules]
        rule_fallbacks: list[str | None] = [cfg.fail_safe if self.policy.default == "halt" else None]
        for r in rules:
            if r.verdict == "substitute":
                rule_fallbacks.append(r.fallback)
            elif r.verdict == "escalate":
                rule_fallbacks.append(cfg.escalation.fallback or r.fallback or cfg.fail_safe)
            elif r.verdict == "halt":
                rule_fallbacks.append(cfg.fail_safe)
            else:
                rule_fallbacks.append(None)
        fallback_names = ["", *self.fallbacks]
        return AgentPlan(
            signal_names=list(self.signal_names),
            rule_names=["", *(r.name for r in rules)],
            rule_reasons=["", *(r.reason for r in rules)],
            rule_verdicts=np.array([int(v) for v in verdicts], dtype=np.int8),
            rule_fallbacks=rule_fallbacks,
            fallback_names=fallback_names,
            fallback_index={name: k for k, name in enumerate(fallback_names)},
        )

    def load(self) -> None:
        for m in self.monitors:
            m.load()
        for f in self.fallbacks.values():
            f.load()

    def unload(self) -> None:
        for m in self.monitors:
            m.unload()
        for f in self.fallbacks.values():
            f.unload()

    # ------------------------------------------------------------------ request path

    def validate(self, item: CheckInput, field: str = "") -> tuple[np.ndarray, np.ndarray]:
        """Observation and action coerced to the agent's spaces; raises InvalidRequest."""
        prefix = f"{field}." if field else ""
        obs = self.spaces.observation.coerce(item.observation, f"{prefix}observation")
        act = self.spaces.action.coerce(item.action, f"{prefix}action")
        return obs, act

    def validate_columns(
        self, observations: np.ndarray, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[int, InvalidRequest]]:
        """Check ``[n, *obs_shape]`` observations and ``[n, *action_shape]`` actions once for the batch.

        A wrong dtype, shape or row count fails the whole batch (InvalidRequest naming the
        tensor); a row whose observation is not finite fails only itself (returned with the
        error a Check of that row gets). Actions outside the space are not errors (the engine
        masks them).

        Returns:
            The observations and actions in the agent's dtypes, and row -> error for bad rows.
        """
        obs_space, act_space = self.spaces.observation, self.spaces.action
        o, a = np.asarray(observations), np.asarray(actions)
        if o.ndim == 0 or o.shape[1:] != obs_space.shape:
            want_obs = ", ".join(["N", *map(str, obs_space.shape)])
            raise InvalidRequest(f"observations has shape {list(o.shape)}; expected [{want_obs}]")
        n = o.shape[0]
        if n == 0:
            raise InvalidRequest("observations has no rows; send at least one", reason="empty_batch")
        want = (n,) if act_space.discrete else (n, *act_space.shape)
        if a.shape != want and not (act_space.discrete and a.shape == (n, 1)):
            raise InvalidRequest(
                f"actions has shape {list(a.shape)}; expected {list(want)} (one action per observation row)"
            )
        if _kind_of(o.dtype) != _kind_of(obs_space.dtype):
            raise InvalidRequest(f"observations has dtype {o.dtype.name}; expected {obs_space.dtype.name}")
        act_kind = "integer" if act_space.discrete else "float"
        if _kind_of(a.dtype) != act_kind:
            raise InvalidRequest(
                f"actions has dtype {a.dtype.name}; "
                + (
                    "discrete actions are integers (int64)"
                    if act_space.discrete
                    else f"box actions are {act_space.dtype.name}"
                )
            )
        if o.dtype != obs_space.dtype or a.dtype != act_space.dtype:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes Inf: flagged below / masked
                o = o.astype(obs_space.dtype, copy=False)
                a = a.astype(act_space.dtype, copy=False)
        if a.shape != want:
            a = a.reshape(want)
        bad: dict[int, InvalidRequest] = {}
        if o.dtype.kind == "f" and not obs_space.allow_nonfinite:
            # One small row: Python's isfinite over its values (cheaper than numpy's two calls).
            if n == 1 and o.size <= _FEW_VALUES and all(map(math.isfinite, o.reshape(-1).tolist())):
                return o, a, bad
            finite = np.isfinite(o.reshape(n, -1)).all(axis=1)
            if not finite.all():
                for i in np.flatnonzero(~finite).tolist():
                    try:  # the message a Check of this row gets
                        obs_space.coerce(np.asarray(observations)[i], f"observations[{i}]")
                    except InvalidRequest as e:
                        bad[i] = e
        return o, a, bad

    def decide(
        self,
        items: Sequence[CheckInput],
        observations: np.ndarray,
        actions: np.ndarray,
        times: StageTimes | None = None,
    ) -> list[Decision]:
        """Decide already-validated requests of this agent (the list API over :meth:`decide_columns`).

        Args:
            items: The requests (for ids, labels, steps).
            observations: ``[batch, *obs_shape]``.
            actions: ``[batch, *action_shape]``.
            times: Tracing on: record the stages' times here (None: tracing off, no work).
        """
        n = len(items)
        if n == 1 and times is None:  # Check: the same steps without the per-row lists
            item = items[0]
            one = Batch(
                item.agent_id,
                observations,
                actions,
                np.array([item.step], dtype=np.int64),
                [item.episode_id],
                [item.labels],
            )
            d = self._decision_one(one, new_decision_id())
            d.agent_id = item.agent_id
            return [d]
        times = times.fork() if times is not None else None  # this agent's own copy
        batch = Batch(
            agent_id=items[0].agent_id,
            observations=observations,
            actions=actions,
            steps=np.array([it.step for it in items], dtype=np.int64),
            episode_ids=[it.episode_id for it in items],
            labels=[it.labels for it in items],
        )
        ids = [new_decision_id() for _ in range(n)]
        # The first row's id doubles as the batch id (which only CheckColumns' answers show).
        decisions = self.decide_columns(batch, ids[0], times=times).decisions(ids)
        for d, it in zip(decisions, items, strict=True):  # one config agent, ids as sent (globs)
            d.agent_id = it.agent_id
        if times is not None:
            times.attach(decisions)
        return decisions

    def decide_columns(
        self, batch: Batch, batch_id: str | None = None, times: StageTimes | None = None
    ) -> ColumnDecisions:
        """Decide every row of ``batch`` (already validated) as columns (``times``: tracing's stage
        times, None when tracing is off).

        Monitors, the vectorized rules and fallbacks run over arrays; per row only: CEL rules the
        vectoriser could not compile (for the rows no earlier rule decided), and rows that fail
        (a monitor or rule raising on them, an action outside the space, a fallback failing).
        """
        if times is None and len(batch) == 1 and self._one_row:
            return self._decide_one(batch, batch_id)
        # 1. Monitors, each over the whole batch. A row whose action is outside the space reaches
        #    only the monitors defined there (action_space); the policy decides it from those.
        invalid = self.spaces.action.invalid(batch.actions)
        signals, ran, row_errors = self._run_monitors(batch, invalid, times)
        return self._decide_signals(batch, batch_id, times, invalid, signals, ran, row_errors)

    def _decide_one(self, batch: Batch, batch_id: str | None) -> ColumnDecisions:
        """:meth:`decide_columns` of a one-row batch (tracing off): the same answer by a shorter route.

        The monitors run as :meth:`_run_monitors` runs them (a monitor that raises fails the row
        the same way); the policy's rules are evaluated through their scalar forms on plain Python
        values. A row that decides ALLOW is answered here; any other row (an action outside the
        space, a monitor error, another verdict) continues on the general path from the monitors'
        signals, so everything but the plain ALLOW is decided by the code that decides batches.
        """
        got = self._row_answer(batch, batch_id)
        if isinstance(got, ColumnDecisions):
            return got
        plan = self.plan
        cd = ColumnDecisions(
            agent_id=batch.agent_id,
            config_version=self.config_version,
            batch_id=batch_id or new_decision_id(),
            batch=batch,
            verdicts=_ONE_ALLOW.copy(),
            actions=batch.actions,
            has_action=_ONE_TRUE.copy(),
            rules=np.array([got.rule], np.int32),
            fallbacks=_ONE_ZERO.copy(),
            signal_names=plan.signal_names,
            values=got.values[None],
            thresholds=got.thresholds,
            tripped=got.tripped[None],
            ran=None,
            rule_names=plan.rule_names,
            rule_reasons=plan.rule_reasons,
            fallback_names=plan.fallback_names,
        )
        if self.config.shadow:
            _shadow_columns(cd, _ONE_FALSE_RO)
        if self.after_decide:
            self._tell_executed(batch, cd.actions)
        return cd

    def _decision_one(self, batch: Batch, decision_id: str) -> Decision:
        """``decide_columns(batch, decision_id).decision(0, decision_id)`` of a one-row batch (tracing
        off): a plain ALLOW (not in shadow mode) is built as the :class:`Decision` directly from the
        row's Python values, without the columns; any other row is what :meth:`decide_columns` gives."""
        if not self._one_row or self.config.shadow or len(batch) != 1:
            return self.decide_columns(batch, decision_id).decision(0, decision_id)
        got = self._row_answer(batch, decision_id)
        if isinstance(got, ColumnDecisions):
            return got.decision(0, decision_id)
        if self.after_decide:
            self._tell_executed(batch, batch.actions)
        plan = self.plan
        return Decision(
            decision_id=decision_id,
            agent_id=batch.agent_id,
            verdict=Verdict.ALLOW,
            action=batch.actions[0],
            proposed_action=batch.actions[0],
            observation=batch.observations[0],
            signals=list(
                zip(plan.signal_names, got.value_list, got.thresholds.tolist(), got.trip_list, strict=True)
            ),
            reasons=[plan.rule_reasons[got.rule]] if got.rule else [],
            config_version=self.config_version,
            fallback=plan.fallback_names[0],
            rule=plan.rule_names[got.rule],
            episode_id=batch.episode_ids[0] if batch.episode_ids else "",
            step=int(batch.steps[0]),
            labels=batch.labels[0] if batch.labels else {},
        )

    def _row_answer(self, batch: Batch, batch_id: str | None) -> ColumnDecisions | _RowAllow:
        """The one-row path up to its verdict: a plain ALLOW's values (:class:`_RowAllow`), or the
        general path's answer from the monitors' signals for any other row."""
        invalid = self._invalid_one(batch.actions)
        if invalid[0]:
            return self._decide_signals(batch, batch_id, None, invalid, *self._run_monitors(batch, invalid))
        # Each signal's (value, threshold, tripped) for the row, in the monitors' order: from the
        # monitor's check_row, else read from its check (whose SignalBatches are kept for the
        # general path).
        column: list[tuple[Any, Any, Any]] = []
        kept: dict[str, SignalBatch] = {}
        row_errors: dict[int, list[tuple[str, str]]] = defaultdict(list)
        not_ran: list[str] = []
        for m in self.monitors:
            sigs, keys = self._keys(m)
            try:
                triples = m.check_row(batch)
                if triples is None:
                    out = self._monitor_signals(m, batch, sigs)
                    triples = []
                    for sig, key in zip(sigs, keys, strict=True):
                        kept[key] = sb = out[sig]
                        triples.append((sb.values[0], sb.threshold, sb.tripped[0]))
                elif len(triples) != len(sigs):
                    raise ValueError(f"check_row gave {len(triples)} signals; expected {len(sigs)} ({sigs})")
            except Exception as e:  # as _monitor_over for one row: NaN, tripped, not ran
                self._monitor_failed(m, e, 0, row_errors)
                nan = float("nan")
                triples = [(nan, nan, True)] * len(keys)
                not_ran.extend(keys)
            column.extend(triples)
        plan = self.plan
        names = plan.signal_names
        found: dict[str, tuple[Any, Any, Any]] | None = None
        if self.monitors != self._plan_monitors:  # monitors added after construction: by name
            found = self._row_signals(column)
            column = [found[k] for k in names]
        if row_errors:
            found = found or self._row_signals(column)
            ran: dict[str, np.ndarray | None] = dict.fromkeys(found)
            for key in not_ran:
                ran[key] = np.zeros(1, bool)
            signals = _signal_batches(found, kept)
            return self._decide_signals(batch, batch_id, None, invalid, signals, ran, row_errors)
        try:  # anything unforeseen here: the general path decides the row (and fails it closed)
            if names:
                values, limits, trips = zip(*column, strict=True)
            else:
                values = limits = trips = ()
            # [S] values, thresholds and tripped: what the general path's columns hold for this row.
            row_values = np.array(values, dtype=np.float64)
            row_trips = np.array(trips, dtype=bool)
            thresholds = np.array(limits, dtype=np.float64)
            value_list, trip_list = row_values.tolist(), row_trips.tolist()
            row = batch_row(
                batch, dict(zip(names, value_list, strict=True)), dict(zip(names, trip_list, strict=True))
            )
            rule = 0
            assert self._scalar_rules is not None  # (self._one_row)
            for k, holds in enumerate(self._scalar_rules):
                if holds(row):
                    rule = k + 1
                    break
            allowed = plan.rule_verdicts[rule] == _ALLOW
        except Exception:
            allowed = False
        if not allowed:
            signals = _signal_batches(found or self._row_signals(column), kept)
            return self._decide_signals(
                batch, batch_id, None, invalid, signals, dict.fromkeys(signals), row_errors
            )
        return _RowAllow(rule, row_values, row_trips, thresholds, value_list, trip_list)

    def _row_signals(self, column: list[tuple[Any, Any, Any]]) -> dict[str, tuple[Any, Any, Any]]:
        """``"<monitor>.<signal>"`` -> its triple, from one row's triples in the monitors' order."""
        keys = [key for m in self.monitors for key in self._keys(m)[1]]
        return dict(zip(keys, column, strict=True))

    def _invalid_one(self, actions: np.ndarray) -> np.ndarray:
        """``spaces.action.invalid`` of one row (``[1]`` bool): a discrete integer action in Python."""
        space = self.spaces.action
        if space.discrete and actions.dtype.kind in "iu" and actions.size == 1:
            return _ONE_TRUE_RO if not 0 <= int(actions.reshape(-1)[0]) < space.n else _ONE_FALSE_RO
        return space.invalid(actions)

    def _decide_signals(
        self,
        batch: Batch,
        batch_id: str | None,
        times: StageTimes | None,
        invalid: np.ndarray,
        signals: dict[str, SignalBatch],
        ran: dict[str, np.ndarray | None],
        row_errors: dict[int, list[tuple[str, str]]],
    ) -> ColumnDecisions:
        """The rest of :meth:`decide_columns` once the monitors have run: policy, fallbacks, shadow."""
        n = len(batch)
        plan = self.plan
        actions = batch.actions
        policy_start = time_ns() if times is not None else 0

        # 2. Signals as [n, S] columns, then the policy: vectorized rules over the batch, CEL per row.
        names = plan.signal_names
        if names:
            # [S, n] built in C, seen as [n, S] (a transposed view: columns contiguous, for the rules)
            values = np.array([signals[k].values for k in names], dtype=np.float64).T
            trips = np.array([signals[k].tripped for k in names], dtype=bool).T
        else:
            values, trips = np.zeros((n, 0)), np.zeros((n, 0), bool)
        thresholds = np.array([signals[k].threshold for k in names], dtype=np.float64)
        partial = [ran[k] for k in names]
        ran_matrix = (
            None
            if all(r is None for r in partial)
            else np.stack([np.ones(n, bool) if r is None else r for r in partial], axis=1)
        )
        episode = episode_columns(self.episode_sources, batch)  # after the monitors: "or now" counts
        episode_rows = None
        if episode is not None:
            listed = {k: v.tolist() for k, v in episode.items()}
            episode_rows = [{k: v[i] for k, v in listed.items()} for i in range(n)]
        activations: dict[int, dict] = {}

        def activation(i: int) -> dict:
            act = activations.get(i)
            if act is None:
                act = activations[i] = cel_activation(
                    **batch.row(i),
                    signal_names=names,
                    values=values[i].tolist(),
                    tripped=trips[i].tolist(),
                    episode=episode_rows[i] if episode_rows is not None else None,
                )
            return act

        cols = batch_columns(
            batch,
            {k: values[:, j] for j, k in enumerate(names)},
            {k: trips[:, j] for j, k in enumerate(names)},
            episode,
        )
        held = None
        if self.holds is not None:
            held = self.holds.held(batch.agent_id, batch.episode_ids, batch.steps)
        first, policy_errors, kept = first_rules(self.policy.rules, cols, activation, held)
        rules = first + 1
        verdicts = plan.rule_verdicts[rules]
        cd = ColumnDecisions(
            agent_id=batch.agent_id,
            config_version=self.config_version,
            batch_id=batch_id or new_decision_id(),
            batch=batch,
            verdicts=verdicts,
            actions=actions,
            has_action=np.ones(n, dtype=bool),
            rules=rules,
            fallbacks=np.zeros(n, dtype=np.int32),
            signal_names=names,
            values=values,
            thresholds=thresholds,
            tripped=trips,
            ran=ran_matrix,
            rule_names=plan.rule_names,
            rule_reasons=plan.rule_reasons,
            fallback_names=plan.fallback_names,
        )
        for i in kept:  # say why a rule whose `when` is false decided (a failed row says why it failed)
            if i in row_errors:
                continue
            hold = self.policy.rules[int(first[i])].hold
            assert hold is not None
            cd._reasons_for_edit(i).append(
                f"held: the rule decided this episode's previous step and "
                f"hold_while still holds ({hold.source})"
            )
        # Rows a monitor or a rule failed on are decided below, one by one (fail closed).
        failed = sorted(set(row_errors) | set(policy_errors)) if row_errors or policy_errors else []
        if failed:
            verdicts[failed] = _ALLOW
            rules[failed] = 0

        # 3. Verdicts to actions: HALT holds no action; SUBSTITUTE, ESCALATE and HALT take the
        #    fallback their rule (or the default) names, batched per fallback.
        wanted: dict[str, list[np.ndarray]] = defaultdict(list)
        not_allowed = verdicts != _ALLOW
        if not_allowed.any():  # (HALT is not ALLOW: nothing to do for an all-ALLOW batch)
            halted = verdicts == _HALT
            if halted.any():
                cd.has_action[halted] = False
                for i in np.flatnonzero(halted & (rules == 0)).tolist():
                    cd.reasons[i] = [_DEFAULT_HALT_REASON]
            for k in np.unique(rules[not_allowed]).tolist():
                fb = plan.rule_fallbacks[k]
                if fb is not None:
                    wanted[fb].append(np.flatnonzero((rules == k) & not_allowed))
        for i in failed:
            d = cd.decision(i)
            if i in row_errors:
                d.errors.extend(stage for stage, _ in row_errors[i])
                self._fail(d, [why for _, why in row_errors[i]])
            else:
                k, error = policy_errors[i]
                d.errors.append("policy")
                self._fail(d, [f"rule '{self.policy.rules[k].name}' could not be evaluated: {error}"])
            cd.put(i, d)
        if times is not None:
            times.add("policy", policy_start)
        for name, parts in wanted.items():
            idx = np.sort(np.concatenate(parts))
            start = time_ns() if times is not None else 0
            self._apply_fallback(name, idx, batch, signals, cd)
            if times is not None:
                times.add(f"fallback:{name}", start, idx.tolist())

        # No rule stopped an action outside the space (no action_space rule, default allow): never execute it.
        if invalid.any():
            for i in np.flatnonzero(invalid & (cd.verdicts == _ALLOW)).tolist():
                d = cd.decision(i)
                d.rule = ""
                self._fail(d, [f"the action {_shown(d.proposed_action)} is outside the action space"])
                cd.put(i, d)
        if self.config.shadow:
            _shadow_columns(cd, invalid)
        if self.holds is not None and held is not None:
            # What decided each row: -1 for the default or a failed row (they hold nothing), and for
            # a name a later stage appended (not one of the policy's rules).
            decided = cd.rules.astype(np.int32) - 1
            decided[decided >= len(self.policy.rules)] = -1
            self.holds.record(batch.agent_id, batch.episode_ids, batch.steps, decided, held)
        if self.after_decide:
            start = time_ns() if times is not None else 0
            self._tell_executed(batch, cd.actions)
            if times is not None:
                times.add("after_decide", start)
        return cd

    def _tell_executed(self, batch: Batch, executed: np.ndarray) -> None:
        """Monitors' ``after_decide``: each row's answered action ``[n, *action_shape]`` (the proposed
        one where there is none: HALT without a fail-safe action)."""
        valid = ~self.spaces.action.invalid(executed)
        for m in self.after_decide:
            try:
                m.after_decide(batch, executed, valid)
            except Exception as e:  # the decisions stand; the monitor's episode state may be stale
                self._failure_log(f"after_decide:{m.name}", f"{self.where}: monitor '{m.name}'").failed(e)

    def _run_monitors(
        self, batch: Batch, invalid: np.ndarray, times: StageTimes | None = None
    ) -> tuple[dict[str, SignalBatch], dict[str, np.ndarray | None], dict[int, list[tuple[str, str]]]]:
        """Run every monitor over the rows it is defined on.

        Args:
            batch: The batch of ``n`` rows.
            invalid: ``[n]`` bool, True where the action is outside the action space.

        Returns:
            ``signals`` (``"<monitor>.<signal>"`` -> ``[n]`` values; NaN and tripped where the
            monitor did not run), ``ran`` (``[n]`` bool per signal: the value was computed; None
            when it was for every row) and
            ``row_errors`` (row -> ``[(stage, reason)]`` for the rows a monitor failed on).
        """
        n = len(batch)
        all_rows = np.arange(n)
        valid_rows = np.flatnonzero(~invalid) if invalid.any() else all_rows
        signals: dict[str, SignalBatch] = {}
        ran: dict[str, np.ndarray | None] = {}
        row_errors: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for m in self.monitors:
            sigs, keys = self._keys(m)
            rows = all_rows if m.accepts_invalid_actions else valid_rows
            start = time_ns() if times is not None else 0
            out, done = self._monitor_over(m, batch, rows, row_errors, sigs)
            if times is not None:
                times.add(f"monitor:{m.name}", start, None if len(rows) == n else rows.tolist())
            for sig, key in zip(sigs, keys, strict=True):
                signals[key] = out[sig]
                ran[key] = done
        return signals, ran, row_errors

    def _keys(self, m: Monitor) -> tuple[list[str], list[str]]:
        """Monitor ``m``'s signal names and their ``"<monitor>.<signal>"`` keys (cached)."""
        known = self._monitor_keys.get(m)
        if known is None:
            sig_names = list(m.signal_names)
            known = self._monitor_keys[m] = (sig_names, [f"{m.name}.{s}" for s in sig_names])
        return known

    def _monitor_over(
        self,
        m: Monitor,
        batch: Batch,
        rows: np.ndarray,
        row_errors: dict[int, list[tuple[str, str]]],
        sigs: list[str] | None = None,
    ) -> tuple[dict[str, SignalBatch], np.ndarray | None]:
        """Monitor ``m`` over the given rows of ``batch`` (``n`` rows): its ``[n]`` signals and where it ran.

        "Where it ran" is a ``[n]`` bool mask, or None for every row.

        The rows go in one call; only if that raises are they retried one by one, so that the
        rows it fails on (recorded in ``row_errors``) are found and the others keep their values.
        """
        n = len(batch)
        sub = batch if len(rows) == n else batch.take(rows)
        error: Exception | None = None
        out: dict[str, SignalBatch] = {}
        if len(rows):
            try:
                out = self._monitor_signals(m, sub, sigs)
            except Exception as e:
                error = e
        if error is None and len(rows) == n:  # the usual case: every row in one call, nothing to fill in
            return out, None
        values = {s: np.full(n, np.nan) for s in m.signal_names}
        tripped = {s: np.ones(n, bool) for s in m.signal_names}
        thresholds: dict[str, float] = {}
        done = np.zeros(n, bool)
        found: list[tuple[np.ndarray, dict[str, SignalBatch]]] = []
        if error is None:
            found.append((rows, out))
        elif len(rows) == 1:
            self._monitor_failed(m, error, int(rows[0]), row_errors)
        else:  # find the rows it fails on; the others keep their values
            for k, r in enumerate(rows.tolist()):
                try:
                    found.append((rows[k : k + 1], self._monitor_signals(m, sub.take([k]))))
                except Exception as e:
                    self._monitor_failed(m, e, r, row_errors)
        for at, part in found:
            for sig, sb in part.items():
                values[sig][at] = sb.values
                tripped[sig][at] = sb.tripped
                thresholds.setdefault(sig, sb.threshold)
            done[at] = True
        return {
            s: SignalBatch(values[s], thresholds.get(s, float("nan")), tripped[s]) for s in m.signal_names
        }, done

    @staticmethod
    def _monitor_signals(m: Monitor, batch: Batch, sigs: list[str] | None = None) -> dict[str, SignalBatch]:
        """``m.check(batch)``, checked to hold every signal (``sigs``: ``m.signal_names``) with one value
        per row."""
        out = m.check(batch)
        n = len(batch)
        picked = {}
        for sig in m.signal_names if sigs is None else sigs:
            sb = out[sig]
            if len(sb.values) != n:
                raise ValueError(f"signal '{sig}' has {len(sb.values)} values for a batch of {n}")
            picked[sig] = sb
        return picked

    def _monitor_failed(
        self, m: Monitor, e: Exception, row: int, row_errors: dict[int, list[tuple[str, str]]]
    ) -> None:
        stage = f"monitor:{m.name}"
        self._failure_log(stage, f"{self.where}: monitor '{m.name}'").failed(e)
        row_errors[row].append((stage, f"monitor '{m.name}' failed: {type(e).__name__}: {shorten(e, 200)}"))

    def _failure_log(self, stage: str, what: str) -> FailureLog:
        fl = self.failure_logs.get(stage)
        if fl is None:
            fl = self.failure_logs.setdefault(stage, FailureLog(log, what))
        return fl

    def _apply_fallback(
        self,
        name: str,
        idx: np.ndarray,
        batch: Batch,
        signals: dict[str, SignalBatch],
        cd: ColumnDecisions,
    ) -> None:
        """Fallback ``name`` over the rows ``idx`` (one call), each action checked against the space."""
        sub = batch.take(idx)
        sub_signals = {k: SignalBatch(s.values[idx], s.threshold, s.tripped[idx]) for k, s in signals.items()}
        try:
            proposed = np.asarray(self.fallbacks[name].propose(sub, sub_signals))
            expected = (len(idx), *self.spaces.action.shape)
            if proposed.shape != expected:
                raise ValueError(f"returned shape {list(proposed.shape)}, expected {list(expected)}")
            bad = self.spaces.action.invalid(proposed)
        except Exception as e:
            self._failure_log(f"fallback:{name}", f"{self.where}: fallback '{name}'").failed(e)
            for i in idx.tolist():
                cd.errors.setdefault(i, []).append(f"fallback:{name}")
                cd.halt(i, f"fallback '{name}' failed: {type(e).__name__}: {shorten(e, 200)}")
            return
        ok = ~bad
        # On HALT this is the fail-safe action to hold while stopping.
        cd.set_action(idx[ok], proposed[ok].astype(cd.actions.dtype, copy=False))
        cd.fallbacks[idx[ok]] = self.plan.fallback_index[name]
        for k in np.flatnonzero(bad).tolist():
            cd.halt(
                int(idx[k]), f"fallback '{name}' proposed {proposed[k].tolist()}, outside the action space"
            )

    def _fail(self, d: Decision, why: list[str]) -> None:
        """An internal error for this row: fail-safe fallback, HALT, or (fail_mode open) ALLOW."""
        d.reasons.extend(why)
        if self.config.fail_mode == "open" and not self.spaces.action.invalid(d.proposed_action[None])[0]:
            d.verdict = Verdict.ALLOW
            d.rule = ""
            d.action = d.proposed_action
            d.reasons.append("fail_mode is open: the unchecked action was allowed")
            return
        fs = self.config.fail_safe
        if fs is None:
            self._halt(d, "no fail_safe fallback is configured")
            return
        d.verdict = Verdict.SUBSTITUTE
        d.rule = ""
        try:
            action = self.fallback_action(fs, d)
        except Exception as e:
            d.errors.append(f"fallback:{fs}")
            self._halt(d, f"fail-safe fallback '{fs}' failed: {shorten(e, 200)}")
            return
        d.action = action
        d.fallback = fs
        d.reasons.append(f"fail-safe fallback '{fs}' applied")

    def fallback_action(self, name: str, d: Decision) -> np.ndarray:
        """Fallback ``name``'s action for the single row of decision ``d``, checked against the space.

        Raises whatever the fallback raises, or ValueError when its action is outside the space.
        """
        single = Batch(
            d.agent_id,
            d.observation[None],
            d.proposed_action[None],
            np.array([d.step], dtype=np.int64),
            [d.episode_id],
            [d.labels],
        )
        action = np.asarray(self.fallbacks[name].propose(single, {}))[0]
        if self.spaces.action.invalid(action[None])[0]:
            raise ValueError(f"fallback '{name}' action {action.tolist()} is outside the action space")
        return action

    @staticmethod
    def _halt(d: Decision, why: str) -> None:
        d.verdict = Verdict.HALT
        d.action = None
        d.fallback = ""
        d.reasons.append(why)


def _signal_batches(
    found: Mapping[str, tuple[Any, Any, Any]], kept: Mapping[str, SignalBatch]
) -> dict[str, SignalBatch]:
    """One row's signals as the general path takes them: the monitors' own SignalBatches where kept,
    else ``[1]`` arrays of the ``(value, threshold, tripped)`` found (as ``check`` gives them)."""
    return {
        key: kept[key] if key in kept else SignalBatch(np.array([v], np.float64), t, np.array([tr], bool))
        for key, (v, t, tr) in found.items()
    }


def _shown(action: np.ndarray) -> str:
    """An action for a message, shortened (a client chose it)."""
    return shorten(np.asarray(action).tolist())


def _empty_columns(rt: AgentRuntime, batch: Batch, batch_id: str) -> ColumnDecisions:
    """Answers for no rows (every row of ``batch`` was unchecked), for :meth:`ColumnDecisions.expand`."""
    s = len(rt.plan.signal_names)
    return ColumnDecisions(
        agent_id=batch.agent_id,
        config_version=rt.config_version,
        batch_id=batch_id,
        batch=batch,
        verdicts=np.zeros(0, np.int8),
        actions=batch.actions[:0],
        has_action=np.zeros(0, bool),
        rules=np.zeros(0, np.int32),
        fallbacks=np.zeros(0, np.int32),
        signal_names=rt.plan.signal_names,
        values=np.zeros((0, s)),
        thresholds=np.full(s, np.nan),
        tripped=np.zeros((0, s), bool),
        ran=None,
        rule_names=rt.plan.rule_names,
        rule_reasons=rt.plan.rule_reasons,
        fallback_names=rt.plan.fallback_names,
        shadow=np.zeros(0, np.int8) if rt.config.shadow else None,
    )


def _kind_of(dtype: np.dtype) -> str:
    """ "bool", "float", "integer" or the dtype's name (what spaces.coerce compares)."""
    if dtype == np.bool_:
        return "bool"
    kind = dtype.kind
    return "float" if kind == "f" else "integer" if kind in "iu" else dtype.name


def _shadow_columns(cd: ColumnDecisions, invalid: np.ndarray) -> None:
    """Shadow mode over columns: answer ALLOW with the proposed action, keeping the would-be verdict in
    ``cd.shadow`` and a reason. A row whose monitors or policy failed was not checked, and an action
    outside the action space can never be executed: both keep their fail-closed verdict (shadow mode
    observes; it does not let through what no mode would)."""
    eligible = ~invalid
    for i, stages in cd.errors.items():
        if any(e == "policy" or e.startswith("monitor:") for e in stages):
            eligible[i] = False
    would = cd.verdicts.copy()
    cd.shadow = np.where(eligible, would, 0).astype(np.int8)
    changed = eligible & (would != _ALLOW)
    for i in np.flatnonzero(changed).tolist():
        rule = cd.rule_names[int(cd.rules[i])]
        shown = f" (rule '{rule}')" if rule else ""
        name = Verdict(int(would[i])).name
        why = f"shadow mode: would have answered {name}{shown}; the proposed action is allowed"
        cd._reasons_for_edit(i).insert(0, why)
    if changed.any():
        cd.verdicts[changed] = _ALLOW
        cd.set_action(np.flatnonzero(changed), cd.batch.actions[changed])
        cd.fallbacks[changed] = 0


class Guard:
    """All agents of one config, compiled and loaded.

    Example:
        >>> guard = Guard.from_file("examples/cartpole/interlock.yaml")   # doctest: +SKIP
        >>> guard.load()                                                  # doctest: +SKIP
        >>> [d] = guard.check([CheckInput("cartpole", obs, np.int64(1))])  # doctest: +SKIP
    """

    MAX_CACHED_IDS = 10_000

    def __init__(self, loaded: LoadedConfig, runtime: ModelRuntime | None = None) -> None:
        self.loaded = loaded
        self.version = loaded.version
        self.runtime = runtime or ModelRuntime.for_config(loaded)
        self.agents = [
            AgentRuntime(a, self.runtime, loaded.version, f"{loaded.source}: agents[{i}] ({a.id})")
            for i, a in enumerate(loaded.config.agents)
        ]
        self._by_id: dict[str, AgentRuntime] = {}
        self.ready = False

    @classmethod
    def from_file(cls, path: str) -> Guard:
        from interlock.config import load_config

        return cls(load_config(path))

    def load(self) -> Guard:
        """Load every model; raises ConfigError naming the model that failed."""
        for a in self.agents:
            a.load()
        self.ready = True
        return self

    def unload(self) -> None:
        self.ready = False
        for a in self.agents:
            a.unload()

    def agent(self, agent_id: str) -> AgentRuntime:
        """The runtime for ``agent_id`` (exact id or first glob); raises UnknownAgent."""
        rt = self._by_id.get(agent_id)
        if rt is not None:
            return rt
        if not agent_id:
            raise InvalidRequest("agent_id is empty; set it to one of the configured agents")
        for a in self.agents:
            if a.config.matches(agent_id):
                if len(self._by_id) < self.MAX_CACHED_IDS:
                    self._by_id[agent_id] = a
                return a
        known = ", ".join(a.config.id for a in self.agents)
        raise UnknownAgent(
            f"agent_id '{shorten(agent_id)}' matches no agent in the config (configured: {known})"
        )

    def validate(
        self, items: Sequence[CheckInput], indexed: bool = False
    ) -> list[tuple[AgentRuntime, np.ndarray, np.ndarray]]:
        """Resolve the agent and coerce arrays of every request; the first bad one raises."""
        out = []
        for i, item in enumerate(items):
            where = f"requests[{i}]" if indexed else ""
            try:
                rt = self.agent(item.agent_id)
            except (UnknownAgent, InvalidRequest) as e:
                if indexed:
                    e.message = f"{where}: {e.message}"
                    e.args = (e.message,)
                raise
            obs, act = rt.validate(item, where)
            out.append((rt, obs, act))
        return out

    def check(
        self,
        items: Sequence[CheckInput],
        indexed: bool = False,
        columns: tuple[np.ndarray, np.ndarray] | None = None,
        times: StageTimes | None = None,
    ) -> list[Decision]:
        """Decide every request, batching the requests of each agent together.

        Returns decisions in request order. Raises InvalidRequest/UnknownAgent for
        the first malformed request (nothing is decided then), and NotLoaded before
        :meth:`load` (or after :meth:`unload`). ``times`` (tracing on) receives the stages' times.

        ``columns``: the items' observations and actions stacked (``[n, *obs_shape]``,
        ``[n, *action_shape]``, every item of one agent id; CheckBatch of uniform rows). They are
        validated once for the batch; if anything is wrong with them, every item is validated on
        its own, so errors are exactly those of the row-by-row path.
        """
        self._require_ready()
        start = time_ns() if times is not None else 0
        if columns is not None and items:
            decided = self._check_stacked(items, *columns, times=times, start=start)
            if decided is not None:
                return decided
        validated = self.validate(items, indexed)
        if times is not None:
            times.add("validate", start)
        return self._decide(items, validated, times)

    def _check_stacked(
        self,
        items: Sequence[CheckInput],
        observations: np.ndarray,
        actions: np.ndarray,
        times: StageTimes | None = None,
        start: int = 0,
    ) -> list[Decision] | None:
        """:meth:`check` of one agent's stacked rows, or None when they need row-by-row validation."""
        try:
            rt = self.agent(items[0].agent_id)
            obs, act, bad = rt.validate_columns(observations, actions)
        except InterlockError:
            return None
        if bad:
            return None
        if not obs.flags.writeable:  # as np.stack of the row-by-row path gives: monitors may own it
            obs = obs.copy()
        if not act.flags.writeable:
            act = act.copy()
        if times is not None:
            times.add("validate", start)
        return rt.decide(items, obs, act, times)

    def check_columns(
        self,
        agent_id: str,
        observations: np.ndarray,
        actions: np.ndarray,
        episode_ids: Sequence[str] = (),
        steps: Sequence[int] | np.ndarray = (),
        labels: dict[str, str] | None = None,
    ) -> ColumnDecisions:
        """Decide ``n`` rows of one agent given as columns (CheckColumns).

        Args:
            agent_id: One agent for every row.
            observations: ``[n, *obs_shape]``.
            actions: ``[n, *action_shape]`` (``[n]`` for discrete spaces).
            episode_ids: Empty or ``n`` ids.
            steps: Empty or ``n`` step numbers.
            labels: The labels of every row.

        Returns the answers as columns; rows whose observation is not finite are not decided
        (``unchecked``: HALT, no action). Raises InvalidRequest/UnknownAgent for a malformed batch.
        """
        self._require_ready()
        rt = self.agent(agent_id)
        obs, act, bad = rt.validate_columns(observations, actions)
        n = len(obs)
        if len(episode_ids) not in (0, n):
            raise InvalidRequest(
                f"episode_ids has {len(episode_ids)} entries; send none or one per row ({n})"
            )
        if len(steps) not in (0, n):
            raise InvalidRequest(f"steps has {len(steps)} entries; send none or one per row ({n})")
        batch = Batch(
            agent_id=agent_id,
            observations=obs,
            actions=act,
            steps=np.asarray(steps, dtype=np.int64) if len(steps) else np.zeros(n, np.int64),
            episode_ids=list(episode_ids),
            labels=[labels] * n if labels else [],
        )
        if not bad:
            return rt.decide_columns(batch)
        good = np.flatnonzero(~np.isin(np.arange(n), list(bad)))
        batch_id = new_decision_id()
        if len(good):
            part = rt.decide_columns(batch.take(good), batch_id)
        else:
            part = _empty_columns(rt, batch, batch_id)
        cd = part.expand(n, good, bad)
        cd.batch = batch
        return cd

    def _require_ready(self) -> None:
        if not self.ready:
            raise NotLoaded(
                "Guard.check called on a Guard whose models are not loaded: call guard.load() first "
                "(Guard.from_file(path).load()), and do not check after guard.unload()"
            )

    def check_each(
        self, items: Sequence[CheckInput], times: StageTimes | None = None
    ) -> list[Decision | InterlockError]:
        """Decide independent requests together; a malformed one gets its error, the others decide.

        This is the micro-batcher's entry point: requests from different calls
        share one run of every monitor, and one bad request fails only itself.
        """
        self._require_ready()
        out: list[Decision | InterlockError] = list(items)  # type: ignore[arg-type]
        good: list[int] = []
        validated = []
        start = time_ns() if times is not None else 0
        for i, item in enumerate(items):
            try:
                validated.append(self.validate([item])[0])
                good.append(i)
            except InterlockError as e:
                out[i] = e
        if times is not None:
            times.add("validate", start)
        if good:
            for i, d in zip(good, self._decide([items[i] for i in good], validated, times), strict=True):
                out[i] = d
        return out

    def _decide(
        self,
        items: Sequence[CheckInput],
        validated: list[tuple[AgentRuntime, np.ndarray, np.ndarray]],
        times: StageTimes | None = None,
    ) -> list[Decision]:
        if len(items) == 1:
            rt, obs, act = validated[0]
            return rt.decide(items, obs[None], act[None], times)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, (rt, _, _) in enumerate(validated):
            groups[id(rt)].append(i)
        result: list[Decision | None] = [None] * len(items)
        for idx in groups.values():
            rt = validated[idx[0]][0]
            obs = np.stack([validated[i][1] for i in idx])
            act = np.stack([validated[i][2] for i in idx])
            for i, d in zip(idx, rt.decide([items[i] for i in idx], obs, act, times), strict=True):
                result[i] = d
        return result  # type: ignore[return-value]
