"""Recoverability over learned dynamics: can the backup policy bring each ensemble member's future back?

From the state a proposed action leads to under each member of a dynamics
ensemble, the backup policy is rolled out for ``H`` steps. All members and all
batch rows advance together: one dynamics call and one backup-policy call per
step, over ``[K * batch]`` states. A member's rollout *fails* when a constraint
breaks before the state re-enters the safe set, or when it never re-enters it
within the horizon (with no safe set: when a constraint breaks within the horizon).

Layouts the dynamics model may have (``N`` rows, ``d`` = obs_dim):

* shared input: ``obs [N, d]``, ``action [N]`` / ``[N, 1]`` / ``[N, n]`` (one-hot) /
  ``[N, act_dim]`` -> ``[K, N, d]``, or ``[N, d]`` (a single model, K=1). Each
  member then sees every member's states and the rollout keeps the diagonal
  blocks (``K x`` the work of the members' own rows);
* per-member input: ``obs [K, N, d]``, ``action [K, N, ...]`` -> ``[K, N, d]``.

A ``kind: python`` model (:class:`PythonDynamics`) has the shared-input layout.

The same rollout serves the model-predictive shield: the rows are then every
candidate action of every batch row (``[batch * candidates]``), the policy followed
after the first step is a *continuation* (the backup policy, the agent's own policy,
or "repeat the first action"), and every predicted next state can be shifted by a
per-row correction ``bias [N, d]`` (the episode's observed model residuals).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from interlock.errors import ConfigError
from interlock.policies.cel_numpy import Row
from interlock.reachability.constraints import BatchedCondition
from interlock.spaces import ActionSpace

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float16)": np.float16,
}


def _np_type(arg: Any, where: str) -> np.dtype:
    t = _ORT_TO_NUMPY.get(arg.type)
    if t is None:
        raise ConfigError(f"{where}: input '{arg.name}' has type {arg.type}; expected float, double or int")
    return np.dtype(t)


class Dynamics(ABC):
    """A dynamics model in the rollout's terms; subclasses define :meth:`_run` (and set the layout).

    Attributes:
        obs_dim: Flattened observation length ``d``.
        action: The agent's action space.
        delta: The model predicts ``next_obs - obs``.
        per_member: Inputs are ``[K, N, ...]`` (each member its own states).
        members: ``K``, learnt by the probe call at load.
    """

    obs_dim: int
    action: ActionSpace
    delta: bool = False
    per_member: bool = False
    members: int = 0
    where: str = "model"

    @abstractmethod
    def _run(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """One model call: ``[N, d]`` (or ``[K, N, d]``), actions -> ``[K, N, d]`` or ``[N, d]``."""

    def _probe_actions(self, n: int) -> np.ndarray:
        """``n`` valid actions (index 0, or the box's lower corner clipped to finite values)."""
        if self.action.discrete:
            return np.zeros(n, dtype=np.int64)
        lo = np.nan_to_num(np.asarray(self.action.low, np.float64), neginf=0.0, posinf=0.0)
        return np.broadcast_to(lo, (n, *self.action.shape)).astype(self.action.dtype)

    def _check_out(self, out: np.ndarray, n: int) -> np.ndarray:
        out = np.asarray(out)
        if out.ndim == 2:
            out = out[None]
        if out.ndim != 3 or out.shape[1:] != (n, self.obs_dim):
            raise ConfigError(
                f"{self.where}: for {n} rows of obs_dim {self.obs_dim} the model returned "
                f"shape {list(out.shape)}; expected [K, {n}, {self.obs_dim}] or "
                f"[{n}, {self.obs_dim}]"
            )
        return out

    def first(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Every member's next states from shared states: ``[N, d]``, ``[N, ...]`` -> ``[K, N, d]``."""
        if self.per_member:
            K = self.members
            out = self._run(
                np.broadcast_to(obs, (K, *obs.shape)), np.broadcast_to(actions, (K, *actions.shape))
            )
        else:
            out = self._run(obs, actions)
        out = (out if out.ndim == 3 else out[None]).astype(np.float64)
        return out + obs[None] if self.delta else out

    def step(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Each member advances its own states: ``[K, N, d]``, actions ``[K, N, ...]`` -> ``[K, N, d]``."""
        K, N, d = states.shape
        member = np.repeat(np.arange(K), N)
        flat = self.step_rows(states.reshape(K * N, d), actions.reshape(K * N, *actions.shape[2:]), member)
        return flat.reshape(K, N, d)

    def step_rows(self, states: np.ndarray, actions: np.ndarray, member: np.ndarray) -> np.ndarray:
        """Advance each row under its own member: ``[M, d]``, ``[M, ...]``, ``[M]`` member ids -> ``[M, d]``.

        Shared-input models run once on the ``M`` rows (``[K, M, d]`` out) and each row keeps
        its member's prediction. Per-member models need ``[K, N, d]`` blocks, so ``M`` must be
        ``K * N`` with rows ordered by member.
        """
        M, d = states.shape
        if self.per_member:
            K = self.members
            out = self._run(states.reshape(K, M // K, d), actions.reshape(K, M // K, *actions.shape[1:]))
            out = out.reshape(M, d)
        else:
            out = self._run(states, actions)
            out = out[None] if out.ndim == 2 else out
            out = out[member if out.shape[0] > 1 else 0, np.arange(M)]
        out = out.astype(np.float64)
        return out + states if self.delta else out


class PythonDynamics(Dynamics):
    """A ``kind: python`` dynamics model: an operator's callable (see :mod:`interlock.plugins`).

    Interface, one call per rollout step for every row still running::

        model(observations, actions) -> next_observations

    * ``observations``: ``[N, *obs_shape]`` float64, the agent's observation shape (a highway
      agent's ``[N, V, F]`` vehicle table, CartPole's ``[N, 4]``);
    * ``actions``: ``[N]`` int64 indices (discrete) or ``[N, *action_shape]`` floats (box);
    * returns ``[N, *obs_shape]`` (one model) or ``[K, N, *obs_shape]`` (K members, e.g. the
      scenarios of an analytic model: braking or not, a lane change or not); with
      ``predicts: delta`` the change ``next - obs``.

    Rows are independent (the rollout advances ``batch x candidates x members`` rows at once;
    each row keeps its own member's prediction). A probe call on two rows at load checks the
    output shape and learns ``K``; it must not have side effects that matter.

    Args:
        fn: The loaded callable.
        obs_shape: The agent's observation shape.
        action: The agent's action space.
        predicts: ``"next_state"`` or ``"delta"``.
        where: Config location for messages.
    """

    def __init__(
        self,
        fn: Any,
        obs_shape: tuple[int, ...],
        action: ActionSpace,
        predicts: str = "next_state",
        where: str = "model",
    ) -> None:
        self.fn = fn
        self.obs_shape = tuple(obs_shape)
        self.obs_dim = int(np.prod(self.obs_shape))
        self.action = action
        self.delta = predicts == "delta"
        self.where = where
        self.per_member = False
        try:
            out = self._run(np.zeros((2, self.obs_dim)), self._probe_actions(2))
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(
                f"{where}: the probe call of the python model on 2 rows of observations "
                f"{list(self.obs_shape)} failed: {type(e).__name__}: {e}"
            ) from None
        self.members = self._check_out(out, 2).shape[0]

    def _run(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        n = len(obs)
        x = np.ascontiguousarray(obs, dtype=np.float64).reshape(n, *self.obs_shape)
        a = np.asarray(actions)
        a = a.astype(np.int64) if self.action.discrete else a.reshape(n, *self.action.shape)
        out = np.asarray(self.fn(x, a), dtype=np.float64)
        lead = out.shape[: out.ndim - len(self.obs_shape)]
        tail = out.shape[out.ndim - len(self.obs_shape) :]
        if tail != self.obs_shape or len(lead) not in (1, 2) or lead[-1] != n:
            raise ValueError(
                f"the python model returned shape {list(out.shape)} for {n} rows; expected "
                f"[{n}, {', '.join(map(str, self.obs_shape))}] or [K, {n}, ...]"
            )
        return out.reshape(*lead, self.obs_dim)


class OnnxDynamics(Dynamics):
    """Wraps an ONNX dynamics model; see the module docstring for the layouts.

    Args:
        session: An ``onnxruntime.InferenceSession``.
        obs_dim: Flattened observation length ``d``.
        action: The agent's action space (encodes actions for the model).
        predicts: ``"next_state"`` or ``"delta"`` (next = obs + output).
        obs_input, action_input, output_name: Graph names; default first/second input, first output.
        where: Config location for messages.
    """

    def __init__(
        self,
        session: Any,
        obs_dim: int,
        action: ActionSpace,
        predicts: str = "next_state",
        obs_input: str | None = None,
        action_input: str | None = None,
        output_name: str | None = None,
        where: str = "model",
    ) -> None:
        inputs = session.get_inputs()
        names = [i.name for i in inputs]
        if len(inputs) < 2 and action_input is None:
            raise ConfigError(
                f"{where}: the dynamics model needs two inputs (observation, action); it has {names}"
            )
        by_name = {i.name: i for i in inputs}
        obs_name = obs_input or names[0]
        act_name = action_input or next(n for n in names if n != obs_name)
        outs = [o.name for o in session.get_outputs()]
        out = output_name or outs[0]
        for what, name, pool in (
            ("obs_input", obs_name, names),
            ("action_input", act_name, names),
            ("output_name", out, outs),
        ):
            if name not in pool:
                raise ConfigError(f"{where}.{what} '{name}' is not in the model ({pool})")
        self.session = session
        self.where = where
        self.obs_dim = obs_dim
        self.action = action
        self.delta = predicts == "delta"
        self._obs, self._act, self._out = obs_name, act_name, out
        o, a = by_name[obs_name], by_name[act_name]
        self._obs_dtype = _np_type(o, where)
        self._act_dtype = _np_type(a, where)
        self.per_member = len(o.shape) == 3
        act_rank = len(a.shape) - (1 if self.per_member else 0)
        last = a.shape[-1] if len(a.shape) else None
        if action.discrete:
            one_hot = self._act_dtype.kind == "f" and act_rank == 2 and last == action.n and action.n > 1
            self._encode = "one_hot" if one_hot else ("index" if act_rank == 1 else "index_col")
        else:
            self._encode = "box"
        self.members = 0
        self._probe()

    def _probe(self) -> None:
        """One call on zeros: learn K and check the output shape."""
        try:
            self._probe_run()
        except ConfigError:
            raise
        except Exception as e:  # onnxruntime raises several unrelated types
            raise ConfigError(
                f"{self.where}: the dynamics model does not run on observations of "
                f"obs_dim {self.obs_dim} and this agent's actions: {e}"
            ) from None

    def _probe_run(self) -> None:
        n = 2
        obs = np.zeros((n, self.obs_dim))
        act = (
            np.zeros((n, *self.action.shape), dtype=self.action.dtype)
            if not self.action.discrete
            else (np.zeros(n, dtype=np.int64))
        )
        if self.per_member:
            dim0 = next(i for i in self.session.get_inputs() if i.name == self._obs).shape[0]
            if not isinstance(dim0, int) or dim0 <= 0:
                raise ConfigError(
                    f"{self.where}: per-member observation input [K, N, obs_dim] needs a fixed "
                    f"K; its first dimension is {dim0!r}"
                )
            self.members = dim0
            out = self._run(
                np.broadcast_to(obs, (dim0, n, self.obs_dim)), np.broadcast_to(act, (dim0, *act.shape))
            )
        else:
            out = self._run(obs, act)
        self.members = self._check_out(out, n).shape[0]

    def _encode_actions(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions)
        if self._encode == "one_hot":
            return np.eye(self.action.n, dtype=self._act_dtype)[a.astype(np.int64)]
        if self._encode == "index":
            return a.astype(self._act_dtype)
        if self._encode == "index_col":
            return a.astype(self._act_dtype)[..., None]
        lead = a.shape[: (2 if self.per_member else 1)]
        return a.reshape(*lead, -1).astype(self._act_dtype)

    def _run(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        feed = {
            self._obs: np.ascontiguousarray(obs, dtype=self._obs_dtype),
            self._act: np.ascontiguousarray(self._encode_actions(actions)),
        }
        (out,) = self.session.run([self._out], feed)
        return np.asarray(out)


class OnnxBackupPolicy:
    """The backup policy: ``[N, d]`` observations -> ``[N]`` (discrete) or ``[N, *action_shape]`` actions.

    Box actions are clipped to the action bounds (NaN stays NaN, so the engine halts on it).
    """

    def __init__(
        self,
        session: Any,
        action: ActionSpace,
        output: str = "action",
        input_name: str | None = None,
        output_name: str | None = None,
        obs_shape: tuple[int, ...] = (),
        where: str = "backup_policy",
    ) -> None:
        inputs = {i.name: i for i in session.get_inputs()}
        outs = [o.name for o in session.get_outputs()]
        self._in = input_name or next(iter(inputs))
        self._out = output_name or outs[0]
        if self._in not in inputs:
            raise ConfigError(f"{where}.input_name '{self._in}' is not an input ({list(inputs)})")
        if self._out not in outs:
            raise ConfigError(f"{where}.output_name '{self._out}' is not an output ({outs})")
        if output == "logits" and not action.discrete:
            raise ConfigError(f"{where}.output is 'logits', which needs a discrete action space")
        self.session = session
        self.action = action
        self.logits = output == "logits"
        self._dtype = _np_type(inputs[self._in], where)
        rank = len(inputs[self._in].shape)
        self._shape = obs_shape if rank == 1 + len(obs_shape) else (-1,)

    def act(self, obs: np.ndarray) -> np.ndarray:
        n = len(obs)
        x = np.ascontiguousarray(np.asarray(obs).reshape(n, *self._shape), dtype=self._dtype)
        (out,) = self.session.run([self._out], {self._in: x})
        out = np.asarray(out)
        if self.logits:
            return out.reshape(n, -1).argmax(axis=1).astype(self.action.dtype)
        if self.action.discrete:
            return out.reshape(n).astype(self.action.dtype)
        out = out.reshape(n, *self.action.shape).astype(self.action.dtype)
        return np.clip(out, self.action.low, self.action.high)


@dataclass(frozen=True)
class RolloutResult:
    """Per member and row: ``failed`` ``[K, N]`` bool, ``margin`` ``[K, N]`` int (steps before a break)."""

    failed: np.ndarray
    margin: np.ndarray

    @property
    def failing_share(self) -> np.ndarray:
        """``[N]``: share of members whose rollout fails (``failed.mean(axis=0)``, bit for bit: a float64
        count divided by K, without ``ndarray.mean``'s Python wrapper)."""
        share: np.ndarray = np.true_divide(
            np.add.reduce(self.failed, 0, dtype=np.float64), self.failed.shape[0]
        )
        return share

    @property
    def worst_margin(self) -> np.ndarray:
        """``[N]``: fewest steps before a constraint breaks, over members."""
        return self.margin.min(axis=0)


#: The (empty) signal maps of a rollout state's :class:`Row`, shared: scalar forms only read them.
_NO_SIGNALS: Mapping[str, Any] = MappingProxyType({})


class Continuation(ABC):
    """What the rollout does after the first (candidate) action.

    ``act(states [M, d], first_actions [M, ...]) -> [M, ...]`` actions for the rows still
    running; ``first_actions`` are those rows' first actions (their candidates).
    """

    @abstractmethod
    def act(self, states: np.ndarray, first_actions: np.ndarray) -> np.ndarray:
        """``[M, ...]`` actions for the ``[M, d]`` states still running."""


class PolicyContinuation(Continuation):
    """Follow a policy (the backup policy, or the agent's own) from the second step on."""

    def __init__(self, policy: OnnxBackupPolicy) -> None:
        self.policy = policy

    def act(self, states: np.ndarray, first_actions: np.ndarray) -> np.ndarray:
        return self.policy.act(states)


class RepeatContinuation(Continuation):
    """Keep taking the first action (an open-loop "commit to this action" rollout)."""

    def act(self, states: np.ndarray, first_actions: np.ndarray) -> np.ndarray:
        return first_actions


class Recoverability:
    """The rollout check.

    Args:
        dynamics: The ensemble (ONNX or a python model).
        backup: The backup policy (None when the monitor has none; the rollout then needs
            a ``continuation``).
        constraints: Conditions that must hold at every step.
        safe_set: Condition the rollout must reach (None: surviving the horizon suffices).
        horizon: ``H``, steps after the proposed action.
        continuation: What the rollout follows after the first action; default: the backup policy.
    """

    def __init__(
        self,
        dynamics: Dynamics,
        backup: OnnxBackupPolicy | None,
        constraints: list[BatchedCondition],
        safe_set: BatchedCondition | None,
        horizon: int,
        continuation: Continuation | None = None,
    ) -> None:
        if continuation is None:
            if backup is None:
                raise ValueError("a rollout needs a backup policy or a continuation")
            continuation = PolicyContinuation(backup)
        self.dynamics = dynamics
        self.backup = backup
        self.continuation = continuation
        self.constraints = constraints
        self.safe_set = safe_set
        self.horizon = horizon
        # The scalar forms of every condition (None: some condition has none), for a few states.
        forms = [getattr(getattr(c, "vectorized", None), "scalar", None) for c in constraints]
        safe = getattr(getattr(safe_set, "vectorized", None), "scalar", None)
        self._scalar: tuple[list[Callable[[Row], Any]], Callable[[Row], Any] | None] | None = (
            ([f for f in forms if f is not None], safe)
            if all(f is not None for f in forms) and (safe_set is None or safe is not None)
            else None
        )

    def _ok(self, flat: np.ndarray) -> np.ndarray:
        ok = np.isfinite(flat).all(axis=1)
        for c in self.constraints:
            ok &= c(flat)
        return ok

    def checks(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Where ``[M, d]`` states keep every constraint (finite too) and where they are in the safe
        set (None without one): ``[M]`` bool each. Up to ``BatchedCondition.SCALAR_ROWS`` states
        (a rollout of one row) go state by state through the conditions' scalar forms, with the
        same answers as the numpy forms."""
        if self._scalar is not None and len(states) <= BatchedCondition.SCALAR_ROWS:
            conds, safe = self._scalar
            ok, reach = [], []
            for values in states.tolist():
                row = Row(values, None, None, _NO_SIGNALS, _NO_SIGNALS)  # the states have no signals
                good = all(map(math.isfinite, values))
                if good:
                    for c in conds:
                        if not c(row):
                            good = False
                            break
                ok.append(good)
                if safe is not None:
                    reach.append(bool(safe(row)))
            return np.array(ok, dtype=bool), np.array(reach, dtype=bool) if safe is not None else None
        return self._ok(states), self.safe_set(states) if self.safe_set is not None else None

    def rollout(self, obs: np.ndarray, actions: np.ndarray, bias: np.ndarray | None = None) -> RolloutResult:
        """Check every row's first action.

        Each step evaluates the constraints and the safe set on the rollouts still running,
        then advances those (shared-input models) or all of them (per-member models) with one
        continuation call and one dynamics call; it stops once every rollout has recovered
        or failed.

        Args:
            obs: ``[N, obs_dim]`` current states.
            actions: ``[N]`` (discrete) or ``[N, *action_shape]`` first actions.
            bias: ``[N, obs_dim]`` added to every predicted next state of row ``n`` (the online
                correction: the episode's mean residual, actual minus predicted); None: none.
        """
        obs = np.asarray(obs, dtype=np.float64).reshape(len(obs), -1)
        actions = np.asarray(actions)
        first = self.dynamics.first(obs, actions)
        K, N, d = first.shape
        row_bias = None
        if bias is not None:
            b = np.asarray(bias, dtype=np.float64).reshape(N, d)
            # Non-finite corrections would turn every rollout into a failure; treat them as none.
            row_bias = np.tile(np.where(np.isfinite(b), b, 0.0), (K, 1))
        flat = first.reshape(K * N, d).copy()
        if row_bias is not None:
            flat += row_bias
        # Each flat row's member and first action: needed only once a rollout runs past step 1
        # (most end there), so built then.
        member: np.ndarray | None = None
        first_actions: np.ndarray | None = None
        H = self.horizon
        done = np.zeros(K * N, dtype=bool)
        failed = np.zeros(K * N, dtype=bool)
        margin = np.empty(K * N, dtype=np.int64)
        margin.fill(H)  # (np.full's Python wrapper costs more than the fill at one row)
        for t in range(1, H + 1):
            idx = np.flatnonzero(~done)
            x = flat[idx]
            ok, safe = self.checks(x)
            broke = idx[~ok]
            failed[broke] = True
            margin[broke] = t - 1
            done[broke] = True
            if safe is not None:
                done[idx[ok & safe]] = True
            if done.all() or t == H:
                break
            if member is None or first_actions is None:
                member = np.repeat(np.arange(K), N)
                first_actions = np.tile(
                    actions.reshape(N, *actions.shape[1:]), (K,) + (1,) * (actions.ndim - 1)
                )
            rows = np.arange(K * N) if self.dynamics.per_member else np.flatnonzero(~done)
            act = self.continuation.act(flat[rows], first_actions[rows])
            nxt = self.dynamics.step_rows(flat[rows], act, member[rows])
            flat[rows] = nxt if row_bias is None else nxt + row_bias[rows]
        if self.safe_set is not None:
            failed |= ~done
        return RolloutResult(failed=failed.reshape(K, N), margin=margin.reshape(K, N))
