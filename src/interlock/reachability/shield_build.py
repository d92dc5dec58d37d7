"""Shield tables: solve a tabular model once, cache the result, look it up at run time.

:func:`build_tables` runs the solvers of :mod:`interlock.reachability.tabular`
and returns :class:`ShieldTables`. :func:`tables_for` is what the monitor calls at
load: it reads the cache file when its key matches the transitions file and the
settings, and solves (and, if asked, writes the cache) otherwise. The cache key
is a hash of the transitions file's bytes, the settings and
:data:`FORMAT_VERSION`, so an edited model or setting never reads stale tables.

``interlock shield build CONFIG`` precomputes the cache for every tabular
reachability monitor of a config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interlock.errors import ConfigError
from interlock.reachability.tabular import (
    TabularModel,
    load_tabular,
    reachable_counts,
    relative_reachability,
    risk_allowed,
    safety_values,
    winning_region,
)

log = logging.getLogger(__name__)

#: Bump when the solvers or the table layout change: old caches are then rebuilt.
FORMAT_VERSION = 1
#: Models with fewer transitions solve in well under a second: no progress bars for them.
PROGRESS_MIN_TRANSITIONS = 100_000
#: Horizon of the ``risk`` signal when no ``risk:`` setting is given.
DEFAULT_RISK_HORIZON = 100


@dataclass(frozen=True)
class ShieldSettings:
    """What the tables depend on besides the model file."""

    delta: float | None = None
    horizon: int = DEFAULT_RISK_HORIZON
    relative: bool = False
    relative_reachability: bool = True

    def as_json(self) -> str:
        return json.dumps(
            {
                "delta": self.delta,
                "horizon": self.horizon,
                "relative": self.relative,
                "rr": self.relative_reachability,
                "format": FORMAT_VERSION,
            },
            sort_keys=True,
        )


@dataclass(frozen=True)
class ShieldTables:
    """Everything the run-time lookup needs (``S`` states, ``A`` actions).

    Attributes:
        win: ``[S]`` bool, the exact winning region.
        allowed: ``[S, A]`` bool, the shield's allowed actions (exact, or the risk shield when
            ``delta`` is set). All False where the state is lost.
        safety: ``[S, A]`` float32, probability of avoiding unsafe states for ``horizon`` steps
            after the action under the safest continuation.
        irreversibility: ``[S, A]`` float32 relative reachability (zeros when switched off).
        unsafe, terminal, goal: ``[S]`` bool, from the model.
        key: The cache key the tables were built for.
    """

    win: np.ndarray
    allowed: np.ndarray
    safety: np.ndarray
    irreversibility: np.ndarray
    unsafe: np.ndarray
    terminal: np.ndarray
    goal: np.ndarray
    key: str

    @property
    def n_states(self) -> int:
        return int(self.allowed.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.allowed.shape[1])

    def summary(self) -> dict[str, int | float]:
        """Counts for humans: states, winning states, lost non-unsafe states, allowed pairs."""
        live = ~(self.unsafe | self.terminal)
        return {
            "states": self.n_states,
            "actions": self.n_actions,
            "unsafe": int(self.unsafe.sum()),
            "winning": int(self.win.sum()),
            "lost": int((~self.win & ~self.unsafe).sum()),
            "allowed_pairs": int(self.allowed[live].sum()),
            "live_pairs": int(live.sum()) * self.n_actions,
        }

    def save(self, path: str | Path) -> None:
        """Write atomically (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp.npz")
        os.close(fd)
        try:
            np.savez_compressed(
                tmp,
                win=self.win,
                allowed=self.allowed,
                safety=self.safety,
                irreversibility=self.irreversibility,
                unsafe=self.unsafe,
                terminal=self.terminal,
                goal=self.goal,
                key=np.array(self.key),
            )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path) -> ShieldTables:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                win=z["win"],
                allowed=z["allowed"],
                safety=z["safety"],
                irreversibility=z["irreversibility"],
                unsafe=z["unsafe"],
                terminal=z["terminal"],
                goal=z["goal"],
                key=str(z["key"]),
            )


