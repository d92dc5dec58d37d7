"""Shared ONNX Runtime sessions: one session per model file, providers from config.

Every monitor and fallback that names the same ``.onnx`` file gets the same
session, so an ensemble used by a monitor and a robust fallback is loaded once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from interlock.config import LoadedConfig, OnnxConfig
from interlock.errors import ConfigError

log = logging.getLogger(__name__)


def available_providers(wanted: list[str]) -> list[str]:
    """The configured providers that this onnxruntime build offers, in order (CPU always last resort)."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in have]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class ModelRuntime:
    """Opens ONNX models relative to the config file and caches one session per file."""

    def __init__(self, onnx: OnnxConfig, base_dir: Path | None = None) -> None:
        self.onnx = onnx
        self.base_dir = base_dir or Path.cwd()
        self._sessions: dict[Path, object] = {}
        self._lock = threading.Lock()
        self.providers = available_providers(onnx.providers)

    @classmethod
    def for_config(cls, loaded: LoadedConfig) -> ModelRuntime:
        return cls(loaded.config.onnx, loaded.base_dir)

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def session(self, path: str | Path, what: str = "model"):
        """The shared ``onnxruntime.InferenceSession`` for ``path``.

        Raises:
            ConfigError: the file is missing or is not a loadable ONNX model.
        """
        import onnxruntime as ort

        resolved = self.resolve(path)
        with self._lock:
            cached = self._sessions.get(resolved)
            if cached is not None:
                return cached
            if not resolved.is_file():
                raise ConfigError(f"{what}: model file {resolved} does not exist")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.onnx.intra_op_threads
            opts.inter_op_num_threads = self.onnx.inter_op_threads
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            spin = "1" if self.onnx.allow_spinning else "0"
            opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
            opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
            try:
                sess = ort.InferenceSession(str(resolved), sess_options=opts, providers=self.providers)
            except Exception as e:  # onnxruntime raises several unrelated types
                raise ConfigError(f"{what}: cannot load ONNX model {resolved}: {e}") from None
            log.info("loaded %s from %s on %s", what, resolved, sess.get_providers()[0])
            self._sessions[resolved] = sess
            return sess
