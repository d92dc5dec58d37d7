"""highway-env with the CPSS target speeds (0, 5, ..., 30 m/s): :mod:`interlock.bench.safety.highway`
run with ``speeds="cpss"``, so that ``interlock bench safety`` reports both speed settings (issue 11)."""

from __future__ import annotations

from typing import Any

from interlock.bench.safety import highway


def run(quick: bool, seeds: int, progress: bool) -> dict[str, Any]:
    """:func:`interlock.bench.safety.highway.run` with CPSS target speeds and the bench's design."""
    return highway.run(quick, seeds, progress, speeds="cpss")
