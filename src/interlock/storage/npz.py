"""Reading every array of an ``.npz`` file, with errors that name the file (transitions, tabular models),
and writing one atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def read_npz(path: Path, error: type[Exception], missing: str, unreadable: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path`` by name, read eagerly (no pickles).

    Raises:
        error: ``error(missing)`` when there is no such file; ``error(f"{unreadable}: {cause}")``
            when it cannot be read as ``.npz``.
    """
    if not path.is_file():
        raise error(missing)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError
        raise error(f"{unreadable}: {e}") from None


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a compressed ``.npz`` at exactly ``path`` (no ``.npz`` appended), atomically:
    a temporary file in the same folder renamed into place, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # a file object: numpy appends no suffix to it
            payload: dict[str, Any] = dict(arrays)  # numpy's stubs type **kwds like allow_pickle
            np.savez_compressed(f, **payload)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
