"""Where data lives. One order, for every command:

1. `--data-dir DIR`;
2. `$ADVBP_DATA_DIR`;
3. for commands that read a run (eval, attack, report, train --resume): the data folder the run was trained with,
   recorded in its config.json, when that folder still exists;
4. the per-user cache, ~/.cache/advbp (or $XDG_CACHE_HOME/advbp), where downloads go.

A relative path is resolved once, against the current folder, when the command starts, and recorded absolute. An
explicit folder (1 or 2) that does not exist is an error: a mistyped path is reported, not created. The folder
holds one sub-folder per data set: mnist/ and cifar10/.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import DataMissing, UsageProblem

ENV_DATA_DIR = "ADVBP_DATA_DIR"
CACHE_ORIGIN = "the per-user cache; neither --data-dir nor $ADVBP_DATA_DIR is set"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.path.abspath(base)) / "advbp"


def recorded_data_dir(source) -> Path | None:
    """The data folder recorded in a run's config.json (for a run directory, or a checkpoint inside one), if it
    still exists. Unreadable records are left to the command's own checks."""
    if source is None:
        return None
    p = Path(source)
    run = p if p.is_dir() else p.parent
    try:
        value = json.loads((run / "config.json").read_text()).get("data_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(value) if isinstance(value, str) and value and Path(value).is_dir() else None


def resolve_data_dir(option: str | os.PathLike | None, runs=()) -> tuple[Path, str]:
    """The data folder (absolute) and where that choice came from, in the order of the module docstring; `runs`
    are the run directories or checkpoints a command reads."""
    for value, origin in ((option, "--data-dir"), (os.environ.get(ENV_DATA_DIR), f"${ENV_DATA_DIR}")):
        if value:
            path = Path(os.path.abspath(Path(value).expanduser()))  # "../shared/data" -> /abs/shared/data
            if not path.is_dir():
                what = "is not a folder" if path.exists() else "does not exist"
                raise UsageProblem(f"the data folder {path} ({origin}) {what}; give the folder that holds mnist/ "
                                   "or cifar10/ (create it first if data should be downloaded into it)")
            return path, origin
    for run in runs:
        recorded = recorded_data_dir(run)
        if recorded is not None:
            return recorded, f"the folder {run} was trained with (its config.json)"
    return default_cache_dir(), CACHE_ORIGIN


@contextmanager
def explained(path: Path, origin: str):
    """Turns a DataMissing raised inside into one short line: where advbp looked, why, and the one thing to do."""
    try:
        yield
    except DataMissing as exc:
        sub = exc.folder.name
        raise UsageProblem(
            f"{exc.label} not found in {exc.folder} (data folder from {origin}; {exc.reason}). Point --data-dir or "
            f"${ENV_DATA_DIR} at the folder that holds {sub}/ ({exc.expected})") from None
