"""Token files: one bearer token a line, optionally ``NAME TOKEN``; blank lines and ``#`` comments skipped.

The server reads them for ``auth.*_tokens.file`` and ``interlock escalations --token-file`` reads
them too, with the same rules.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from interlock.errors import ConfigError

#: Shortest token accepted (a guessable token is no credential).
MIN_TOKEN_CHARS = 16
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def read_token_file(
    path: Path, default_name: Callable[[int], str], what: str = "token file", fix: str = ""
) -> list[tuple[str, str]]:
    """Every ``(name, token)`` in the file, in order.

    Args:
        path: The file.
        default_name: The name of a line without one, from its line number.
        what: How messages call the file ("the operator token file").
        fix: Appended to the message when the file cannot be read (where it is configured).

    Raises:
        ConfigError: unreadable file, a line of more than two words, a token shorter than
            :data:`MIN_TOKEN_CHARS`; the message names the file and line.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}{fix}") from None
    found: list[tuple[str, str]] = []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) > 2:
            raise ConfigError(f"{path}:{n}: expected 'TOKEN' or 'NAME TOKEN', got {len(parts)} words")
        name, token = (parts[0], parts[1]) if len(parts) == 2 else (default_name(n), parts[0])
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"{path}:{n}: the token is shorter than {MIN_TOKEN_CHARS} characters; make one with "
                f"{MAKE_TOKEN}"
            )
        found.append((name, token))
    return found
