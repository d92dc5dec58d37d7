"""The ``uncertainty`` monitor: how much the members of a fused ensemble disagree, per row.

One session run per batch evaluates every member (``[K, batch, ...]``); the
scores come from :mod:`interlock.ensembles.scores`:

========  ==========================  ==============================================
ensemble  signals                     meaning
========  ==========================  ==============================================
q         ``q_std``, ``q_std_ratio``  std over members of Q(s, a) for the proposed
                                      action; and its ratio to the spread of mean Q
                                      over actions
policy    ``mutual_info``,            epistemic part of the policy's entropy (nats);
          ``disagreement``            share of members that would not pick the action
dynamics  ``disagreement``,           std over members of the predicted next state,
          ``disagreement_max``        divided per dimension by its typical change;
                                      mean and max over dimensions
========  ==========================  ==============================================

Thresholds come from ``thresholds:`` in the config or from the file
``interlock calibrate`` writes (``thresholds_file:``); inline values win. A
signal without a threshold is a config error at load: an uncalibrated monitor
must not pass silently.

Example config::

    - kind: uncertainty
      name: q_doubt
      model: q_ensemble.onnx
      ensemble: q
      thresholds_file: thresholds.json
"""

from __future__ import annotations

from typing import Any

import numpy as np

from interlock.batch import Batch, SignalBatch
from interlock.ensembles.common import META_STATE_SCALE, parse_json_list
from interlock.ensembles.model import EnsembleModel, file_sha256
from interlock.ensembles.scores import (
    SIGNALS,
    dynamics_scores,
    dynamics_scores_row,
    policy_scores,
    q_scores,
    q_scores_row,
)
from interlock.ensembles.thresholds import read_thresholds_file
from interlock.errors import ConfigError
from interlock.monitors.base import Monitor