def cache_key(transitions: Path, settings: ShieldSettings) -> str:
    """sha256 over the transitions file's bytes and the settings."""
    h = hashlib.sha256()
    with open(transitions, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(settings.as_json().encode())
    return h.hexdigest()


def default_cache_path(transitions: Path, settings: ShieldSettings | None = None) -> Path:
    """``maze.npz`` -> ``maze.shield.npz`` beside it (``maze.shield-<hash>.npz`` for non-default settings)."""
    if settings is None or settings == ShieldSettings():
        return transitions.with_name(transitions.stem + ".shield.npz")
    tag = hashlib.sha256(settings.as_json().encode()).hexdigest()[:8]
    return transitions.with_name(f"{transitions.stem}.shield-{tag}.npz")


def build_tables(
    model: TabularModel, settings: ShieldSettings, key: str = "", progress: bool = False
) -> ShieldTables:
    """Solve everything the shield needs for ``model`` (progress bars only for models this large or more)."""
    progress = progress and len(model.row) >= PROGRESS_MIN_TRANSITIONS
    win, exact = winning_region(model, progress=progress)
    q, _ = safety_values(model, settings.horizon, progress=progress)
    allowed = exact if settings.delta is None else risk_allowed(model, q, settings.delta, settings.relative)
    if settings.relative_reachability:
        rr = relative_reachability(model, reachable_counts(model, progress=progress))
    else:
        rr = np.zeros((model.n_states, model.n_actions))
    return ShieldTables(
        win=win,
        allowed=allowed,
        safety=q.astype(np.float32),
        irreversibility=rr.astype(np.float32),
        unsafe=model.unsafe,
        terminal=model.terminal,
        goal=model.goal,
        key=key,
    )


_MEMO: dict[tuple[str, str], ShieldTables] = {}
_MEMO_LOCK = threading.Lock()


def tables_for(
    transitions: Path,
    settings: ShieldSettings,
    cache: Path | None = None,
    write_cache: bool = False,
    progress: bool = False,
    force: bool = False,
) -> tuple[ShieldTables, str]:
    """The tables for a transitions file: from memory, the cache file, or solved now.

    Args:
        transitions: The model ``.npz``.
        settings: Risk and reachability settings.
        cache: Cache file; default :func:`default_cache_path` for the settings.
        write_cache: Write the cache after solving (``interlock shield build``); loading a
            config does not write files.
        progress: Show progress bars while solving.
        force: Solve even when a matching cache file exists.

    Returns:
        The tables and where they came from: ``"memory"``, ``"cache"`` or ``"solved"``.

    Raises:
        ConfigError: the transitions file is missing or malformed.
    """
    transitions = Path(transitions)
    if not transitions.is_file():
        raise ConfigError(f"{transitions}: transitions file does not exist")
    key = cache_key(transitions, settings)
    cache = cache or default_cache_path(transitions, settings)
    with _MEMO_LOCK:
        hit = None if force else _MEMO.get((str(transitions.resolve()), key))
    if hit is not None:
        if write_cache and _cached_key(cache) != key:
            hit.save(cache)
        return hit, "memory"
    origin = "solved"
    tables = None
    if cache.is_file() and not force:
        try:
            cached = ShieldTables.load(cache)
            if cached.key == key:
                tables, origin = cached, "cache"
            else:
                log.warning(
                    "%s is stale (built for another model or settings); solving again. "
                    "Run `interlock shield build` to refresh it.",
                    cache,
                )
        except Exception as e:  # a damaged cache is only a slower load
            log.warning("cannot read shield cache %s (%s); solving again", cache, e)
    if tables is None:
        model = load_tabular(transitions)
        tables = build_tables(model, settings, key, progress=progress)
        if write_cache:
            tables.save(cache)
    with _MEMO_LOCK:
        _MEMO[(str(transitions.resolve()), key)] = tables
    return tables, origin


def _cached_key(cache: Path) -> str | None:
    try:
        with np.load(cache, allow_pickle=False) as z:
            return str(z["key"])
    except Exception:
        return None


def clear_memo() -> None:
    """Forget tables held in memory (tests, reloads)."""
    with _MEMO_LOCK:
        _MEMO.clear()
