"""The decision policy: ordered rules from signals to verdicts, compiled once at config load."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from interlock.batch import cel_activation
from interlock.config import DecisionRule, PolicyConfig
from interlock.episodes import NEVER_SHIFTED
from interlock.errors import ConfigError
from interlock.policies.cel import CelEvalError, CelPredicate, make_env
from interlock.policies.vectorized import Columns, VectorizedCondition, compile_vectorized

_EPISODE_REF = re.compile(r"\bepisode\s*\.\s*\w+")
_SIGNAL_REF = re.compile(r"\b(?:signals|tripped)\s*\.\s*(\w+)\s*\.\s*(\w+)")
_MISSING_KEY = re.compile(r'Key not found in map : "([^"]*)"')


@dataclass(frozen=True)
class CompiledRule:
    name: str
    verdict: str
    fallback: str | None
    reason: str
    predicate: CelPredicate
    #: The same condition over a whole batch (None: row by row through CEL).
    vectorized: VectorizedCondition | None = None
    #: ``hold_while``: while it holds, the rule keeps an episode it decided the step before.
    hold: CelPredicate | None = None
    #: ``hold_while`` over a whole batch (None: row by row through CEL, or no hold).
    hold_vectorized: VectorizedCondition | None = None


@dataclass(frozen=True)
class RuleOutcome:
    """What the policy decided for one row: the rule that fired (None: the default) or an error."""

    rule: CompiledRule | None
    verdict: str
    error: str | None = None


class DecisionPolicy:
    """The first rule whose ``when`` holds decides; otherwise ``default``.

    Args:
        config: The agent's ``policy:`` section.
        discrete_action: Declares ``action`` as int (True) or list(double) in CEL.
        signal_names: Every "<monitor>.<signal>" the agent's monitors produce; rules
            that read any other signal are rejected at load.
        where: Config location for messages.
        obs_size: Elements of one flattened observation; given, simple rules are also compiled
            to a vectorized form (:mod:`interlock.policies.vectorized`) for :meth:`decide_batch`.
        episode: The agent keeps episode state (a ``transition`` monitor), so rules may read
            ``episode.shifted``, ``episode.steps_since_shift`` and ``episode.steps``.
    """

    def __init__(
        self,
        config: PolicyConfig,
        discrete_action: bool,
        signal_names: Sequence[str],
        where: str,
        obs_size: int | None = None,
        episode: bool = False,
    ) -> None:
        env = make_env(discrete_action, with_signals=True)
        self.default = config.default
        self.episode = episode
        self.rules = [self._compile(env, r, f"{where}.rules[{i}]") for i, r in enumerate(config.rules)]
        if not episode:
            for predicate in [p for r in self.rules for p in (r.predicate, r.hold) if p is not None]:
                found = _EPISODE_REF.search(predicate.source)
                if found:
                    raise ConfigError(
                        f"{predicate.where}: reads {found.group(0)}, but episode state is kept by a "
                        "transition monitor and this agent has none; add a monitor of kind: transition "
                        "(docs/shift.md)"
                    )
        self._check_signal_references(signal_names)
        if obs_size is not None:

            def vectorized(predicate: CelPredicate | None) -> VectorizedCondition | None:
                if predicate is None:
                    return None
                return compile_vectorized(
                    predicate.source, predicate, obs_size, discrete_action, signal_names, episode=episode
                )

            self.rules = [
                replace(r, vectorized=vectorized(r.predicate), hold_vectorized=vectorized(r.hold))
                for r in self.rules
            ]
        #: Some rule has ``hold_while``: the engine must remember which rule decided each episode's step.
        self.holds = any(r.hold is not None for r in self.rules)
        self._fired = [RuleOutcome(r, r.verdict) for r in self.rules]
        self._default = RuleOutcome(None, self.default)

    @staticmethod
    def _compile(env, rule: DecisionRule, where: str) -> CompiledRule:
        predicate = CelPredicate(env, rule.when, f"{where}.when")
        hold = CelPredicate(env, rule.hold_while, f"{where}.hold_while") if rule.hold_while else None
        reason = rule.reason or f"rule '{rule.name}' fired: {rule.when}"
        return CompiledRule(rule.name, rule.verdict, rule.fallback, reason, predicate, hold=hold)

    def _check_signal_references(self, signal_names: Sequence[str]) -> None:
        """Evaluate each rule once on neutral inputs so a misspelt signal is a load-time error."""
        names = list(signal_names)
        probe = cel_activation(
            obs=[],
            action=0,
            labels={},
            step=0,
            agent_id="",
            episode_id="",
            signal_names=names,
            values=[0.0] * len(names),
            tripped=[False] * len(names),
            episode={"shifted": False, "steps_since_shift": NEVER_SHIFTED, "steps": 0}
            if self.episode
            else None,
        )
        known = ", ".join(signal_names) or "none"
        produced = set(signal_names)
        predicates = [p for r in self.rules for p in (r.predicate, r.hold) if p is not None]
        for predicate in predicates:
            where, source = predicate.where, predicate.source
            # Static pass: every `signals.m.s` / `tripped.m.s` must exist, even behind a short circuit.
            for m, s in _SIGNAL_REF.findall(source):
                if f"{m}.{s}" not in produced:
                    raise ConfigError(
                        f"{where}: reads a signal no monitor produces ({m}.{s}); available signals: {known}"
                    )
            try:
                predicate(probe)
            except CelEvalError as e:
                match = _MISSING_KEY.search(str(e))
                key = match.group(1) if match else None
                # The probe has no labels, so labels['x'] fails here and is not a signal problem.
                if key is not None and not re.search(rf"labels\s*\[\s*['\"]{re.escape(key)}['\"]", source):
                    raise ConfigError(
                        f"{where}: reads a signal no monitor produces ({key}); available signals: {known}"
                    ) from None
                # Other runtime errors (e.g. obs[3] on the empty probe) depend on the input: fine.

    def decide(self, activation: Mapping[str, object], held: int = -1) -> RuleOutcome:
        """Evaluate the rules in order for one row. A rule that errors stops evaluation (fail closed).

        ``held``: the index of the rule that decided this episode's previous step (-1: none); that
        rule also fires while its ``hold_while`` holds.
        """
        for k, rule in enumerate(self.rules):
            try:
                fired = rule.predicate(activation) or (
                    k == held and rule.hold is not None and rule.hold(activation)
                )
            except CelEvalError as e:
                return RuleOutcome(rule, "error", error=str(e))
            if fired:
                return RuleOutcome(rule, rule.verdict)
        return RuleOutcome(None, self.default)

    def decide_batch(
        self, cols: Columns, activation: Callable[[int], Mapping[str, object]]
    ) -> list[RuleOutcome]:
        """:meth:`decide` for every row of a batch, with the same results.

        Vectorized rules are evaluated once over ``cols``; the others row by row
        through CEL on ``activation(i)``, only for rows no earlier rule decided.
        """
        n = cols.n
        masks = [r.vectorized(cols) if r.vectorized is not None else None for r in self.rules]
        vector_masks = [m for m in masks if m is not None]
        if len(vector_masks) == len(masks):
            if not vector_masks:
                return [self._default] * n
            stacked = np.stack(vector_masks)  # [rules, n]
            first: list[int] = stacked.argmax(axis=0).tolist()
            fired: list[bool] = np.any(stacked, axis=0).tolist()
            return [self._fired[first[i]] if fired[i] else self._default for i in range(n)]
        out: list[RuleOutcome] = []
        for i in range(n):
            act = None
            outcome = self._default
            for k, rule in enumerate(self.rules):
                m = masks[k]
                if m is not None:
                    hit = bool(m[i])
                else:
                    if act is None:
                        act = activation(i)
                    try:
                        hit = rule.predicate(act)
                    except CelEvalError as e:
                        outcome = RuleOutcome(rule, "error", error=str(e))
                        break
                if hit:
                    outcome = self._fired[k]
                    break
            out.append(outcome)
        return out
