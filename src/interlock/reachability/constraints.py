"""CEL conditions over observations, evaluated on whole batches of states.

Rollouts check ``K * batch`` states per step, too many for one CEL evaluation per
row on the request path. Conditions in a simple, common form are compiled to
numpy: ``&&`` / ``||`` of comparisons between affine expressions of ``obs[i]``,
``math.abs(...)`` and number literals (``math.abs(obs[2]) < 0.2``,
``obs[0] + 0.5 * obs[1] <= 1.0``). Anything else is evaluated row by row with
CEL. Every condition is first compiled and type-checked by CEL
(:mod:`interlock.policies.cel`), which stays the definition of its meaning: the
numpy form is checked against CEL on probe states at load and dropped if they
ever disagree.

Conditions see only ``obs`` (list of double, the flattened state).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import numpy as np

from interlock.errors import ConfigError
from interlock.policies.cel import CelEvalError, CelPredicate, T, cel, ext_math

log = logging.getLogger(__name__)

Vec = Callable[[np.ndarray], np.ndarray]

_TOKEN = re.compile(
    r"\s*(?:(\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)|(\d+)|"
    r"(math\.abs|obs)|(<=|>=|&&|\|\||[<>()\[\]+\-*/]))"
)


def obs_env():
    """A CEL environment with the single variable ``obs`` (list of double) and the math extension."""
    return cel.NewEnv(variables={"obs": T.List(T.DOUBLE)}, extensions=[ext_math.ExtMath()])


class _Unsupported(Exception):
    pass


class _Parser:
    """Recursive descent over the supported subset; builds numpy closures over ``[N, obs_dim]``."""

    def __init__(self, text: str, obs_dim: int, where: str) -> None:
        self.toks: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise _Unsupported(text[pos:])
            kind = ("float", "int", "name", "op")[next(i for i in range(4) if m.group(i + 1) is not None)]
            self.toks.append((kind, m.group(m.lastindex or 0)))
            pos = m.end()
        self.i = 0
        self.obs_dim = obs_dim
        self.where = where

    def peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise _Unsupported("end")
        tok = self.toks[self.i]
        if want is not None and tok[1] != want:
            raise _Unsupported(tok[1])
        self.i += 1
        return tok

    def parse(self) -> Vec:
        fn = self.bool_or()
        if self.i != len(self.toks):
            raise _Unsupported(self.peek() or "")
        return fn

    def bool_or(self) -> Vec:
        parts = [self.bool_and()]
        while self.peek() == "||":
            self.take()
            parts.append(self.bool_and())
        if len(parts) == 1:
            return parts[0]
        return lambda x: np.logical_or.reduce([p(x) for p in parts])

    def bool_and(self) -> Vec:
        parts = [self.comparison()]
        while self.peek() == "&&":
            self.take()
            parts.append(self.comparison())
        if len(parts) == 1:
            return parts[0]
        return lambda x: np.logical_and.reduce([p(x) for p in parts])

    def comparison(self) -> Vec:
        start = self.i
        try:
            lhs = self.arith()
            op = self.take()[1]
            if op not in ("<", "<=", ">", ">="):
                raise _Unsupported(op)
            rhs = self.arith()
        except _Unsupported:
            self.i = start
            self.take("(")
            inner = self.bool_or()
            self.take(")")
            return inner
        fn = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[op]
        return lambda x: fn(lhs(x), rhs(x))

    def arith(self) -> Vec:
        fn = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            rhs = self.term()
            fn = (
                (lambda a, b: lambda x: a(x) + b(x))(fn, rhs)
                if op == "+"
                else (lambda a, b: lambda x: a(x) - b(x))(fn, rhs)
            )
        return fn

    def term(self) -> Vec:
        fn = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()[1]
            rhs = self.unary()
            fn = (
                (lambda a, b: lambda x: a(x) * b(x))(fn, rhs)
                if op == "*"
                else (lambda a, b: lambda x: a(x) / b(x))(fn, rhs)
            )
        return fn

    def unary(self) -> Vec:
        if self.peek() == "-":
            self.take()
            inner = self.unary()
            return lambda x: -inner(x)
        return self.atom()

    def atom(self) -> Vec:
        kind, tok = self.take()
        if kind in ("float", "int"):
            value = float(tok)
            return lambda x: np.full(len(x), value)
        if tok == "obs":
            self.take("[")
            kind, idx = self.take()
            if kind != "int":
                raise _Unsupported(idx)
            self.take("]")
            i = int(idx)
            if i >= self.obs_dim:
                raise ConfigError(
                    f"{self.where}: reads obs[{i}], but observations have {self.obs_dim} elements"
                )
            return lambda x: x[:, i]
        if tok == "math.abs":
            self.take("(")
            inner = self.arith()
            self.take(")")
            return lambda x: np.abs(inner(x))
        if tok == "(":
            inner = self.arith()
            self.take(")")
            return inner
        raise _Unsupported(tok)


class BatchedCondition:
    """One CEL condition over ``obs``, evaluated on ``[N, obs_dim]`` states.

    Args:
        source: The CEL text.
        obs_dim: Length of the flattened observation.
        where: Config location for messages.

    Raises:
        ConfigError: the expression does not compile, is not a condition, or reads an
            element past the observation's end.
    """

    PROBES = 256

    def __init__(self, source: str, obs_dim: int, where: str) -> None:
        self.source = source
        self.where = where
        self.obs_dim = obs_dim
        self._cel = CelPredicate(obs_env(), source, where)
        self.vectorized: Vec | None = None
        try:
            fast = _Parser(source, obs_dim, where).parse()
        except _Unsupported:
            fast = None
        if fast is not None and self._agrees(fast):
            self.vectorized = fast

    def _agrees(self, fast: Vec) -> bool:
        rng = np.random.default_rng(0)
        scales = np.geomspace(1e-3, 1e3, 7)
        probes = rng.standard_normal((self.PROBES, self.obs_dim)) * rng.choice(scales, (self.PROBES, 1))
        probes[:4] = 0.0
        probes[4] = np.nan
        with np.errstate(all="ignore"):
            got = np.asarray(fast(probes), dtype=bool)
        want = self._rows(probes)
        if not np.array_equal(got, want):
            log.warning(
                "%s: the vectorised form of %r disagrees with CEL; evaluating row by row",
                self.where,
                self.source,
            )
            return False
        return True

    def _rows(self, states: np.ndarray) -> np.ndarray:
        out = np.zeros(len(states), dtype=bool)
        for i, row in enumerate(states.tolist()):
            try:
                out[i] = self._cel({"obs": row})
            except CelEvalError:
                out[i] = False  # cannot tell: count the condition as broken (fail closed)
        return out

    def __call__(self, states: np.ndarray) -> np.ndarray:
        """``[N]`` bool: where the condition holds (NaN states and evaluation errors: False)."""
        x = np.asarray(states, dtype=np.float64).reshape(len(states), -1)
        if self.vectorized is None:
            return self._rows(x)
        with np.errstate(all="ignore"):
            return np.asarray(self.vectorized(x), dtype=bool)
