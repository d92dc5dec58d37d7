"""The agent side stays light: importing the client and the Gymnasium wrappers loads no server code."""

from __future__ import annotations

import json
import subprocess
import sys

#: Modules an agent process must never load (the engine, config, rules, models, the CEL binding).
SERVER_SIDE = (
    "interlock.engine",
    "interlock.config",
    "interlock.policies",
    "interlock.monitors",
    "cel_expr_python",
)


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _server_side(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == s or m.startswith(s + ".") for s in SERVER_SIDE)]


def test_client_and_gym_wrappers_load_no_server_side_module():
    loaded = _loaded_after(
        "import interlock.client, interlock.gym\n"
        "from interlock import GuardClient, InterlockWrapper, InterlockVectorWrapper, OperatorClient, Verdict"
    )
    assert "interlock.client.gym" in loaded and "gymnasium" in loaded  # the probe did import them
    assert _server_side(loaded) == []


def test_the_top_level_package_is_lazy_and_still_reaches_the_engine():
    assert _server_side(_loaded_after("import interlock")) == []
    loaded = _loaded_after("from interlock import Guard, load_config")
    assert "interlock.engine" in loaded and "interlock.config" in loaded
