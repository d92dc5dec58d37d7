"""The decision policy: ordered rules from signals to verdicts, compiled once at config load."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from interlock.config import DecisionRule, PolicyConfig
from interlock.errors import ConfigError
from interlock.policies.cel import CelEvalError, CelPredicate, make_env


@dataclass(frozen=True)
class CompiledRule:
    name: str
    verdict: str
    fallback: str | None
    reason: str
    predicate: CelPredicate


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
    """

    def __init__(
        self, config: PolicyConfig, discrete_action: bool, signal_names: Sequence[str], where: str
    ) -> None:
        env = make_env(discrete_action, with_signals=True)
        self.default = config.default
        self.rules = [self._compile(env, r, f"{where}.rules[{i}]") for i, r in enumerate(config.rules)]
        self._check_signal_references(signal_names)

    @staticmethod
    def _compile(env, rule: DecisionRule, where: str) -> CompiledRule:
        predicate = CelPredicate(env, rule.when, f"{where}.when")
        reason = rule.reason or f"rule '{rule.name}' fired: {rule.when}"
        return CompiledRule(rule.name, rule.verdict, rule.fallback, reason, predicate)

    def _check_signal_references(self, signal_names: Sequence[str]) -> None:
        """Evaluate each rule once on neutral inputs so a misspelt signal is a load-time error."""
        signals: dict[str, dict[str, float]] = {}
        for full in signal_names:
            monitor, _, sig = full.partition(".")
            signals.setdefault(monitor, {})[sig] = 0.0
        tripped = {m: dict.fromkeys(s, False) for m, s in signals.items()}
        probe = {
            "obs": [],
            "action": 0,
            "labels": {},
            "step": 0,
            "agent_id": "",
            "episode_id": "",
            "signals": signals,
            "tripped": tripped,
        }
        known = ", ".join(signal_names) or "none"
        for rule in self.rules:
            try:
                rule.predicate(probe)
            except CelEvalError as e:
                text = str(e)
                if "Key not found" in text:
                    missing = text.split(":", 1)[1].strip()
                    raise ConfigError(
                        f"{rule.predicate.where}: reads a signal no monitor produces ({missing}); "
                        f"available signals: {known}"
                    ) from None
                # Other runtime errors (e.g. obs[3] on the empty probe) depend on the input: fine.

    def decide(self, activation: Mapping[str, object]) -> RuleOutcome:
        """Evaluate the rules in order for one row. A rule that errors stops evaluation (fail closed)."""
        for rule in self.rules:
            try:
                fired = rule.predicate(activation)
            except CelEvalError as e:
                return RuleOutcome(rule, "error", error=str(e))
            if fired:
                return RuleOutcome(rule, rule.verdict)
        return RuleOutcome(None, self.default)
