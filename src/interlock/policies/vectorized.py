"""A vectorized fast path for simple CEL conditions: one numpy evaluation per batch, not one CEL call per row.

Most rules are comparisons of signals and observation elements joined by
``&&``/``||`` (``tripped.limits.tilt || signals.uncertainty.q_std > 0.6``,
``math.abs(obs[2]) < 0.1``). Evaluating them row by row through CEL costs a
few microseconds per rule per row; over a batch, numpy does all rows at once.

Only a small, exactly understood subset is compiled:

* literals: ``true``, ``false``, doubles (``0.5``, ``1e-3``), ints (``1``);
* ``signals.<m>.<s>`` (double), ``tripped.<m>.<s>`` (bool) for known signals;
  ``obs[i]`` with a constant in-range index; ``action`` (discrete agents) and ``step`` (ints);
* ``!``, unary ``-``, ``+ - * /`` on doubles, ``< <= > >= == !=``, ``&&``, ``||``,
  parentheses, ``math.abs(x)`` on doubles.

Anything else (strings, labels, lists, macros, int arithmetic, an index out of
range, an unknown signal) is not compiled and keeps the CEL path, so a CEL
runtime error still fails the row closed. None of the compiled forms can raise
at run time in CEL, so results match row-by-row CEL exactly: NaN compares
false except ``!=``, double division by zero gives inf/NaN. As a safety net
:func:`compile_vectorized` also evaluates the compiled form and CEL on probe rows
(including NaN and infinities) and refuses the fast path on any disagreement.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.\d*(?:[eE][+-]?\d+)?|\d*\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)"
    r"|(?P<op>&&|\|\||<=|>=|==|!=|[<>!()\[\].+\-*/])|(?P<id>[A-Za-z_][A-Za-z0-9_]*))"
)


class _Unsupported(Exception):
    """The expression is outside the compiled subset (it keeps the CEL path)."""


@dataclass
class Columns:
    """The batch as arrays, as the compiled conditions read it.

    Attributes:
        n: Rows in the batch.
        obs: ``[n, obs_size]`` float64 (flattened observations).
        action: ``[n]`` int64 for discrete agents, else None.
        step: ``[n]`` int64.
        signals: ``"<m>.<s>"`` -> ``[n]`` float64.
        tripped: ``"<m>.<s>"`` -> ``[n]`` bool.
    """

    n: int
    obs: np.ndarray
    action: np.ndarray | None
    step: np.ndarray
    signals: Mapping[str, np.ndarray]
    tripped: Mapping[str, np.ndarray]


# A compiled node: (type, fn(columns) -> array [n] or scalar); type is "bool", "double" or "int".
_Node = tuple[str, Callable[[Columns], object]]


class _Parser:
    def __init__(self, text: str, obs_size: int, discrete: bool, signals: set[str] | None) -> None:
        self.toks: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise _Unsupported(f"unsupported text at {pos}")
            kind = m.lastgroup
            self.toks.append((kind, m.group(kind)))  # type: ignore[arg-type]
            pos = m.end()
        self.i = 0
        self.obs_size = obs_size
        self.discrete = discrete
        self.signals = signals

    def peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise _Unsupported("unexpected end")
        tok = self.toks[self.i]
        if want is not None and tok[1] != want:
            raise _Unsupported(f"expected {want}")
        self.i += 1
        return tok

    def parse(self) -> _Node:
        node = self.or_()
        if self.i != len(self.toks):
            raise _Unsupported("trailing tokens")
        return node

    def or_(self) -> _Node:
        node = self.and_()
        while self.peek() == "||":
            self.take()
            node = _logic(node, self.and_(), np.logical_or)
        return node

    def and_(self) -> _Node:
        node = self.cmp()
        while self.peek() == "&&":
            self.take()
            node = _logic(node, self.cmp(), np.logical_and)
        return node

    def cmp(self) -> _Node:
        node = self.add()
        op = self.peek()
        if op in _CMP:
            self.take()
            right = self.add()
            if (node[0] == "bool" or right[0] == "bool") and (op not in ("==", "!=") or node[0] != right[0]):
                raise _Unsupported("bool comparison")
            fn, lf, rf = _CMP[op], node[1], right[1]
            node = ("bool", lambda c: fn(lf(c), rf(c)))
            if self.peek() in _CMP:
                raise _Unsupported("chained comparison")
        return node

    def add(self) -> _Node:
        node = self.mul()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            node = _arith(node, self.mul(), np.add if op == "+" else np.subtract)
        return node

    def mul(self) -> _Node:
        node = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()[1]
            node = _arith(node, self.unary(), np.multiply if op == "*" else np.divide)
        return node

    def unary(self) -> _Node:
        if self.peek() == "!":
            self.take()
            t, f = self.unary()
            if t != "bool":
                raise _Unsupported("! on a number")
            return "bool", lambda c: np.logical_not(f(c))
        if self.peek() == "-":
            self.take()
            t, f = self.unary()
            if t != "double":
                raise _Unsupported("- on a non-double")
            return "double", lambda c: np.negative(f(c))
        return self.primary()

    def primary(self) -> _Node:
        kind, text = self.take()
        if kind == "num":
            if re.fullmatch(r"\d+", text):
                v = int(text)
                if v >= 2**53:
                    raise _Unsupported("large int")
                return "int", lambda c: v
            d = float(text)
            return "double", lambda c: d
        if text == "(":
            node = self.or_()
            self.take(")")
            return node
        if text in ("true", "false"):
            b = text == "true"
            return "bool", lambda c: b
        if text == "math":
            self.take(".")
            if self.take()[1] != "abs":
                raise _Unsupported("math function")
            self.take("(")
            t, f = self.or_()
            self.take(")")
            if t != "double":
                raise _Unsupported("math.abs of a non-double")
            return "double", lambda c: np.abs(f(c))
        if text in ("signals", "tripped"):
            self.take(".")
            m = self.take()
            self.take(".")
            s = self.take()
            if m[0] != "id" or s[0] != "id":
                raise _Unsupported("signal name")
            key = f"{m[1]}.{s[1]}"
            if self.signals is None or key not in self.signals:
                raise _Unsupported(f"unknown signal {key}")
            if text == "signals":
                return "double", lambda c: c.signals[key]
            return "bool", lambda c: c.tripped[key]
        if text == "obs":
            self.take("[")
            kind, idx = self.take()
            self.take("]")
            if kind != "num" or not idx.isdigit() or int(idx) >= self.obs_size:
                raise _Unsupported("obs index")
            j = int(idx)
            return "double", lambda c: c.obs[:, j]
        if text == "action" and self.discrete and self.peek() != "[":
            return "int", lambda c: c.action
        if text == "step":
            return "int", lambda c: c.step
        raise _Unsupported(f"identifier {text}")


_CMP = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


def _logic(a: _Node, b: _Node, fn) -> _Node:
    if a[0] != "bool" or b[0] != "bool":
        raise _Unsupported("logic on non-bools")
    fa, fb = a[1], b[1]
    return "bool", lambda c: fn(fa(c), fb(c))


def _arith(a: _Node, b: _Node, fn) -> _Node:
    if a[0] != "double" or b[0] != "double":
        raise _Unsupported("arithmetic on non-doubles")  # CEL int arithmetic can overflow / truncates
    fa, fb = a[1], b[1]
    return "double", lambda c: fn(fa(c), fb(c))


class VectorizedCondition:
    """A compiled condition: ``__call__(columns)`` -> ``[n]`` bool."""

    def __init__(self, source: str, fn: Callable[[Columns], object]) -> None:
        self.source = source
        self._fn = fn

    def __call__(self, cols: Columns) -> np.ndarray:
        with np.errstate(all="ignore"):
            out = np.asarray(self._fn(cols), dtype=bool)
        return np.broadcast_to(out, (cols.n,)) if out.ndim == 0 else out


def _probe_columns(obs_size: int, discrete: bool, signals: Sequence[str], n: int, seed: int) -> Columns:
    rng = np.random.default_rng(seed)
    special = np.array([0.0, -0.0, 1.0, -1.0, 0.5, np.nan, np.inf, -np.inf, 1e300, -1e-300])

    def col(size: int) -> np.ndarray:
        v = rng.standard_normal(size) * rng.choice([0.01, 0.1, 1.0, 10.0], size)
        mask = rng.random(size) < 0.15
        v[mask] = rng.choice(special, mask.sum())
        return v

    return Columns(
        n=n,
        obs=np.stack([col(n) for _ in range(obs_size)], axis=1) if obs_size else np.zeros((n, 0)),
        action=rng.integers(0, 4, n).astype(np.int64) if discrete else None,
        step=rng.integers(0, 1000, n).astype(np.int64),
        signals={k: col(n) for k in signals},
        tripped={k: rng.random(n) < 0.5 for k in signals},
    )


def probe_rows(cols: Columns) -> list[dict]:
    """The probe columns as CEL activations (one per row)."""
    sig: dict[str, dict[str, float]] = {}
    rows = []
    for i in range(cols.n):
        sig, trip = {}, {}
        for k, v in cols.signals.items():
            m, _, s = k.partition(".")
            sig.setdefault(m, {})[s] = float(v[i])
            trip.setdefault(m, {})[s] = bool(cols.tripped[k][i])
        rows.append(
            {
                "obs": cols.obs[i].tolist(),
                "action": int(cols.action[i]) if cols.action is not None else [],
                "labels": {},
                "step": int(cols.step[i]),
                "agent_id": "",
                "episode_id": "",
                "signals": sig,
                "tripped": trip,
            }
        )
    return rows


def compile_vectorized(
    source: str,
    cel_predicate: Callable[[Mapping[str, object]], bool],
    obs_size: int,
    discrete: bool,
    signals: Sequence[str] | None,
    probes: int = 64,
) -> VectorizedCondition | None:
    """The vectorized form of ``source``, or None when it is outside the subset or disagrees with CEL.

    Args:
        source: The CEL condition text (already compiled and type-checked by CEL).
        cel_predicate: The CEL evaluation of the same condition (one activation -> bool).
        obs_size: Elements of one flattened observation.
        discrete: Whether ``action`` is an int.
        signals: Known ``"<m>.<s>"`` names (None: the expression may not read signals, as in
            the rules monitor).
    """
    try:
        kind, fn = _Parser(source, obs_size, discrete, set(signals) if signals is not None else None).parse()
    except _Unsupported as e:
        log.debug("CEL condition %r stays on the CEL path: %s", source, e)
        return None
    if kind != "bool":
        return None
    cond = VectorizedCondition(source, fn)
    cols = _probe_columns(obs_size, discrete, list(signals or ()), probes, seed=len(source))
    fast = cond(cols)
    for i, row in enumerate(probe_rows(cols)):
        try:
            want = cel_predicate(row)
        except Exception:  # CEL errors on a probe: the subset promised none, so do not trust it
            return None
        if bool(fast[i]) != bool(want):
            log.warning("CEL condition %r: vectorized form disagrees with CEL on a probe; using CEL", source)
            return None
    return cond


def batch_columns(
    batch,
    signals: Mapping[str, np.ndarray] | None = None,
    tripped: Mapping[str, np.ndarray] | None = None,
) -> Columns:
    """Columns of a :class:`~interlock.monitors.base.Batch` (observations flattened to float64, as in CEL)."""
    cached = batch.__dict__.get("_columns")
    if cached is None:
        n = len(batch)
        acts = batch.actions
        cached = Columns(
            n=n,
            obs=batch.observations.reshape(n, -1).astype(np.float64),
            action=acts.astype(np.int64) if acts.ndim == 1 and acts.dtype.kind in "iu" else None,
            step=np.asarray(batch.steps, dtype=np.int64),
            signals={},
            tripped={},
        )
        batch.__dict__["_columns"] = cached
    if signals is None:
        return cached
    return Columns(cached.n, cached.obs, cached.action, cached.step, signals, tripped or {})
