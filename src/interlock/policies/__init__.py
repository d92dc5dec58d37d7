"""The decision policy: CEL rules from signals to verdicts and fallbacks."""

from interlock.policies.cel import CelEvalError, CelPredicate, make_env
from interlock.policies.decision import DecisionPolicy, RuleOutcome

__all__ = ["CelEvalError", "CelPredicate", "DecisionPolicy", "RuleOutcome", "make_env"]
