"""Finite models and the games solved on them: exact shields, probabilistic shields, relative reachability.

A :class:`TabularModel` is an MDP over ``S`` states and ``A`` actions given as
transition probabilities ``P[s, a, s']``, with sets of unsafe, terminal and goal
states. It is stored sparse (one row per ``(s, a)`` pair, COO entries sorted by
row) so that models with many states solve in time linear in the number of
transitions.

Three solvers, all vectorised with numpy:

* :func:`winning_region` - the safety game (Alshiekh et al. 2018, "Safe
  reinforcement learning via shielding"): the greatest set ``W`` of non-unsafe
  states from which some policy stays in ``W`` forever. In a finite MDP
  "avoid the unsafe states with probability 1" is the same as "surely", so
  ``W`` is a fixpoint over the support graph. An action is *allowed* at
  ``s`` in ``W`` when all its successors lie in ``W``.
* :func:`safety_values` - finite-horizon value iteration for the probability
  of avoiding unsafe states for ``H`` steps under the safest continuation
  (the probabilistic shield of Jansen et al. 2020, "Safe reinforcement
  learning using probabilistic shields").
* :func:`reachable_counts` - how many states each state can reach, for the
  relative-reachability measure (Krakovna et al. 2019, "Penalizing side
  effects using stepwise relative reachability").

Example:
    >>> import numpy as np
    >>> P = np.zeros((3, 2, 3)); P[0, 0, 0] = P[0, 1, 1] = P[1, :, 2] = P[2, :, 2] = 1.0
    >>> m = TabularModel.from_dense(P, unsafe=[2])
    >>> win, allowed = winning_region(m)
    >>> win.tolist(), allowed[0].tolist()
    ([True, False, False], [True, False])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interlock.errors import ConfigError
from interlock.storage.npz import read_npz

#: Tolerance on the sum of each ``P[s, a, :]`` row.
ROW_SUM_TOLERANCE = 1e-6


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar (or a no-op stand-in when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="st")


@dataclass(frozen=True)
class TabularModel:
    """A finite MDP, sparse.

    Attributes:
        n_states: ``S``.
        n_actions: ``A``.
        row: ``[T]`` int64, the transition's ``s * A + a``, sorted ascending.
        dst: ``[T]`` int64, the successor state ``s'``.
        prob: ``[T]`` float64, ``P[s, a, s'] > 0`` (duplicates merged).
        unsafe: ``[S]`` bool.
        terminal: ``[S]`` bool, states where the episode ends (their actions do not matter).
        goal: ``[S]`` bool.
        available: ``[S, A]`` bool, pairs with at least one transition.
    """

    n_states: int
    n_actions: int
    row: np.ndarray
    dst: np.ndarray
    prob: np.ndarray
    unsafe: np.ndarray
    terminal: np.ndarray
    goal: np.ndarray
    available: np.ndarray

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_coo(
        cls,
        n_states: int,
        n_actions: int,
        state: Any,
        action: Any,
        next_state: Any,
        prob: Any,
        unsafe: Any = (),
        terminal: Any = (),
        goal: Any = (),
        source: str = "model",
    ) -> TabularModel:
        """Build from coordinate lists; checks indices and that every used row sums to 1.

        Args:
            n_states, n_actions: ``S`` and ``A``.
            state, action, next_state, prob: ``[T]`` arrays, one entry per ``P[s, a, s'] = p``.
                Repeated ``(s, a, s')`` entries are added up; zero entries are dropped.
            unsafe, terminal, goal: state indices, or ``[S]`` bool masks.
            source: Names the model in error messages.

        Raises:
            ConfigError: an index out of range, a negative or non-finite probability, or a
                ``(s, a)`` row that has transitions but does not sum to 1.
        """
        S, A = int(n_states), int(n_actions)
        if S <= 0 or A <= 0:
            raise ConfigError(
                f"{source}: needs at least one state and one action (got {S} states, {A} actions)"
            )
        s = np.asarray(state, dtype=np.int64).reshape(-1)
        a = np.asarray(action, dtype=np.int64).reshape(-1)
        d = np.asarray(next_state, dtype=np.int64).reshape(-1)
        p = np.asarray(prob, dtype=np.float64).reshape(-1)
        if not (len(s) == len(a) == len(d) == len(p)):
            raise ConfigError(
                f"{source}: state, action, next_state and prob lists differ in length "
                f"({len(s)}, {len(a)}, {len(d)}, {len(p)})"
            )
        for name, arr, hi in (("state", s, S), ("action", a, A), ("next state", d, S)):
            bad = (arr < 0) | (arr >= hi)
            if bad.any():
                raise ConfigError(
                    f"{source}: {name} index {int(arr[bad][0])} is outside [0, {hi}); "
                    f"check n_states/n_actions"
                )
        if not np.isfinite(p).all() or (p < 0).any():
            raise ConfigError(f"{source}: transition probabilities must be finite and >= 0")
        keep = p > 0
        s, a, d, p = s[keep], a[keep], d[keep], p[keep]
        row = s * A + a
        # Merge duplicates and sort by (row, dst).
        key = row * S + d
        uniq, inv = np.unique(key, return_inverse=True)
        merged = np.bincount(inv, weights=p, minlength=len(uniq))
        row, dst = uniq // S, uniq % S
        sums = np.bincount(row, weights=merged, minlength=S * A)
        used = np.bincount(row, minlength=S * A) > 0
        off = used & (np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
        if off.any():
            r = int(np.flatnonzero(off)[0])
            raise ConfigError(
                f"{source}: P[{r // A}, {r % A}, :] sums to {sums[r]:.6g}, not 1 "
                f"({int(off.sum())} such rows); each used (state, action) row must sum to 1"
            )
        model = cls(
            n_states=S,
            n_actions=A,
            row=row.astype(np.int64),
            dst=dst.astype(np.int64),
            prob=merged / sums[row],
            unsafe=_mask(unsafe, S, "unsafe", source),
            terminal=_mask(terminal, S, "terminal", source),
            goal=_mask(goal, S, "goal", source),
            available=used.reshape(S, A),
        )
        stuck = ~model.available.any(axis=1) & ~model.terminal & ~model.unsafe
        if stuck.any():
            raise ConfigError(
                f"{source}: state {int(np.flatnonzero(stuck)[0])} has no transitions for any "
                f"action ({int(stuck.sum())} such states); give it transitions or mark it "
                "terminal"
            )
        return model

    @classmethod
    def from_dense(
        cls, P: Any, unsafe: Any = (), terminal: Any = (), goal: Any = (), source: str = "model"
    ) -> TabularModel:
        """Build from a dense ``[S, A, S]`` array."""
        P = np.asarray(P, dtype=np.float64)
        if P.ndim != 3 or P.shape[0] != P.shape[2]:
            raise ConfigError(f"{source}: P must have shape [S, A, S]; got {list(P.shape)}")
        s, a, d = np.nonzero(P)
        return cls.from_coo(P.shape[0], P.shape[1], s, a, d, P[s, a, d], unsafe, terminal, goal, source)

    @classmethod
    def from_toy_text(
        cls,
        P: Mapping[int, Mapping[int, Sequence[tuple]]],
        n_states: int,
        n_actions: int,
        unsafe: Iterable[int] = (),
        goal: Iterable[int] = (),
        unsafe_transition: Callable[[int, int, float, int, float, bool], bool] | None = None,
        source: str = "env.unwrapped.P",
    ) -> TabularModel:
        """Build from a Gymnasium toy-text model (``env.unwrapped.P[s][a] = [(p, s', r, done), ...]``).

        States that a ``done`` transition leads to become terminal. Transitions for
        which ``unsafe_transition(s, a, p, s', r, done)`` holds are redirected to one
        extra absorbing unsafe state (index ``n_states``), for environments that
        punish a move without ending the episode (CliffWalking's cliff sends the
        agent back to the start with -100).

        Example:
            >>> import gymnasium as gym
            >>> env = gym.make("CliffWalking-v1").unwrapped
            >>> m = TabularModel.from_toy_text(env.P, 48, 4, unsafe_transition=lambda *t: t[4] <= -100)
            >>> m.n_states, int(m.unsafe.sum())
            (49, 1)
        """
        extra = 1 if unsafe_transition is not None else 0
        S = int(n_states) + extra
        rows: list[tuple[int, int, int, float]] = []
        terminal: set[int] = set()
        for s, by_action in P.items():
            for a, outcomes in by_action.items():
                for p, s2, r, done in outcomes:
                    s2 = int(s2)
                    if unsafe_transition is not None and unsafe_transition(int(s), int(a), p, s2, r, done):
                        s2 = S - 1
                    elif done:
                        terminal.add(s2)
                    rows.append((int(s), int(a), s2, float(p)))
        unsafe_set = set(int(u) for u in unsafe)
        if extra:
            unsafe_set.add(S - 1)
            rows += [(S - 1, a, S - 1, 1.0) for a in range(n_actions)]
        arr = np.array(rows, dtype=np.float64).reshape(-1, 4)
        term = sorted(terminal - unsafe_set)
        return cls.from_coo(
            S,
            n_actions,
            arr[:, 0],
            arr[:, 1],
            arr[:, 2],
            arr[:, 3],
            sorted(unsafe_set),
            term,
            list(goal),
            source,
        )

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> None:
        """Write the sparse ``.npz`` layout that :func:`load_tabular` reads."""
        A = self.n_actions
        np.savez_compressed(
            path,
            n_states=self.n_states,
            n_actions=A,
            P_state=self.row // A,
            P_action=self.row % A,
            P_next=self.dst,
            P_prob=self.prob,
            unsafe=np.flatnonzero(self.unsafe),
            terminal=np.flatnonzero(self.terminal),
            goal=np.flatnonzero(self.goal),
        )

    def dense(self) -> np.ndarray:
        """``[S, A, S]`` float64 (only for small models)."""
        P = np.zeros((self.n_states * self.n_actions, self.n_states))
        P[self.row, self.dst] = self.prob
        return P.reshape(self.n_states, self.n_actions, self.n_states)

    def successors(self, state: int, action: int) -> dict[int, float]:
        """``{s': P[s, a, s']}`` for one pair."""
        r = state * self.n_actions + action
        lo, hi = np.searchsorted(self.row, [r, r + 1])
        return dict(zip(self.dst[lo:hi].tolist(), self.prob[lo:hi].tolist(), strict=True))


def _mask(value: Any, n: int, what: str, source: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == np.bool_:
        if arr.shape != (n,):
            raise ConfigError(f"{source}: '{what}' as a mask must have shape [{n}]; got {list(arr.shape)}")
        return arr.copy()
    idx = arr.astype(np.int64).reshape(-1)
    if ((idx < 0) | (idx >= n)).any():
        raise ConfigError(
            f"{source}: '{what}' lists state {int(idx[(idx < 0) | (idx >= n)][0])}, outside [0, {n})"
        )
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask


def load_tabular(path: str | Path) -> TabularModel:
    """Read a model from ``.npz``.

    Layouts (``S`` states, ``A`` actions):

    * dense: ``P`` ``[S, A, S]`` float;
    * sparse (COO): ``P_state``, ``P_action``, ``P_next``, ``P_prob`` ``[T]`` plus
      ``n_states`` and ``n_actions`` scalars.

    Plus ``unsafe`` (required), and optionally ``terminal`` and ``goal``: each a
    list of state indices or an ``[S]`` bool mask.

    Raises:
        ConfigError: the file is missing or unreadable, a key is missing, or the
            model is malformed; the message names the file and the key.
    """
    p = Path(path)
    src = str(p)
    data = read_npz(p, ConfigError, f"{src}: transitions file does not exist", f"{src}: cannot read as .npz")
    if "unsafe" not in data:
        raise ConfigError(f"{src}: missing key 'unsafe' (indices or a bool mask of the unsafe states)")
    extra = {k: data.get(k, ()) for k in ("unsafe", "terminal", "goal")}
    if "P" in data:
        return TabularModel.from_dense(data["P"], source=src, **extra)
    coo = ("P_state", "P_action", "P_next", "P_prob", "n_states", "n_actions")
    missing = [k for k in coo if k not in data]
    if missing:
        raise ConfigError(
            f"{src}: has neither a dense 'P' [S, A, S] nor the sparse keys; missing "
            f"{', '.join(missing)} (keys present: {', '.join(sorted(data)) or 'none'})"
        )
    return TabularModel.from_coo(
        int(data["n_states"]),
        int(data["n_actions"]),
        data["P_state"],
        data["P_action"],
        data["P_next"],
        data["P_prob"],
        source=src,
        **extra,
    )


# ---------------------------------------------------------------------------- solvers


def _by_dst(model: TabularModel) -> tuple[np.ndarray, np.ndarray]:
    """Transition indices grouped by successor: ``(order [T], ptr [S+1])``."""
    order = np.argsort(model.dst, kind="stable")
    ptr = np.zeros(model.n_states + 1, dtype=np.int64)
    np.cumsum(np.bincount(model.dst, minlength=model.n_states), out=ptr[1:])
    return order, ptr


def _gather(order: np.ndarray, ptr: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Concatenation of ``order[ptr[s]:ptr[s+1]]`` over ``states``, vectorised."""
    lo, hi = ptr[states], ptr[states + 1]
    n = hi - lo
    total = int(n.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(lo - np.concatenate(([0], np.cumsum(n)[:-1])), n)
    return order[starts + np.arange(total)]


def winning_region(model: TabularModel, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Solve the safety game: where can unsafe states be avoided forever?

    Backward propagation from the unsafe states (an attractor computation): a
    ``(s, a)`` pair is bad once any successor is losing; a non-terminal state is
    losing once all its available actions are bad. Each round handles the states
    that became losing in the last one, so the work is linear in the number of
    transitions.

    Returns:
        ``win`` ``[S]`` bool (the winning region ``W``) and ``allowed`` ``[S, A]`` bool:
        the actions whose successors all lie in ``W`` (every action at a terminal
        state in ``W``; none outside ``W``).
    """
    S, A = model.n_states, model.n_actions
    order, ptr = _by_dst(model)
    row_bad = ~model.available.reshape(-1).copy()
    good = (~row_bad).reshape(S, A).sum(axis=1)
    losing = model.unsafe.copy()
    frontier = np.flatnonzero(losing)
    with _progress(S, "winning region", progress) as bar:
        bar.update(len(frontier))
        while len(frontier):
            rows = np.unique(model.row[_gather(order, ptr, frontier)])
            rows = rows[~row_bad[rows]]
            row_bad[rows] = True
            good -= np.bincount(rows // A, minlength=S)
            frontier = np.flatnonzero((good == 0) & ~losing & ~model.terminal)
            losing[frontier] = True
            bar.update(len(frontier))
    win = ~losing
    allowed = (~row_bad).reshape(S, A) & win[:, None]
    allowed[win & model.terminal] = True
    return win, allowed


def safety_values(model: TabularModel, horizon: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Probability of avoiding unsafe states for ``horizon`` steps under the safest policy.

    ``v_0(s) = [s not unsafe]``; ``q_k(s, a) = sum_s' P[s, a, s'] v_{k-1}(s')``;
    ``v_k(s) = max_a q_k(s, a)``, with ``v = 0`` on unsafe and ``v = 1`` on
    terminal states. Stops early once the values no longer change.

    Returns:
        ``q`` ``[S, A]`` float64 (taking ``a`` at ``s``, then acting as safely as
        possible; 0 for unavailable pairs) and ``v`` ``[S]`` float64, both over the horizon.
    """
    S, A = model.n_states, model.n_actions
    safe = (~model.unsafe).astype(np.float64)
    v = safe.copy()
    q: np.ndarray = np.zeros((S, A))
    with _progress(horizon, "safety values", progress) as bar:
        for _ in range(horizon):
            q = np.bincount(model.row, weights=model.prob * v[model.dst], minlength=S * A).reshape(S, A)
            v_new = np.where(model.available, q, -1.0).max(axis=1).clip(min=0.0)
            v_new[model.terminal] = 1.0
            v_new *= safe
            bar.update(1)
            if np.array_equal(v_new, v):
                break
            v = v_new
    q[model.terminal & ~model.unsafe] = 1.0
    q[model.unsafe] = 0.0
    return q, v


def risk_allowed(model: TabularModel, q: np.ndarray, delta: float, relative: bool = False) -> np.ndarray:
    """The probabilistic shield's actions: ``q(s, a) >= 1 - delta`` (or ``>= (1 - delta) max q`` if relative).

    Where no action qualifies, none is allowed (the state is lost at this risk level).

    Returns:
        ``[S, A]`` bool.
    """
    qa = np.where(model.available, q, -1.0)
    bar = (1.0 - delta) * (qa.max(axis=1, keepdims=True).clip(min=0.0) if relative else 1.0)
    allowed = model.available & (qa >= bar - 1e-12)
    allowed[model.terminal & ~model.unsafe] = True
    allowed[model.unsafe] = False
    return allowed


def _strongly_connected(n: int, ptr: np.ndarray, succ: np.ndarray) -> tuple[np.ndarray, int]:
    """Tarjan's algorithm, iterative. Components are numbered in reverse topological order."""
    index = np.full(n, -1, dtype=np.int64)
    low = np.zeros(n, dtype=np.int64)
    comp = np.full(n, -1, dtype=np.int64)
    on_stack = np.zeros(n, dtype=bool)
    stack: list[int] = []
    counter = 0
    n_comp = 0
    ptr_l, succ_l = ptr.tolist(), succ.tolist()
    for root in range(n):
        if index[root] >= 0:
            continue
        work = [(root, ptr_l[root])]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        while work:
            v, i = work[-1]
            if i < ptr_l[v + 1]:
                work[-1] = (v, i + 1)
                w = succ_l[i]
                if index[w] < 0:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, ptr_l[w]))
                elif on_stack[w] and index[w] < low[v]:
                    low[v] = index[w]
                continue
            work.pop()
            if work and low[v] < low[work[-1][0]]:
                low[work[-1][0]] = low[v]
            if low[v] == index[v]:
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp[w] = n_comp
                    if w == v:
                        break
                n_comp += 1
    return comp, n_comp


#: Relative reachability keeps one bit per (component, state); refuse models where that gets large.
MAX_REACHABILITY_BITS = 4 * 10**9


def reachable_counts(model: TabularModel, progress: bool = False) -> np.ndarray:
    """``[S]`` int64: how many states each state can reach (itself included), under any policy.

    Terminal and unsafe states are absorbing (they reach only themselves).
    Strongly connected components are condensed, then reachable sets are built as
    bitsets in reverse topological order.

    Raises:
        ConfigError: the model is too large for the bitsets (see :data:`MAX_REACHABILITY_BITS`).
    """
    S, A = model.n_states, model.n_actions
    src = model.row // A
    live = ~(model.terminal | model.unsafe)[src] & (src != model.dst)
    edges = np.unique(src[live] * S + model.dst[live])
    es, ed = edges // S, edges % S
    ptr = np.zeros(S + 1, dtype=np.int64)
    np.cumsum(np.bincount(es, minlength=S), out=ptr[1:])
    comp, C = _strongly_connected(S, ptr, ed)
    if C * S > MAX_REACHABILITY_BITS:
        raise ConfigError(
            f"relative reachability needs {C} x {S} bits for this model, more than the "
            f"limit of {MAX_REACHABILITY_BITS}; set relative_reachability: false"
        )
    words = (S + 63) // 64
    bits = np.zeros((C, words), dtype=np.uint64)
    np.bitwise_or.at(
        bits, (comp, np.arange(S) // 64), np.left_shift(np.uint64(1), (np.arange(S) % 64).astype(np.uint64))
    )
    # Component DAG edges; components are numbered so that successors have smaller numbers.
    cedges = np.unique(comp[es] * C + comp[ed])
    cs, cd = cedges // C, cedges % C
    keep = cs != cd
    cs, cd = cs[keep], cd[keep]
    order = np.argsort(cs, kind="stable")
    cs, cd = cs[order], cd[order]
    cptr = np.zeros(C + 1, dtype=np.int64)
    np.cumsum(np.bincount(cs, minlength=C), out=cptr[1:])
    with _progress(C, "reachable sets", progress) as bar:
        for c in range(C):
            lo, hi = cptr[c], cptr[c + 1]
            if hi > lo:
                bits[c] |= np.bitwise_or.reduce(bits[cd[lo:hi]], axis=0)
            if c % 1024 == 1023:
                bar.update(1024)
        bar.update(C % 1024)
    counts_c = np.unpackbits(bits.view(np.uint8), axis=1).sum(axis=1).astype(np.int64)
    return counts_c[comp]


def relative_reachability(model: TabularModel, counts: np.ndarray) -> np.ndarray:
    """``[S, A]`` float64: expected share of the states reachable from ``s`` that ``a`` makes unreachable.

    ``rr(s, a) = sum_s' P[s, a, s'] (1 - |R(s')| / |R(s)|)``, where ``R(x)`` is the set
    reachable from ``x``; ``R(s') ⊆ R(s)`` for every successor, so the share of
    states lost is exactly ``1 - |R(s')| / |R(s)|``. Undiscounted (Krakovna et al.
    2019 also define a discounted variant). 0 at terminal and unsafe states.
    """
    S, A = model.n_states, model.n_actions
    src = model.row // A
    lost = 1.0 - counts[model.dst] / counts[src]
    rr = np.bincount(model.row, weights=model.prob * lost.clip(min=0.0), minlength=S * A).reshape(S, A)
    rr[model.terminal | model.unsafe] = 0.0
    return rr
