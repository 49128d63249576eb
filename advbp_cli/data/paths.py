"""Where data lives: --data-dir, then $ADVBP_DATA_DIR, then a per-user cache directory."""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA_DIR = "ADVBP_DATA_DIR"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "advbp"


def resolve_data_dir(option: str | os.PathLike | None) -> tuple[Path, str]:
    """The data directory and where that choice came from (for error messages)."""
    if option:
        return Path(option), "--data-dir"
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]), f"${ENV_DATA_DIR}"
    return default_cache_dir(), "the per-user cache directory"
