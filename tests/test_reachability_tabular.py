"""The tabular solvers against textbook reference implementations, on random MDPs and real env models."""

from __future__ import annotations

import re
from collections import deque

import numpy as np
import pytest

from interlock.errors import ConfigError
from interlock.reachability.gym_models import cliffwalking_model, frozenlake_model
from interlock.reachability.tabular import (
    TabularModel,
    load_tabular,
    reachable_counts,
    relative_reachability,
    risk_allowed,
    safety_values,
    winning_region,
)

# ---------------------------------------------------------------------------- references (plain Python)


def ref_winning(P: np.ndarray, unsafe: set[int], terminal: set[int]) -> set[int]:
    """Greatest fixpoint, the textbook way: drop states with no action whose support stays inside."""
    S, A, _ = P.shape
    W = set(range(S)) - unsafe
    changed = True
    while changed:
        changed = False
        for s in sorted(W):
            if s in terminal:
                continue
            ok = any(P[s, a].sum() > 0 and all(P[s, a, t] == 0 or t in W for t in range(S)) for a in range(A))
            if not ok:
                W.discard(s)
                changed = True
    return W


def ref_safety(P: np.ndarray, unsafe: set[int], terminal: set[int], horizon: int) -> np.ndarray:
    S, A, _ = P.shape
    v = [0.0 if s in unsafe else 1.0 for s in range(S)]
    q = np.zeros((S, A))
    for _ in range(horizon):
        q = np.array([[sum(P[s, a, t] * v[t] for t in range(S)) for a in range(A)] for s in range(S)])
        v = [
            0.0
            if s in unsafe
            else 1.0
            if s in terminal
            else max(q[s, a] for a in range(A) if P[s, a].sum() > 0)
            for s in range(S)
        ]
    return q


def ref_reach(P: np.ndarray, absorbing: set[int]) -> list[int]:
    S = P.shape[0]
    counts = []
    for s in range(S):
        seen, todo = {s}, deque([s])
        while todo:
            x = todo.popleft()
            if x in absorbing:
                continue
            for t in np.flatnonzero(P[x].sum(axis=0) > 0):
                if int(t) not in seen:
                    seen.add(int(t))
                    todo.append(int(t))
        counts.append(len(seen))
    return counts


def random_mdp(rng: np.random.Generator, S: int, A: int) -> tuple[np.ndarray, list[int], list[int]]:
    P = np.zeros((S, A, S))
    for s in range(S):
        for a in range(A):
            k = rng.integers(1, 4)
            succ = rng.choice(S, size=k, replace=False)
            P[s, a, succ] = rng.dirichlet(np.ones(k))
    states = rng.permutation(S)
    n_unsafe = int(rng.integers(1, max(2, S // 4)))
    return P, sorted(states[:n_unsafe].tolist()), sorted(states[n_unsafe : n_unsafe + 1].tolist())


# ---------------------------------------------------------------------------- solvers vs references


@pytest.mark.parametrize("seed", range(25))
def test_solvers_match_references_on_random_mdps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    S, A = int(rng.integers(3, 14)), int(rng.integers(1, 4))
    P, unsafe, terminal = random_mdp(rng, S, A)
    m = TabularModel.from_dense(P, unsafe=unsafe, terminal=terminal)
    win, _allowed = winning_region(m)
    assert set(np.flatnonzero(win).tolist()) == ref_winning(P, set(unsafe), set(terminal))
    q, _ = safety_values(m, 7)
    ref_q = ref_safety(P, set(unsafe), set(terminal), 7)
    live = ~(m.unsafe | m.terminal)
    np.testing.assert_allclose(q[live], ref_q[live], atol=1e-12)
    assert reachable_counts(m).tolist() == ref_reach(P, set(unsafe) | set(terminal))


def test_dense_and_sparse_files_give_the_same_model(tmp_path) -> None:
    P, unsafe, terminal = random_mdp(np.random.default_rng(7), 9, 3)
    np.savez(tmp_path / "dense.npz", P=P, unsafe=np.array(unsafe), terminal=np.array(terminal))
    s, a, d = np.nonzero(P)
    np.savez(
        tmp_path / "sparse.npz",
        P_state=s,
        P_action=a,
        P_next=d,
        P_prob=P[s, a, d],
        n_states=9,
        n_actions=3,
        unsafe=np.isin(np.arange(9), unsafe),
        terminal=np.array(terminal),
    )
    dense, sparse = load_tabular(tmp_path / "dense.npz"), load_tabular(tmp_path / "sparse.npz")
    np.testing.assert_allclose(dense.dense(), sparse.dense())
    assert (dense.unsafe == sparse.unsafe).all() and (dense.terminal == sparse.terminal).all()


def test_relative_reachability_of_an_irreversible_step() -> None:
    # 0 <-> 1 (reversible), 1 -> 2 (one-way), 2 <-> 3; action 0 moves right, action 1 moves left.
    P = np.zeros((4, 2, 4))
    P[0, 0, 1] = P[0, 1, 0] = 1
    P[1, 0, 2] = P[1, 1, 0] = 1
    P[2, 0, 3] = P[2, 1, 2] = 1
    P[3, 0, 3] = P[3, 1, 2] = 1
    m = TabularModel.from_dense(P, unsafe=[])
    counts = reachable_counts(m)
    assert counts.tolist() == [4, 4, 2, 2]
    rr = relative_reachability(m, counts)
    assert rr[1, 0] == pytest.approx(0.5)  # 1 -> 2 loses {0, 1}: half of what 1 could reach
    assert rr[0, 0] == 0 and rr[2, 1] == 0 and rr[3, 1] == 0


def test_probabilistic_shield_threshold() -> None:
    # At 0: action 0 is safe for sure; action 1 falls with prob 0.2 per step (stays at 0 otherwise).
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = 1
    P[0, 1, 0], P[0, 1, 1] = 0.8, 0.2
    P[1, :, 1] = 1
    m = TabularModel.from_dense(P, unsafe=[1])
    q, v = safety_values(m, 3)
    assert q[0, 1] == pytest.approx(0.8)  # one risky step, then safe
    assert v[0] == 1.0
    assert risk_allowed(m, q, 0.25)[0].tolist() == [True, True]
    assert risk_allowed(m, q, 0.1)[0].tolist() == [True, False]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"P": np.full((2, 1, 2), 0.3), "unsafe": [1]}, "sums to 0.6"),
        ({"P": np.ones((2, 1, 3)), "unsafe": [1]}, "shape [S, A, S]"),
        ({"P": np.eye(2)[:, None, :]}, "missing key 'unsafe'"),
        (
            {
                "P_state": [0],
                "P_action": [0],
                "P_next": [5],
                "P_prob": [1.0],
                "n_states": 2,
                "n_actions": 1,
                "unsafe": [1],
            },
            "next state index 5",
        ),
        ({"P_state": [0], "unsafe": [1]}, "missing P_action"),
        ({"P": np.eye(2)[:, None, :], "unsafe": [3]}, "outside [0, 2)"),
    ],
)
def test_malformed_models_name_the_problem(tmp_path, bad: dict, message: str) -> None:
    np.savez(tmp_path / "m.npz", **bad)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_tabular(tmp_path / "m.npz")
    assert "m.npz" in str(err.value)


