"""A fused ensemble opened through the shared :class:`~interlock.runtime.ModelRuntime`.

Used by the ``uncertainty`` monitor and the ``robust`` / ``quantilizer`` fallbacks:
one session run per batch gives every member's output ``[K, batch, ...]``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from interlock.ensembles.common import ORT_TO_NUMPY, read_metadata
from interlock.errors import ConfigError


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class EnsembleModel:
    """Loads a fused ensemble and runs it on a batch.

    Args:
        runtime: Shared sessions (one per file).
        path: The ``.onnx`` file, relative to the config file.
        where: Config location for error messages.
        output_name: Output to read; default the first.
        needs_action: The model also takes the action (dynamics ensembles).
    """

    def __init__(
        self, runtime: Any, path: str, where: str, output_name: str | None = None, needs_action: bool = False
    ) -> None:
        self.runtime = runtime
        self.path = path
        self.where = where
        self.output_name = output_name
        self.needs_action = needs_action
        self.metadata: dict[str, str] = {}
        self.members: int | None = None

    def load(self) -> None:
        sess = self.runtime.session(self.path, what=f"{self.where}.model")
        inputs = sess.get_inputs()
        outputs = [o.name for o in sess.get_outputs()]
        want = 2 if self.needs_action else 1
        if len(inputs) != want:
            names = ", ".join(i.name for i in inputs)
            raise ConfigError(
                f"{self.where}.model {self.path} has {len(inputs)} input(s) ({names}); this ensemble kind "
                f"needs {want}: " + ("obs and action" if self.needs_action else "obs")
            )
        by_name = {i.name: i for i in inputs}
        obs = by_name.get("obs", inputs[0])
        self._obs = obs.name
        self._obs_dtype = ORT_TO_NUMPY.get(obs.type, np.float32)
        self._obs_flat = obs.shape is not None and len(obs.shape) == 2
        if self.needs_action:
            act = by_name.get("action", next(i for i in inputs if i.name != obs.name))
            self._act = act.name
            self._act_dtype = ORT_TO_NUMPY.get(act.type, np.float32)
        out = self.output_name or outputs[0]
        if out not in outputs:
            raise ConfigError(f"{self.where}.output_name '{out}' is not an output of {self.path} ({outputs})")
        shape = next(o.shape for o in sess.get_outputs() if o.name == out)
        if shape is not None and len(shape) < 3:
            raise ConfigError(
                f"{self.where}.model {self.path}: output '{out}' has shape {shape}, not [members, "
                f"batch, ...]; "
                "fuse the members first with `interlock ensemble compile`"
            )
        if shape and isinstance(shape[0], int):
            if shape[0] < 2:
                raise ConfigError(
                    f"{self.where}.model {self.path} has {shape[0]} member(s); an ensemble needs 2+"
                )
            self.members = shape[0]
        self.out_shape = shape
        self._out = out
        self._session = sess
        self.metadata = read_metadata(sess)
        self.resolved = self.runtime.resolve(self.path)

    def last_dim(self) -> int | None:
        """The static size of the output's last axis (number of actions for Q / policy), if known."""
        d = self.out_shape[-1] if self.out_shape else None
        return d if isinstance(d, int) else None

    def require_q_values(self, n_actions: int) -> None:
        """Raise ConfigError unless the output's last axis (when static) has one Q-value per action."""
        n = self.last_dim()
        if n is not None and n != n_actions:
            raise ConfigError(
                f"{self.where}.model {self.path} gives {n} Q-values per row; the space has "
                f"{n_actions} actions"
            )

    def run(self, observations: np.ndarray, actions: np.ndarray | None = None) -> np.ndarray:
        """``[K, batch, ...]`` member outputs for ``observations [batch, *obs_shape]``."""
        n = len(observations)
        obs = observations.reshape(n, -1) if self._obs_flat else observations
        feeds: dict[str, np.ndarray] = {self._obs: np.ascontiguousarray(obs, dtype=self._obs_dtype)}
        if self.needs_action:
            a = np.asarray(actions)
            if a.ndim > 1:
                a = a.reshape(n, -1)
            feeds[self._act] = np.ascontiguousarray(a, dtype=self._act_dtype)
        (out,) = self._session.run([self._out], feeds)
        out = np.asarray(out)
        if out.ndim < 3 or out.shape[1] != n:
            raise RuntimeError(
                f"ensemble {self.path} returned shape {list(out.shape)} for a batch of {n}; "
                "expected [members, batch, ...]"
            )
        return out
