"""``${NAME}`` expansion in config values (DSNs), so secrets stay out of the config file."""

from __future__ import annotations

import os
import re

from interlock.errors import ConfigError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, where: str) -> str:
    """Replace ``${NAME}`` with the environment variable; raises ConfigError when it is unset."""

    def sub(m: re.Match[str]) -> str:
        val = os.environ.get(m.group(1))
        if val is None:
            raise ConfigError(f"{where} reads the environment variable {m.group(1)}, which is not set")
        return val

    return _ENV.sub(sub, text)
