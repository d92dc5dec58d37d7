"""CEL (Common Expression Language) for rules, through Google's cel-cpp binding.

Why this binding: ``benchmarks/cel_bindings.py`` measured cel-expr-python at
about 5.5 us per evaluation against 19 us (common-expression-language) and 390
us (cel-python), and it type-checks expressions at compile time, so a typo in a
variable name or a type mismatch is a config error at load, not a runtime
surprise. User text is only ever compiled by CEL, never by Python.

Variables every expression sees:

=============  ===============================  =====================================
name           CEL type                         meaning
=============  ===============================  =====================================
obs            list(double)                     the observation, flattened (C order)
action         int | list(double)               discrete index, or the flattened box action
signals        map(string, map(string,double))  ``signals.<monitor>.<signal>``
tripped        map(string, map(string,bool))    ``tripped.<monitor>.<signal>``
labels         map(string, string)              the request's labels
step           int                              the request's step
agent_id       string
episode_id     string
episode.*      bool / int                       rules only, with a ``transition`` monitor:
                                                ``episode.shifted`` (bool),
                                                ``episode.steps_since_shift`` (int),
                                                ``episode.steps`` (int); docs/shift.md
=============  ===============================  =====================================

The ``math`` and ``strings`` extensions are on (``math.abs``, ``math.greatest`` ...).
Numbers are typed: write ``obs[0] > 0.5``, not ``obs[0] > 1`` (use ``1.0``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_math, ext_strings

from interlock.episodes import EPISODE_FIELDS
from interlock.errors import ConfigError

T = cel.Type

#: CEL types of the ``episode.<field>`` variables (declared as qualified names, so a misspelt
#: field is an "undeclared reference" at load and each field keeps its own type).
_EPISODE_TYPES = {"bool": T.BOOL, "int": T.INT}


class CelEvalError(RuntimeError):
    """A compiled expression failed at run time (missing key, index out of range ...)."""


def make_env(discrete_action: bool, with_signals: bool = True) -> Any:
    """A CEL environment declaring Interlock's variables for one agent."""
    variables = {
        "obs": T.List(T.DOUBLE),
        "action": T.INT if discrete_action else T.List(T.DOUBLE),
        "labels": T.Map(T.STRING, T.STRING),
        "step": T.INT,
        "agent_id": T.STRING,
        "episode_id": T.STRING,
    }
    if with_signals:
        variables["signals"] = T.Map(T.STRING, T.Map(T.STRING, T.DOUBLE))
        variables["tripped"] = T.Map(T.STRING, T.Map(T.STRING, T.BOOL))
        for name, kind in EPISODE_FIELDS.items():
            variables[f"episode.{name}"] = _EPISODE_TYPES[kind]
    return cel.NewEnv(variables=variables, extensions=[ext_math.ExtMath(), ext_strings.ExtStrings()])


class CelPredicate:
    """A boolean CEL expression compiled once.

    Args:
        env: From :func:`make_env`.
        source: The expression text.
        where: Config location for error messages, e.g. ``agents[cartpole].policy.rules[0].when``.

    Raises:
        ConfigError: the expression does not parse, type-check, or return bool.
    """

    def __init__(self, env: Any, source: str, where: str) -> None:
        self.source = source
        self.where = where
        try:
            self._expr = env.compile(source)
        except RuntimeError as e:
            msg = str(e).replace("INVALID_ARGUMENT: ", "").replace(" [INVALID_ARGUMENT]", "")
            raise ConfigError(f"{where}: CEL expression does not compile:\n{msg}") from None
        rtype = self._expr.return_type().name()
        if rtype not in ("bool", "BOOL", "dyn", "DYN"):
            raise ConfigError(
                f"{where}: CEL expression must be a condition (bool), but returns {rtype}: {source}"
            )

    def __call__(self, activation: Mapping[str, Any]) -> bool:
        """Evaluate; raises :class:`CelEvalError` on a runtime error (callers fail closed)."""
        value = self._expr.eval(data=activation)
        result = value.value()
        if isinstance(result, bool):
            return result
        raise CelEvalError(f"{self.where}: {result} (expression: {self.source})")