class UncertaintyMonitor(Monitor):
    """Ensemble disagreement as signals (see the module docstring).

    Args:
        name: Signal prefix.
        spaces: The agent's spaces (q and policy ensembles need a discrete action space).
        runtime: Shared ONNX sessions.
        model: Path of the fused ensemble.
        ensemble: ``q``, ``policy`` or ``dynamics``.
        output_name: Output to read (default: the first).
        policy_output: ``logits`` or ``probs`` (policy ensembles).
        state_scale: ``[state_dim]`` per-dimension scale for dynamics ensembles; default:
            the model's ``interlock.ensemble.state_scale`` metadata, else 1.
        thresholds: Inline thresholds per signal.
        thresholds_file: The file ``interlock calibrate`` writes.
        require_thresholds: False only for calibration, which computes raw scores.
        where: Config location for messages.
    """

    kind = "uncertainty"

    def __init__(
        self,
        name: str,
        spaces: Any,
        runtime: Any,
        model: str,
        ensemble: str,
        output_name: str | None = None,
        policy_output: str = "logits",
        state_scale: list[float] | None = None,
        thresholds: dict[str, float] | None = None,
        thresholds_file: str | None = None,
        require_thresholds: bool = True,
        where: str = "uncertainty",
    ) -> None:
        super().__init__(name, spaces, runtime)
        if ensemble not in SIGNALS:
            raise ConfigError(f"{where}.ensemble must be one of {', '.join(SIGNALS)}, not '{ensemble}'")
        if ensemble in ("q", "policy") and not spaces.action.discrete:
            raise ConfigError(
                f"{where}: a {ensemble} ensemble scores discrete actions, but this agent's action "
                f"space is a box; "
                "use a dynamics ensemble (obs, action -> next state)"
            )
        self.ensemble = ensemble
        self.where = where
        self.policy_output = policy_output
        self.state_scale = None if state_scale is None else np.asarray(state_scale, np.float64)
        self.inline = dict(thresholds or {})
        unknown = sorted(set(self.inline) - set(SIGNALS[ensemble]))
        if unknown:
            raise ConfigError(
                f"{where}.thresholds names {', '.join(unknown)}, which a {ensemble} ensemble does "
                f"not produce "
                f"(signals: {', '.join(SIGNALS[ensemble])})"
            )
        self.thresholds_file = thresholds_file
        self.require_thresholds = require_thresholds
        self.thresholds: dict[str, float] = {}
        self.model = EnsembleModel(runtime, model, where, output_name, needs_action=ensemble == "dynamics")

    @property
    def signal_names(self) -> list[str]:
        return list(SIGNALS[self.ensemble])

    def load(self) -> None:
        self.model.load()
        n_out = self.model.last_dim()
        if self.ensemble in ("q", "policy") and n_out is not None and n_out != self.spaces.action.n:
            raise ConfigError(
                f"{self.where}.model {self.model.path} outputs {n_out} values per member, but the "
                f"action space "
                f"has {self.spaces.action.n} actions"
            )
        if self.ensemble == "dynamics" and self.state_scale is None:
            scale = parse_json_list(self.model.metadata.get(META_STATE_SCALE))
            self.state_scale = None if scale is None else np.asarray(scale, np.float64)
        if self.state_scale is not None and n_out is not None and self.state_scale.size != n_out:
            raise ConfigError(
                f"{self.where}.state_scale has {self.state_scale.size} values; the model predicts "
                f"{n_out} dimensions"
            )
        self.thresholds = self._load_thresholds()
        self.ready = True

    def _load_thresholds(self) -> dict[str, float]:
        found: dict[str, float] = {}
        if self.thresholds_file and (
            self.require_thresholds or self.runtime.resolve(self.thresholds_file).is_file()
        ):
            path = self.runtime.resolve(self.thresholds_file)
            data = read_thresholds_file(path, self.where)
            entry = data["monitors"].get(self.name)
            if entry is None:
                raise ConfigError(
                    f"{self.where}.thresholds_file {path} has no entry for monitor '{self.name}' "
                    f"(it has: {', '.join(data['monitors']) or 'none'}); re-run `interlock calibrate`"
                )
            sha = entry.get("model_sha256")
            if self.require_thresholds and sha and sha != file_sha256(self.model.resolved):
                raise ConfigError(
                    f"{self.where}: the thresholds in {path} were calibrated for another version of "
                    f"{self.model.path} (sha256 {sha[:12]}...); re-run `interlock calibrate` for this model"
                )
            found.update(
                {k: float(v) for k, v in entry.get("thresholds", {}).items() if k in self.signal_names}
            )
        found.update(self.inline)
        missing = [s for s in self.signal_names if s not in found]
        if missing and self.require_thresholds:
            raise ConfigError(
                f"{self.where}: no threshold for signal(s) {', '.join(missing)}; set thresholds: in "
                f"the config "
                "or run `interlock calibrate --config FILE --agent ID --data in_dist.npz` and point "
                "thresholds_file: at its output"
            )
        return found

    def scores(self, batch: Batch) -> dict[str, np.ndarray]:
        """Raw ``[batch]`` scores per signal (one session run)."""
        if self.ensemble == "dynamics":
            out = self.model.run(batch.observations, batch.actions)
            return dynamics_scores(out, self.state_scale)
        out = self.model.run(batch.observations)
        if self.ensemble == "q":
            return q_scores(out, batch.actions)
        return policy_scores(out, batch.actions, self.policy_output)

    def check_row(self, batch: Batch) -> list[tuple[float, float, bool]] | None:
        """One row's signals from one session run, the scores on Python floats where
        :func:`~interlock.ensembles.scores.q_scores_row` / ``dynamics_scores_row`` apply (else the numpy
        scores of the same outputs); None for policy ensembles (:meth:`check` does them)."""
        if self.ensemble == "policy" or len(batch) != 1:
            return None
        names = SIGNALS[self.ensemble]
        row: tuple[float, float] | None = None
        if self.ensemble == "dynamics":
            out = self.model.run(batch.observations, batch.actions)
            if out.dtype.kind == "f":
                row = dynamics_scores_row(out, self.state_scale)
            if row is None:
                scored = dynamics_scores(out, self.state_scale)
                row = (float(scored[names[0]][0]), float(scored[names[1]][0]))
        else:
            out = self.model.run(batch.observations)
            if out.dtype.kind == "f":
                row = q_scores_row(out, int(batch.actions.reshape(-1)[0]))
            if row is None:
                scored = q_scores(out, batch.actions)
                row = (float(scored[names[0]][0]), float(scored[names[1]][0]))
        nan = float("nan")
        first, second = row
        t1, t2 = float(self.thresholds.get(names[0], nan)), float(self.thresholds.get(names[1], nan))
        # SignalBatch.above of one value: tripped unless value <= threshold (NaN is tripped: fail closed).
        return [(first, t1, not first <= t1), (second, t2, not second <= t2)]

    def check(self, batch: Batch) -> dict[str, SignalBatch]:
        values = self.scores(batch)
        # A missing threshold (calibration mode only) is NaN: tripped everywhere, never silently passing.
        return {
            s: SignalBatch.above(values[s], self.thresholds.get(s, float("nan"))) for s in self.signal_names
        }
