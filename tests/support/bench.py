"""The CI smoke harness shared by the ``interlock bench`` tests (perf; safety uses it too).

``run_quick("perf", tmp_path)`` runs ``interlock bench perf --quick --json FILE --docs DIR`` in a
subprocess from the checkout, checks it exits 0, and returns the parsed JSON; ``check_docs`` checks the
generated section of DIR/benchmarks.md (markers once, hand-written text kept, every PNG it links exists
and is a real image). No timing assertions: figures live in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from interlock.bench.docs import section_markers

ROOT = Path(__file__).resolve().parents[2]
KEEP = "hand-written text that must survive"


def run_quick(name: str, tmp_path: Path, timeout: float = 300) -> tuple[dict[str, Any], Path, str]:
    """Run ``interlock bench NAME --quick``; returns (JSON result, docs dir, stdout)."""
    out, docs = tmp_path / f"{name}.json", tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "benchmarks.md").write_text(f"# Benchmarks\n\n{KEEP}\n")
    cmd = [
        sys.executable,
        "-m",
        "interlock.cli",
        "bench",
        name,
        "--quick",
        "--json",
        str(out),
        "--docs",
        str(docs),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), docs, proc.stdout


def check_docs(docs: Path, name: str, min_images: int = 1) -> str:
    """The generated section is well formed; returns the markdown."""
    md = (docs / "benchmarks.md").read_text()
    begin, end = section_markers(name)
    assert KEEP in md
    assert md.count(begin) == 1 and md.count(end) == 1 and md.index(begin) < md.index(end)
    section = md.split(begin, 1)[1].split(end, 1)[0]
    assert re.search(r"^\|.*\|$", section, re.M), "no markdown table"
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", section)
    assert len(images) >= min_images
    for rel in images:
        data = (docs / rel).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, rel
    return md


def positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
