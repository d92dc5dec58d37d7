"""The thresholds file written by ``interlock calibrate`` and read by the ``uncertainty`` monitor.

JSON (which is also YAML)::

    {
      "format": "interlock-thresholds/1",
      "agent": "cartpole",
      "false_alarm_rate": 0.01,
      "monitors": {
        "uncertainty": {
          "model": "q_ensemble.onnx",
          "model_sha256": "3f1c...",
          "thresholds": {"q_std": 1.93, "q_std_ratio": 0.88},
          "held_out_false_alarm_rate": {"q_std": 0.011, "q_std_ratio": 0.009},
          "samples": {"calibration": 14000, "held_out": 6000}
        }
      }
    }

The monitor refuses to load thresholds calibrated for another model file
(``model_sha256``): a retrained ensemble needs a new calibration.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from interlock.ensembles.common import EnsembleError
from interlock.errors import ConfigError

FORMAT = "interlock-thresholds/1"


def read_thresholds_file(path: Path, where: str) -> dict[str, Any]:
    """The parsed file; raises ConfigError saying how to create it when it is missing or malformed."""
    if not path.is_file():
        raise ConfigError(
            f"{where}.thresholds_file {path} does not exist; create it with "
            "`interlock calibrate --config FILE --agent ID --data in_dist.npz`"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}.thresholds_file {path} is not a readable JSON file: {e}") from None
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not isinstance(data.get("monitors"), dict)
    ):
        raise ConfigError(f"{where}.thresholds_file {path} is not an Interlock thresholds file ({FORMAT})")
    return data


def read_monitor_entry(path: Path, monitor: str, where: str) -> dict[str, Any]:
    """``monitor``'s entry of the thresholds file at ``path``; raises ConfigError when it has none."""
    data = read_thresholds_file(path, where)
    entry: dict[str, Any] | None = data["monitors"].get(monitor)
    if entry is None:
        raise ConfigError(
            f"{where}.thresholds_file {path} has no entry for monitor '{monitor}' (it has: "
            f"{', '.join(data['monitors']) or 'none'}); re-run `interlock calibrate`"
        )
    return entry


def conformal_threshold(scores: np.ndarray, rate: float) -> float:
    """The ``ceil((n + 1)(1 - rate))``-th smallest score (the largest if that exceeds n)."""
    v = np.sort(np.asarray(scores, np.float64))
    if v.size == 0:
        raise EnsembleError("no calibration scores")
    k = min(math.ceil((v.size + 1) * (1.0 - rate)), v.size)
    return float(v[k - 1])


def update_thresholds_file(path: Path, agent: str, rate: float, monitors: dict[str, dict[str, Any]]) -> None:
    """Write (or merge into) the thresholds file: entries of other monitors are kept."""
    data: dict[str, Any] = {"format": FORMAT, "agent": agent, "false_alarm_rate": rate, "monitors": {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if (
                isinstance(old, dict)
                and old.get("format") == FORMAT
                and isinstance(old.get("monitors"), dict)
            ):
                data["monitors"] = old["monitors"]
        except ValueError:
            pass
    data["monitors"].update(monitors)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
