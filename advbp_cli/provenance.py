"""What produced a result: advbp's version, the git commit of the code, library versions, the command line."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy

from . import __version__
from .threads import thread_counts


def git_commit() -> dict:
    """The commit of the source tree advbp runs from, when it is a git checkout (e.g. an editable install)."""
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=src, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def provenance(extra_libs: tuple[str, ...] = ()) -> dict:
    libs = {"numpy": numpy.__version__}
    for name in extra_libs:
        mod = sys.modules.get(name)
        if mod is not None:
            libs[name] = getattr(mod, "__version__", "?")
    return {
        "advbp_version": __version__,
        "git": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": libs,
        "threads": thread_counts(),  # they decide float32 bits (advbp_cli/threads.py)
        "command": sys.argv,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
