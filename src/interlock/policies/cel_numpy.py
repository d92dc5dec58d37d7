"""One compiler from a small subset of CEL to numpy, for every condition evaluated over a batch.

Policy rules and the ``rules`` monitor (:mod:`interlock.policies.vectorized`) and the
reachability constraints (:mod:`interlock.reachability.constraints`) evaluate the same
kind of condition on many rows at once: comparisons of observation elements and
signals joined by ``&&``/``||`` (``math.abs(obs[2]) < 0.1``,
``tripped.limits.tilt || signals.uncertainty.q_std > 0.6``). CEL costs a few
microseconds per row; numpy does a whole batch in one pass. They differ only in what
names are in scope, which :class:`Scope` states.

The compiled subset, exactly:

* literals: ``true``, ``false``, doubles (``0.5``, ``1e-3``), ints (``1``, below 2**53);
* ``obs[i]`` with a constant index (double);
* when in scope: ``action`` (int, discrete agents), ``step`` (int),
  ``signals.<m>.<s>`` (double) and ``tripped.<m>.<s>`` (bool) for known signals,
  ``episode.shifted`` (bool), ``episode.steps_since_shift`` and ``episode.steps`` (int);
* ``!``, unary ``-`` and ``+ - * /`` on doubles, ``< <= > >= == !=`` (bools only with
  ``==``/``!=``, no chains), ``&&``, ``||``, parentheses, ``math.abs(x)`` on doubles.

Anything else (strings, labels, lists, macros, int arithmetic, an index past the end, an
unknown signal) is not compiled and keeps the per-row CEL path, so a CEL runtime error
still fails its row closed. None of the compiled forms can raise at run time in CEL, so
the answers match CEL row for row: NaN compares false except with ``!=``, a double
divided by zero is inf or NaN. CEL stays the definition: every condition is compiled and
type-checked by CEL first, and :func:`compile_checked` evaluates the numpy form and CEL
on probe rows (NaN and infinities among them) and keeps the numpy form only if they
agree on every one.

Each compiled condition also has a scalar form (:meth:`NumpyCondition.scalar`) over one row of
plain Python values (:class:`Row`): the same tree of operations on Python floats, ints and
bools, which give IEEE double results bit for bit as numpy's float64 does (ints compared with
doubles are converted to double first, as numpy does; a division by zero gives numpy's inf or
NaN). At one row it costs a tenth of the numpy form (numpy's fixed cost per call is about a
microsecond); it is checked against CEL on the same probe rows and dropped if they disagree.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from interlock.episodes import EPISODE_FIELDS, NEVER_SHIFTED
from interlock.errors import ConfigError

log = logging.getLogger(__name__)

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.\d*(?:[eE][+-]?\d+)?|\d*\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)"
    r"|(?P<op>&&|\|\||<=|>=|==|!=|[<>!()\[\].+\-*/])|(?P<id>[A-Za-z_][A-Za-z0-9_]*))"
)

_CMP = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}

_CMP_SCALAR: dict[str, _ScalarOp] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def _divide(a: float, b: float) -> float:
    """``a / b`` on doubles as numpy computes it (inf or NaN for a zero divisor, where Python raises)."""
    if b:
        return a / b
    with np.errstate(all="ignore"):
        return float(np.divide(np.float64(a), np.float64(b)))


# Prefix operators: the operand type each takes (and returns), its numpy form and its scalar form.
_UNARY = {"!": ("bool", np.logical_not, operator.not_), "-": ("double", np.negative, operator.neg)}
_LOGIC_SCALAR: dict[str, _ScalarOp] = {"||": lambda a, b: a or b, "&&": lambda a, b: a and b}
_ARITH_SCALAR: dict[str, _ScalarOp] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _divide,
}


_ScalarOp = Callable[[Any, Any], Any]


class Unsupported(Exception):
    """The expression is outside the compiled subset (it keeps the CEL path)."""


@dataclass
class Columns:
    """A batch as arrays, as compiled conditions read it.

    Attributes:
        n: Rows in the batch.
        obs: ``[n, obs_size]`` float64 (flattened observations or states).
        action: ``[n]`` int64 for discrete agents, else None.
        step: ``[n]`` int64, or None where ``step`` is not in scope.
        signals: ``"<m>.<s>"`` -> ``[n]`` float64.
        tripped: ``"<m>.<s>"`` -> ``[n]`` bool.
        episode: ``"<field>"`` -> ``[n]`` (``shifted`` bool, the others int64), when episode facts
            are in scope (:mod:`interlock.episodes`).
    """

    n: int
    obs: np.ndarray
    action: np.ndarray | None = None
    step: np.ndarray | None = None
    signals: Mapping[str, np.ndarray] = field(default_factory=dict)
    tripped: Mapping[str, np.ndarray] = field(default_factory=dict)
    episode: Mapping[str, np.ndarray] | None = None

    def row(self, i: int) -> Row:
        """Row ``i`` as plain Python values (what the scalar forms read)."""
        return Row(
            obs=self.obs[i].tolist(),
            action=int(self.action[i]) if self.action is not None else None,
            step=int(self.step[i]) if self.step is not None else None,
            signals={k: float(v[i]) for k, v in self.signals.items()},
            tripped={k: bool(v[i]) for k, v in self.tripped.items()},
            episode={k: v[i].item() for k, v in self.episode.items()} if self.episode is not None else None,
        )


@dataclass(frozen=True)
class Scope:
    """The names a compiled condition may read; any other name keeps the CEL path.

    Attributes:
        obs_size: Elements of one flattened observation (``obs[0]`` .. ``obs[obs_size - 1]``).
        action: ``action`` is an int (discrete agents).
        step: ``step`` is in scope.
        signals: Known ``"<m>.<s>"`` names for ``signals.m.s`` / ``tripped.m.s``, in a fixed
            order (None: signals are not in scope).
        episode: ``episode.<field>`` is in scope (the agent keeps episode state).
        where: Config location. Given, ``obs[i]`` past the end is a :class:`ConfigError` at
            load naming it (states have a fixed size, so it can only be a mistake); without
            it, the condition keeps the CEL path, which fails such rows closed.
    """

    obs_size: int
    action: bool = False
    step: bool = False
    signals: tuple[str, ...] | None = None
    episode: bool = False
    where: str | None = None


@dataclass(slots=True)
class Row:
    """One row as a compiled condition's scalar form reads it (plain Python values, as in CEL).

    Attributes:
        obs: ``[obs_size]`` floats (the flattened observation as float64).
        action: The action (int) for discrete agents, else None.
        step: The step number, or None where ``step`` is not in scope.
        signals: ``"<m>.<s>"`` -> float.
        tripped: ``"<m>.<s>"`` -> bool.
        episode: ``"<field>"`` -> the episode fact (bool or int), when in scope.
    """

    obs: Sequence[float]
    action: int | None = None
    step: int | None = None
    signals: Mapping[str, float] = field(default_factory=dict)
    tripped: Mapping[str, bool] = field(default_factory=dict)
    episode: Mapping[str, Any] | None = None


# A compiled node: (type, fn(columns) -> array [n] or scalar, fn(row) -> Python value); type is
# "bool", "double" or "int".
_Node = tuple[str, Callable[[Columns], Any], Callable[[Row], Any]]
# The scalar form of a binary operator (operator.add, ...).
_Scalar = Callable[[Any, Any], Any]
# A numpy ufunc combining two operands (np.add, np.logical_and, ...).
_Binary = Callable[[Any, Any], Any]


class _Parser:
    """Recursive descent over the subset, building numpy closures over :class:`Columns`."""

    def __init__(self, text: str, scope: Scope) -> None:
        self.toks: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos or m.lastgroup is None:
                raise Unsupported(f"unsupported text at {pos}")
            self.toks.append((m.lastgroup, m.group(m.lastgroup)))
            pos = m.end()
        self.i = 0
        self.scope = scope
        self.signals = set(scope.signals) if scope.signals is not None else None

    def peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise Unsupported("unexpected end")
        tok = self.toks[self.i]
        if want is not None and tok[1] != want:
            raise Unsupported(f"expected {want}")
        self.i += 1
        return tok

    def parse(self) -> _Node:
        node = self.or_()
        if self.i != len(self.toks):
            raise Unsupported("trailing tokens")
        return node

    def chain(
        self,
        operand: Callable[[], _Node],
        ops: Mapping[str, _Binary],
        scalar_ops: Mapping[str, _ScalarOp],
        combine: Callable[[_Node, _Node, _Binary, _ScalarOp], _Node],
    ) -> _Node:
        """A left-associative run ``operand (op operand)*`` of one precedence level."""
        node = operand()
        while self.peek() in ops:
            op = self.take()[1]
            node = combine(node, operand(), ops[op], scalar_ops[op])
        return node

    def or_(self) -> _Node:
        return self.chain(self.and_, {"||": np.logical_or}, _LOGIC_SCALAR, _logic)

    def and_(self) -> _Node:
        return self.chain(self.cmp, {"&&": np.logical_and}, _LOGIC_SCALAR, _logic)

    def cmp(self) -> _Node:
        node = self.add()
        op = self.peek()
        if op in _CMP:
            self.take()
            right = self.add()
            if (node[0] == "bool" or right[0] == "bool") and (op not in ("==", "!=") or node[0] != right[0]):
                raise Unsupported("bool comparison")
            fn, lf, rf = _CMP[op], node[1], right[1]
            sfn, ls, rs = _CMP_SCALAR[op], _as_double(node, right[0]), _as_double(right, node[0])
            node = ("bool", lambda c: fn(lf(c), rf(c)), lambda r: sfn(ls(r), rs(r)))
            if self.peek() in _CMP:
                raise Unsupported("chained comparison")
        return node

    def add(self) -> _Node:
        return self.chain(self.mul, {"+": np.add, "-": np.subtract}, _ARITH_SCALAR, _arith)

    def mul(self) -> _Node:
        return self.chain(self.unary, {"*": np.multiply, "/": np.divide}, _ARITH_SCALAR, _arith)

    def unary(self) -> _Node:
        op = self.peek()
        if op in _UNARY:
            self.take()
            want, fn, sfn = _UNARY[op]
            t, f, s = self.unary()
            if t != want:
                raise Unsupported(f"{op} on a {t}")
            return t, lambda c: fn(f(c)), lambda r: sfn(s(r))
        return self.primary()

    def primary(self) -> _Node:
        kind, text = self.take()
        if kind == "num":
            if re.fullmatch(r"\d+", text):
                v = int(text)
                if v >= 2**53:
                    raise Unsupported("large int")
                return "int", lambda c: v, lambda r: v
            d = float(text)
            return "double", lambda c: d, lambda r: d
        if text == "(":
            node = self.or_()
            self.take(")")
            return node
        if text in ("true", "false"):
            b = text == "true"
            return "bool", lambda c: b, lambda r: b
        if text == "math":
            self.take(".")
            if self.take()[1] != "abs":
                raise Unsupported("math function")
            self.take("(")
            t, f, s = self.or_()
            self.take(")")
            if t != "double":
                raise Unsupported("math.abs of a non-double")
            return "double", lambda c: np.abs(f(c)), lambda r: abs(s(r))
        if text in ("signals", "tripped"):
            return self.signal(text)
        if text == "obs":
            return self.obs()
        if text == "action" and self.scope.action and self.peek() != "[":
            return "int", lambda c: c.action, lambda r: r.action
        if text == "step" and self.scope.step:
            return "int", lambda c: c.step, lambda r: r.step
        if text == "episode" and self.scope.episode and self.peek() == ".":
            self.take(".")
            fact = self.take()[1]
            fact_type = EPISODE_FIELDS.get(fact)
            if fact_type is None:
                raise Unsupported(f"episode.{fact}")
            return fact_type, lambda c: c.episode[fact], lambda r: r.episode[fact]
        raise Unsupported(f"identifier {text}")

    def signal(self, which: str) -> _Node:
        self.take(".")
        m = self.take()
        self.take(".")
        s = self.take()
        if m[0] != "id" or s[0] != "id":
            raise Unsupported("signal name")
        key = f"{m[1]}.{s[1]}"
        if self.signals is None or key not in self.signals:
            raise Unsupported(f"unknown signal {key}")
        if which == "signals":
            return "double", lambda c: c.signals[key], lambda r: r.signals[key]
        return "bool", lambda c: c.tripped[key], lambda r: r.tripped[key]

    def obs(self) -> _Node:
        self.take("[")
        kind, idx = self.take()
        self.take("]")
        if kind != "num" or not idx.isdigit():
            raise Unsupported("obs index")
        j = int(idx)
        size, where = self.scope.obs_size, self.scope.where
        if j >= size:
            if where is not None:
                raise ConfigError(f"{where}: reads obs[{j}], but observations have {size} elements")
            raise Unsupported("obs index past the end")
        return "double", lambda c: c.obs[:, j], lambda r: r.obs[j]


def _as_double(node: _Node, other_type: str) -> Callable[[Row], Any]:
    """The scalar form of ``node`` as numpy compares it with an ``other_type`` operand: an int
    against a double is converted to double first (Python would compare them exactly)."""
    s = node[2]
    if node[0] == "int" and other_type == "double":
        return lambda r: float(s(r))
    return s


def _logic(a: _Node, b: _Node, fn: _Binary, sfn: _ScalarOp) -> _Node:
    if a[0] != "bool" or b[0] != "bool":
        raise Unsupported("logic on non-bools")
    fa, fb, sa, sb = a[1], b[1], a[2], b[2]
    # No compiled form can raise, so short-circuiting (Python's and/or) gives numpy's answer.
    return "bool", lambda c: fn(fa(c), fb(c)), lambda r: bool(sfn(sa(r), sb(r)))


def _arith(a: _Node, b: _Node, fn: _Binary, sfn: _ScalarOp) -> _Node:
    if a[0] != "double" or b[0] != "double":
        raise Unsupported("arithmetic on non-doubles")  # CEL int arithmetic can overflow / truncates
    fa, fb, sa, sb = a[1], b[1], a[2], b[2]
    return "double", lambda c: fn(fa(c), fb(c)), lambda r: sfn(sa(r), sb(r))


class NumpyCondition:
    """A compiled condition: ``__call__(columns)`` -> ``[n]`` bool.

    ``scalar``: the same condition on one :class:`Row` -> bool (None when it disagreed with CEL
    on a probe row and only the numpy form is kept).
    """

    def __init__(
        self, source: str, fn: Callable[[Columns], Any], scalar: Callable[[Row], Any] | None = None
    ) -> None:
        self.source = source
        self._fn = fn
        self.scalar: Callable[[Row], Any] | None = scalar

    def __call__(self, cols: Columns) -> np.ndarray:
        with np.errstate(all="ignore"):
            return self.unguarded(cols)

    def unguarded(self, cols: Columns) -> np.ndarray:
        """``__call__`` for a caller that already holds ``np.errstate(all="ignore")`` (one context
        for several conditions: entering it costs about as much as evaluating one at batch 1)."""
        out = np.asarray(self._fn(cols), dtype=bool)
        return np.broadcast_to(out, (cols.n,)) if out.ndim == 0 else out


def compile_numpy(source: str, scope: Scope) -> NumpyCondition | None:
    """The numpy form of ``source``, or None when it is outside the subset or not a condition.

    Raises:
        ConfigError: ``scope.where`` is set and the condition reads ``obs[i]`` past the end.
    """
    try:
        kind, fn, scalar = _Parser(source, scope).parse()
    except Unsupported as e:
        log.debug("CEL condition %r stays on the CEL path: %s", source, e)
        return None
    return NumpyCondition(source, fn, scalar) if kind == "bool" else None


def probe_columns(scope: Scope, n: int, seed: int) -> Columns:
    """``n`` random rows for the names in ``scope``: doubles over many scales, NaN, infinities and zeros."""
    rng = np.random.default_rng(seed)
    special = np.array([0.0, -0.0, 1.0, -1.0, 0.5, np.nan, np.inf, -np.inf, 1e300, -1e-300])

    def col(size: int) -> np.ndarray:
        v = rng.standard_normal(size) * rng.choice([1e-3, 0.01, 0.1, 1.0, 10.0, 1e3], size)
        mask = rng.random(size) < 0.15
        v[mask] = rng.choice(special, mask.sum())
        return v

    signals = scope.signals or ()
    episode = None
    if scope.episode:
        shifted = rng.random(n) < 0.5
        since = np.where(shifted, rng.integers(0, 100, n), NEVER_SHIFTED).astype(np.int64)
        episode = {"shifted": shifted, "steps_since_shift": since, "steps": rng.integers(0, 1000, n)}
    return Columns(
        n=n,
        obs=np.stack([col(n) for _ in range(scope.obs_size)], axis=1) if scope.obs_size else np.zeros((n, 0)),
        action=rng.integers(0, 4, n).astype(np.int64) if scope.action else None,
        step=rng.integers(0, 1000, n).astype(np.int64) if scope.step else None,
        signals={k: col(n) for k in signals},
        tripped={k: rng.random(n) < 0.5 for k in signals},
        episode=episode,
    )


def agrees_with_cel(
    cond: NumpyCondition,
    cel_predicate: Callable[[Mapping[str, object]], bool],
    probes: Columns,
    rows: Sequence[Mapping[str, object]],
) -> bool:
    """Whether ``cond`` gives CEL's answer on every probe row (``rows[i]`` is row ``i`` of ``probes``).

    A CEL error on a probe also counts as disagreement: the subset promises none.
    """
    fast = cond(probes)
    for i, row in enumerate(rows):
        try:
            want = cel_predicate(row)
        except Exception:  # CEL errors on a probe: the subset promised none, so do not trust it
            return False
        if bool(fast[i]) != bool(want):
            where = getattr(cel_predicate, "where", "CEL condition")
            log.warning(
                "%s: the numpy form of %r disagrees with CEL on a probe row; evaluating it row by row",
                where,
                cond.source,
            )
            return False
    return True


def compile_checked(
    source: str,
    scope: Scope,
    cel_predicate: Callable[[Mapping[str, object]], bool],
    activations: Callable[[Columns], Sequence[Mapping[str, object]]],
    probes: int,
    seed: int,
) -> NumpyCondition | None:
    """:func:`compile_numpy`, kept only if it agrees with ``cel_predicate`` on ``probes`` random rows.

    Args:
        source: The CEL condition text (already compiled and type-checked by CEL).
        scope: The names it may read.
        cel_predicate: The CEL evaluation of the same condition (one activation -> bool).
        activations: The CEL activations of a :class:`Columns`, one a row.
        probes: Probe rows.
        seed: Seeds the probe rows.

    Raises:
        ConfigError: as :func:`compile_numpy`.
    """
    cond = compile_numpy(source, scope)
    if cond is None:
        return None
    cols = probe_columns(scope, probes, seed)
    rows = activations(cols)
    if not agrees_with_cel(cond, cel_predicate, cols, rows):
        return None
    if cond.scalar is not None:
        scalar = cond.scalar
        try:
            same = all(bool(scalar(cols.row(i))) == bool(cel_predicate(rows[i])) for i in range(cols.n))
        except Exception:  # cannot happen in the subset; if it does, the numpy form alone is kept
            same = False
        if not same:
            log.warning(
                "%s: the scalar form of %r disagrees with CEL on a probe row; one-row batches use "
                "the numpy form",
                getattr(cel_predicate, "where", "CEL condition"),
                source,
            )
            cond.scalar = None
    return cond
