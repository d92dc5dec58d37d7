"""The installed package needs no checkout: build the wheel, install it, run the demo from an empty folder.

The wheel is built without build isolation (setuptools from the dev extra) and the venv is created
with ``--system-site-packages`` plus a ``.pth`` file naming this interpreter's site-packages (this
interpreter is usually a venv itself), so the dependencies come from the current environment: fast
and offline. The wheel itself is installed with ``--no-deps --no-index`` and comes first on the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing may point at the checkout
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_installs_and_runs_the_demo_and_bench_from_an_empty_folder(tmp_path):
    wheels, venv, empty = tmp_path / "wheels", tmp_path / "venv", tmp_path / "empty"
    empty.mkdir()
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools (the dev extra)")
    build = [sys.executable, "-m", "pip", "wheel", str(ROOT), "-w", str(wheels), "--no-deps"]
    _run([*build, "--no-build-isolation", "-q"], cwd=tmp_path)
    [wheel] = wheels.glob("interlock-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "interlock/demo_assets/cartpole/interlock.yaml",
        "interlock/demo_assets/cartpole/policy.onnx",
        "interlock/server/console/static/index.html",
        "interlock/bench/perf/run.py",
        "interlock/bench/safety/models/minigrid_distshift1_q.npz",
    ):
        assert shipped in names, f"{shipped} is missing from the wheel"
    assert not any(n.startswith(("benchmarks/", "examples/", "tests/")) for n in names)

    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([str(python), "-c", purelib], cwd=tmp_path).stdout.strip())
    ours = sysconfig.get_paths()
    (site / "interlock_test_deps.pth").write_text(f"{ours['purelib']}\n{ours['platlib']}\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    where = _run([str(python), "-c", "import interlock; print(interlock.__file__)"], cwd=empty).stdout
    assert str(venv) in where, f"the venv imported {where.strip()}, not the installed wheel"

    interlock = str(venv / "bin" / "interlock")
    assert "--quick" in _run([interlock, "bench", "perf", "--help"], cwd=empty).stdout
    demo = _run([interlock, "demo", "cartpole", "--episodes", "1"], cwd=empty).stdout
    rows = {line.split()[0]: line.split() for line in demo.splitlines() if line.split()}
    assert "unguarded" in rows and "guarded" in rows
    assert list(empty.iterdir()) == [], "the demo wrote into the working directory"
