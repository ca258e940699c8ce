"""JAX's compilation cache on disk: each program compiled once per machine.

`enable_compilation_cache` keeps JAX's compiled programs in a per-user folder, so that a
later process loads a program instead of compiling it again. ``mlverify verify`` switches
it on unless ``--no-cache`` is given or the environment sets ``MLVERIFY_NO_CACHE=1``; in a
notebook, call it once. The cache holds compiled XLA programs only: every value is
computed anew.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

#: The environment variable that switches the cache off (any value but empty or 0).
NO_CACHE_VARIABLE = "MLVERIFY_NO_CACHE"
#: The environment variable naming a cache folder instead of the default one.
CACHE_DIR_VARIABLE = "MLVERIFY_CACHE_DIR"
#: Programs that compile faster than this (seconds) are not written to the cache: reading
#: an entry back costs about as much as compiling such a program.
CACHE_MIN_COMPILE_S = 0.05


def default_cache_dir() -> Path:
    """``$MLVERIFY_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlverify/jax``, else
    ``~/.cache/mlverify/jax``: one folder per user."""
    if os.environ.get(CACHE_DIR_VARIABLE):
        return Path(os.environ[CACHE_DIR_VARIABLE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mlverify" / "jax"


def cache_switched_off() -> bool:
    """Whether ``MLVERIFY_NO_CACHE`` asks for no compilation cache."""
    return os.environ.get(NO_CACHE_VARIABLE, "").strip() not in ("", "0")


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path | None:
    """Keep JAX's compiled programs in ``directory`` (default `default_cache_dir`), so a later
    process loads them instead of compiling again. Returns the folder, or None when the
    folder cannot be created (then nothing is cached and nothing else changes).

    The cache holds compiled XLA programs only: every value is computed anew.
    """
    folder = Path(directory).expanduser() if directory is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
