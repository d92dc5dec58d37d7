"""Reading every array of an ``.npz`` file, with errors that name the file (transitions, tabular models)."""

from __future__ import annotations

from pathlib import Path

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
