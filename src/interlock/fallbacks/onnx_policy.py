"""The ``onnx_policy`` fallback: a backup policy exported to ONNX."""

from __future__ import annotations

import numpy as np

from interlock.errors import ConfigError
from interlock.fallbacks.base import Fallback

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class OnnxPolicyFallback(Fallback):
    """Runs ``observations [batch, *obs_shape]`` through the model in one call.

    With ``output: logits`` the output ``[batch, n]`` is reduced by argmax (discrete
    action spaces); with ``output: action`` it must be ``[batch, *action_shape]``.
    Clipping is not applied here: an out-of-space action makes the decision HALT,
    which is what an operator wants to hear about.
    """

    kind = "onnx_policy"

    def __init__(
        self,
        name,
        spaces,
        runtime,
        model: str,
        output: str = "action",
        input_name: str | None = None,
        output_name: str | None = None,
        where: str = "fallback",
    ) -> None:
        super().__init__(name, spaces, runtime)
        self.model = model
        self.output = output
        self._input_name = input_name
        self._output_name = output_name
        self.where = where
        if output == "logits" and not spaces.action.discrete:
            raise ConfigError(f"{where}.output is 'logits', which needs a discrete action space")

    def load(self) -> None:
        sess = self.runtime.session(self.model, what=f"{self.where}.model")
        inputs = {i.name: i for i in sess.get_inputs()}
        outputs = [o.name for o in sess.get_outputs()]
        name = self._input_name or next(iter(inputs))
        if name not in inputs:
            raise ConfigError(
                f"{self.where}.input_name '{name}' is not an input of {self.model} ({list(inputs)})"
            )
        out = self._output_name or outputs[0]
        if out not in outputs:
            raise ConfigError(
                f"{self.where}.output_name '{out}' is not an output of {self.model} ({outputs})"
            )
        self._session = sess
        self._in = name
        self._out = out
        self._in_dtype = _ORT_TO_NUMPY.get(inputs[name].type, np.float32)
        self.ready = True

    def propose(self, batch, signals) -> np.ndarray:
        obs = np.ascontiguousarray(batch.observations, dtype=self._in_dtype)
        (out,) = self._session.run([self._out], {self._in: obs})
        space = self.spaces.action
        if self.output == "logits":
            return np.asarray(out).reshape(len(batch), -1).argmax(axis=1).astype(space.dtype)
        return np.asarray(out).reshape(len(batch), *space.shape).astype(space.dtype)
