"""The transitions file (``.npz``) that ``interlock ensemble train`` and ``interlock calibrate`` read.

Arrays, one row per environment step (N rows):

=================  ====================  =======================================================
key                shape / dtype         meaning
=================  ====================  =======================================================
``obs``            [N, obs_dim] float    observation the agent acted on (required)
``action``         [N] int or            action taken: an index for discrete spaces,
                   [N, act_dim] float    a vector for box spaces (required)
``reward``         [N] float             reward received (q, when ``q_target`` is absent)
``next_obs``       [N, obs_dim] float    observation after the step (dynamics)
``terminated``     [N] bool              the episode ended in a terminal state
``truncated``      [N] bool              the episode was cut (time limit); optional
``episode``        [N] int               episode number; optional, used to split held-out
                                         data by episode and to compute returns
``q_target``       [N] or [N, n] float   Q target for the taken action (or for every
                                         action); q kind. Default: discounted returns
``action_label``   [N] int               action the policy should take; policy kind.
                                         Default: ``action``
=================  ====================  =======================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interlock.ensembles.common import EnsembleError
from interlock.storage.npz import read_npz

KINDS = ("q", "policy", "dynamics")


@dataclass
class Transitions:
    """Validated arrays of a transitions file (see the module docstring for shapes)."""

    obs: np.ndarray
    action: np.ndarray
    arrays: dict[str, np.ndarray]
    source: str = "<arrays>"

    def __len__(self) -> int:
        return len(self.obs)

    @property
    def discrete(self) -> bool:
        return self.action.ndim == 1 and self.action.dtype.kind in "iu"

    def get(self, key: str) -> np.ndarray | None:
        return self.arrays.get(key)

    def episodes(self) -> np.ndarray:
        """``[N]`` episode number of each row: the ``episode`` array, else counted from end flags."""
        ep = self.arrays.get("episode")
        if ep is not None:
            return np.asarray(ep, np.int64)
        ends = np.zeros(len(self), bool)
        for key in ("terminated", "truncated"):
            if key in self.arrays:
                ends |= np.asarray(self.arrays[key], bool)
        return np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64)


def load_transitions(path: str | Path | dict[str, np.ndarray]) -> Transitions:
    """Read and check a transitions ``.npz`` (or a dict of arrays).

    Raises:
        EnsembleError: the file is missing, lacks ``obs`` or ``action``, or arrays have
            different numbers of rows.
    """
    if isinstance(path, dict):
        arrays, source = {k: np.asarray(v) for k, v in path.items()}, "<arrays>"
    else:
        p = Path(path)
        missing, unreadable = f"transitions file {p} does not exist", f"{p} is not a readable .npz file"
        arrays, source = read_npz(p, EnsembleError, missing, unreadable), str(p)
    for key in ("obs", "action"):
        if key not in arrays:
            raise EnsembleError(
                f"{source} has no '{key}' array (it has: {', '.join(sorted(arrays)) or 'nothing'}); "
                "see docs/ensembles.md for the layout"
            )
    n = len(arrays["obs"])
    if n == 0:
        raise EnsembleError(f"{source}: 'obs' is empty")
    for k, v in arrays.items():
        if v.ndim == 0 or len(v) != n:
            raise EnsembleError(f"{source}: '{k}' has {v.shape[0] if v.ndim else 0} rows, 'obs' has {n}")
    obs = arrays["obs"]
    if obs.ndim == 1:
        obs = obs[:, None]
    if obs.dtype.kind != "f" or not np.isfinite(obs).all():
        raise EnsembleError(f"{source}: 'obs' must be finite floats, got {obs.dtype} with NaN/Inf or ints")
    return Transitions(obs.reshape(n, -1), np.asarray(arrays["action"]), arrays, source)


def discounted_returns(reward: np.ndarray, episode: np.ndarray, gamma: float) -> np.ndarray:
    """``[N]`` discounted return from each step to the end of its episode (rows in time order)."""
    out = np.zeros(len(reward), np.float64)
    acc = 0.0
    for i in range(len(reward) - 1, -1, -1):
        if i == len(reward) - 1 or episode[i + 1] != episode[i]:
            acc = 0.0
        acc = float(reward[i]) + gamma * acc
        out[i] = acc
    return out


def split_indices(data: Transitions, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(fit, held_out)``, split by whole episodes when there are at least 4 of them."""
    if not 0.0 < holdout < 1.0:
        raise EnsembleError(f"the held-out fraction must be in (0, 1), got {holdout}")
    rng = np.random.default_rng(seed)
    ep = data.episodes()
    uniq = np.unique(ep)
    if len(uniq) >= 4:
        held = rng.permutation(uniq)[: max(1, round(holdout * len(uniq)))]
        mask = np.isin(ep, held)
    else:
        mask = np.zeros(len(data), bool)
        mask[rng.permutation(len(data))[: max(1, round(holdout * len(data)))]] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)
