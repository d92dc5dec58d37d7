"""Shared pieces of the ensemble tools: the error type, metadata keys, ORT type names."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from interlock.errors import InterlockError

#: Metadata keys written into fused ensembles (``ModelProto.metadata_props``).
META_MEMBERS = "interlock.ensemble.members"
META_STRATEGY = "interlock.ensemble.strategy"
META_KIND = "interlock.ensemble.kind"
#: JSON list: per-dimension scale of the predicted next state (dynamics ensembles).
META_STATE_SCALE = "interlock.ensemble.state_scale"

#: onnxruntime input/output type strings -> numpy dtypes.
ORT_TO_NUMPY: dict[str, type] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
}


class EnsembleError(InterlockError):
    """An ensemble cannot be built, trained, verified or used; the message says what to change."""

    reason = "ensemble"


def read_metadata(session: Any) -> dict[str, str]:
    """``metadata_props`` of an onnxruntime session's model as a dict."""
    return dict(session.get_modelmeta().custom_metadata_map)


def parse_json_list(text: str | None) -> list[float] | None:
    if not text:
        return None
    value = json.loads(text)
    return [float(v) for v in value]
