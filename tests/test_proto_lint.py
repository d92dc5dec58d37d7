"""buf lint (STANDARD) over proto/: the wire contract keeps buf's style rules."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def find_buf() -> str | None:
    local = ROOT / ".ci" / "tools" / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else shutil.which("buf")


def test_buf_lint_standard():
    buf = find_buf()
    if buf is None:
        pytest.skip("buf not installed (CI installs it: npm install --prefix .ci/tools @bufbuild/buf)")
    out = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
