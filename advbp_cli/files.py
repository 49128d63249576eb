"""Atomic file writes: every file advbp writes goes to a temporary name in the same folder and is renamed into
place, so a crash never leaves a truncated file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `final`; on success it is fsync'd and renamed onto `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files, and some writers replace the file; give it the permissions open() would
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
        _fsync_dir(final.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_dir(folder: Path) -> None:
    """Makes the rename itself durable (a power cut after it cannot bring back the old file)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files that atomic_path left in `folder` because its process was killed mid-write. They never
    carry a final name, so they can be deleted by whoever holds the folder (e.g. a run directory's lock)."""
    folder = Path(folder)
    return sorted(p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()) if folder.is_dir() else []


def write_bytes_atomic(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(final, text.encode("utf-8"))


def write_json_atomic(final: str | os.PathLike, obj) -> None:
    write_text_atomic(final, json.dumps(obj, indent=2, sort_keys=False) + "\n")
