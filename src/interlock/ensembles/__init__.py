"""Uncertainty ensembles: fuse K ONNX members into one graph, train them, calibrate their thresholds.

* :mod:`interlock.ensembles.compile` fuses members (``interlock ensemble compile``).
* :mod:`interlock.ensembles.train` trains members with torch (``interlock ensemble train``, extra ``train``).

Calibration (setting an ``uncertainty`` monitor's thresholds from in-distribution data,
``interlock calibrate``) runs the monitor itself, so it lives beside it in
:mod:`interlock.monitors.calibrate`: monitors depend on ensembles, never the reverse.
* :mod:`interlock.ensembles.scores` computes the uncertainty scores from member outputs.

A fused ensemble has the member inputs and outputs with a leading member axis on
every output: ``[K, batch, ...]``.
"""

from __future__ import annotations

from interlock.ensembles.common import EnsembleError

__all__ = ["EnsembleError"]
