"""Atomic file writes: every file advbp writes goes to a temporary name in the same folder and is renamed into
place, so a crash never leaves a truncated file under the final name."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UsageProblem

TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `final`; on success it is fsync'd and renamed onto `final`."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent)
    except OSError as exc:
        raise _naming(exc, final)
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
    except OSError as exc:  # a full disk, a file-size limit...: the error names the file, not its temporary
        raise _naming(exc, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# errors of the file system (not of a network connection a download writes from), which get the file's name
_FILE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT}


def _naming(exc: OSError, final: Path) -> OSError:
    """A file-system error with the final file's name (write errors carry none, others name the temporary)."""
    if exc.errno in _FILE_ERRNOS and (exc.filename is None or str(exc.filename).endswith(TMP_SUFFIX)):
        exc.filename = str(final)
    return exc


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


def stale_temporaries(folder: str | os.PathLike, names=None) -> list[Path]:
    """Temporary files that atomic_path left in `folder` because its process was killed mid-write. They never
    carry a final name, so they can be deleted by whoever holds the folder (e.g. a run directory's lock).
    With `names`, only the temporaries of those final names (`.NAME.<random>.tmp`): a user's own `.x.tmp` in the
    same folder is not advbp's to delete."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = (p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file())
    if names is not None:
        pattern = re.compile(r"\.(%s)\.[a-z0-9_]+%s\Z" % ("|".join(re.escape(n) for n in names), re.escape(TMP_SUFFIX)))
        found = (p for p in found if pattern.match(p.name))
    return sorted(found)


def write_bytes_atomic(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(final, text.encode("utf-8"))


def write_json_atomic(final: str | os.PathLike, obj) -> None:
    """JSON without NaN or Infinity (not JSON, and never a result advbp reports): such a value is refused."""
    write_text_atomic(final, json_text(obj, final))


def json_text(obj, where, indent: int | None = 2) -> str:
    try:
        return json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False) + ("\n" if indent else "")
    except ValueError:
        raise UsageProblem(f"refusing to write {where}: it would hold a NaN or infinite number") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a finite number")


def loads_finite(text: str | bytes):
    """json.loads that refuses NaN, Infinity and -Infinity (Python's json accepts them; they are never advbp's)."""
    return json.loads(text, parse_constant=_refuse_constant)
