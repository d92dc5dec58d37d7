"""CEL conditions over observations, evaluated on whole batches of states.

Rollouts check ``K * batch`` states per step, too many for one CEL evaluation per
row on the request path. Conditions in the simple, common form are compiled to numpy
by :mod:`interlock.policies.cel_numpy`, the compiler the policy's rules use too:
``&&`` / ``||`` / ``!`` of comparisons between expressions of ``obs[i]``,
``math.abs(...)`` and number literals (``math.abs(obs[2]) < 0.2``,
``obs[0] + 0.5 * obs[1] <= 1.0``). Anything else is evaluated row by row with
CEL. Every condition is first compiled and type-checked by CEL
(:mod:`interlock.policies.cel`), which stays the definition of its meaning: the
numpy form is checked against CEL on probe states at load and dropped if they
ever disagree.

Conditions see only ``obs`` (list of double, the flattened state); reading past its
end is a config error.
"""

from __future__ import annotations

import numpy as np

from interlock.policies.cel import CelEvalError, CelPredicate, T, cel, ext_math
from interlock.policies.cel_numpy import Columns, NumpyCondition, Row, Scope, compile_checked


def obs_env():
    """A CEL environment with the single variable ``obs`` (list of double) and the math extension."""
    return cel.NewEnv(variables={"obs": T.List(T.DOUBLE)}, extensions=[ext_math.ExtMath()])


def _obs_rows(cols: Columns) -> list[dict[str, object]]:
    """CEL activations of the states in ``cols``: ``{"obs": [...]}`` a row."""
    return [{"obs": row} for row in cols.obs.tolist()]


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
    #: Up to this many states (a rollout of one row: one per member), the scalar form is evaluated
    #: state by state: cheaper than numpy's fixed cost per operation, and the same answers.
    SCALAR_ROWS = 16

    def __init__(self, source: str, obs_dim: int, where: str) -> None:
        self.source = source
        self.where = where
        self.obs_dim = obs_dim
        self._cel = CelPredicate(obs_env(), source, where)
        #: The numpy form (None: row by row through CEL).
        self.vectorized: NumpyCondition | None = compile_checked(
            source, Scope(obs_dim, where=where), self._cel, _obs_rows, self.PROBES, seed=0
        )

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
        scalar = self.vectorized.scalar
        if scalar is not None and len(x) <= self.SCALAR_ROWS:
            return np.array([bool(scalar(Row(r))) for r in x.tolist()], dtype=bool)
        return self.vectorized(Columns(len(x), x))