def test_missing_file_and_stuck_states() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_tabular("/nonexistent/model.npz")
    P = np.zeros((2, 1, 2))
    P[0, 0, 1] = 1
    with pytest.raises(ConfigError, match="state 1 has no transitions"):
        TabularModel.from_dense(P, unsafe=[])


# ---------------------------------------------------------------------------- the shield's guarantee


MODELS = {
    "cliffwalking": lambda: cliffwalking_model(),
    "cliffwalking-slippery": lambda: cliffwalking_model(is_slippery=True),
    "frozenlake-4x4": lambda: frozenlake_model("4x4", is_slippery=False),
    "frozenlake-4x4-slippery": lambda: frozenlake_model("4x4", is_slippery=True),
    "frozenlake-8x8": lambda: frozenlake_model("8x8", is_slippery=False),
    "frozenlake-8x8-slippery": lambda: frozenlake_model("8x8", is_slippery=True),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_winning_region_is_an_inductive_invariant_on_real_env_models(name: str) -> None:
    """The proof that a shielded agent, whatever it proposes, never enters an unsafe state.

    (1) W holds no unsafe state; (2) every live state of W has an allowed action; (3) every
    successor of every allowed action lies in W. By induction on the steps, an episode that
    starts in W and only takes allowed actions stays in W, so never reaches an unsafe state
    (with any probability). (4) W is the largest such set: from each live state outside it,
    every action can leave it. Also: the start state is winning for all of these envs.
    """
    m = MODELS[name]()
    win, allowed = winning_region(m)
    P = m.dense()
    assert not (win & m.unsafe).any()  # (1)
    live = win & ~m.terminal
    assert allowed[live].any(axis=1).all()  # (2)
    for s in np.flatnonzero(live):
        for a in np.flatnonzero(allowed[s]):
            assert win[P[s, a] > 0].all(), (s, a)  # (3)
    for s in np.flatnonzero(~win & ~m.unsafe & ~m.terminal):
        for a in np.flatnonzero(m.available[s]):
            assert (~win[P[s, a] > 0]).any(), (s, a)  # (4)
    start = 36 if name.startswith("cliff") else 0
    assert win[start]


def test_cliffwalking_shield_forbids_exactly_the_cliff_moves() -> None:
    m = cliffwalking_model()
    win, allowed = winning_region(m)
    _UP, _RIGHT, DOWN, _LEFT = range(4)
    assert win[:37].all() and win[47] and not win[37:47].any() and not win[48]
    assert allowed[36].tolist() == [True, False, True, True]  # start: right steps into the cliff
    for s in range(25, 35):  # row above the cliff: down is forbidden, the rest allowed
        assert allowed[s].tolist() == [True, True, False, True]
    assert allowed[35, DOWN]  # down from (2, 11) reaches the goal
