"""Folders advbp writes (--out of train, sweep, attack and report): advbp only deletes what advbp wrote.

Every such folder carries a marker file, MARKER, naming its kind (run, sweep, attack, report) and, for kinds whose
file names vary (attack sets, figures), the files advbp wrote there. advbp writes into a folder only if it does
not exist, is empty, or carries the marker of the same kind; a non-empty folder without the marker is refused
before anything is written (a run directory written by an older advbp, recognised by its config.json, may be
adopted by --resume). `--overwrite` removes advbp's own files (the kind's fixed names and those the marker lists)
and nothing else.

Folders of attack sets and reports are written as a whole (`StagedWrite`): the new files go to a staging folder
inside the folder, a commit record is written when all of them are complete, and only then are they moved into
place. A kill before the commit record leaves the old files untouched; a kill after it leaves the new ones, which
readers find through `resolve` and the next writer finishes moving (`recover`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat as stat_mod
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import UsageProblem, os_problem
from .files import _fsync_dir, stale_temporaries, write_json_atomic

MARKER = ".advbp-folder.json"
FORMAT = "advbp-folder/1"
LOCK = ".lock"
STAGING = ".advbp-staging"
COMMIT = "commit.json"
KINDS = {"run": "a run directory", "sweep": "a sweep directory", "attack": "a folder of attack sets",
         "report": "a report folder"}
# Files each kind writes under fixed names (checked against rundir.py and sweep.py by the tests); an attack or a
# report folder's other files (sets, figures) are listed in its marker. The index file a reader trusts is the
# last fixed name: it is moved into place after the files it lists.
FIXED_FILES = {
    "run": ("config.json", "metrics.jsonl", "checkpoint.safetensors", "summary.json"),
    "sweep": ("sweep.json", "summary.json", "summary.csv", "summary.md"),
    "attack": ("manifest.json",),
    "report": ("report.json", "index.md"),
}


# ------------------------------------------------------------------------------------------------ the marker
def read_marker(folder: Path) -> dict | None:
    """The folder's marker, or None when it has none; an unreadable one is refused (it is not advbp's)."""
    path = Path(folder) / MARKER
    if not os.path.lexists(path):
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageProblem(f"{path} is not a readable advbp marker ({exc}); move the folder away or use another "
                           "folder") from None
    ok = (isinstance(marker, dict) and marker.get("format") == FORMAT and marker.get("kind") in KINDS
          and isinstance(marker.get("files", []), list) and all(_plain_name(n) for n in marker.get("files", [])))
    if not ok:
        raise UsageProblem(f"{path} is not a valid advbp marker (expected format {FORMAT!r} and a known kind)")
    return marker


def _plain_name(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def owned_files(folder: Path, marker: dict | None = None) -> list[str]:
    """advbp's own files in a marked folder: the kind's fixed names and those the marker lists (not the marker)."""
    marker = marker if marker is not None else read_marker(folder)
    if marker is None:
        return []
    return list(dict.fromkeys([*FIXED_FILES[marker["kind"]], *marker.get("files", [])]))


def write_marker(folder: Path, kind: str, files: list[str] | None = None) -> None:
    record = {"format": FORMAT, "kind": kind, "advbp_version": __version__,
              "note": "advbp writes into this folder and deletes only its own files (listed here or fixed by the kind)"}
    if files is not None:
        record["files"] = list(files)
    write_json_atomic(Path(folder) / MARKER, record)


# ------------------------------------------------------------------------------------------------ checking a path
def inspect(path: Path, kind: str, option: str, adopt=None) -> str:
    """What `path` is for writing a folder of `kind`, without writing anything: "new" (absent), "empty", "own" (the
    marker of this kind), or "adopt" (no marker, but `adopt(path)` recognises an older advbp's folder). Anything
    else is refused in one line naming `option`: a file or a dangling link in the way, a part of the path that is
    a file, a name too long, a folder of another kind, a non-empty folder without the marker."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise UsageProblem(f"{option} {path} is a symbolic link to {os.readlink(path)}, which does not exist; "
                               f"remove the link or use another {option}") from None
        _check_parents(path, option)
        return "new"
    except OSError as exc:
        raise os_problem(exc, f"use {option} {path}") from None
    except ValueError as exc:  # e.g. an embedded NUL byte
        raise UsageProblem(f"{option} {str(path)!r} is not a usable path ({exc})") from None

    if not stat_mod.S_ISDIR(st.st_mode):
        raise UsageProblem(f"{option} {path} exists and is not a folder; use another {option}")
    marker = read_marker(path)
    if marker is not None:
        if marker["kind"] != kind:
            raise UsageProblem(f"{option} {path} is {KINDS[marker['kind']]} of advbp, not {KINDS[kind]}; use another "
                               f"{option}")
        return "own"
    try:
        entries = [p.name for p in path.iterdir()]
    except OSError as exc:
        raise os_problem(exc, f"read {option} {path}") from None
    ignorable = {LOCK, *(p.name for p in stale_temporaries(path, [MARKER]))}  # what a killed claim leaves
    if not set(entries) - ignorable:
        return "empty"
    if adopt is not None and adopt(path):
        return "adopt"
    shown = ", ".join(sorted(set(entries) - ignorable)[:3])
    raise UsageProblem(f"{option} {path} is not empty ({shown}{', ...' if len(entries) > 3 else ''}) and has no "
                       f"advbp marker ({MARKER}), so advbp did not write it: advbp writes only into new, empty or "
                       f"its own folders; use another {option}")


def _check_parents(path: Path, option: str) -> None:
    """A missing folder can be created: its nearest existing ancestor must be a folder and its name not too long."""
    for part in [path, *path.parents]:
        if len(os.fsencode(part.name)) > 255:
            raise UsageProblem(f"cannot use {option} {path}: the name {part.name[:40]}... is longer than the file "
                               "system allows (255 bytes); use a shorter name")
    ancestor = path.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if os.path.lexists(ancestor) and not ancestor.is_dir():
        raise UsageProblem(f"cannot use {option} {path}: {ancestor} is a file, not a folder; use another {option}")


def check_output_file(path: Path, option: str) -> None:
    """A file advbp is asked to write (e.g. --curve-out): refused in one line, before any work, when a part of its
    path is a file, its name is too long, or a folder is in its place."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_problem(exc, f"write {option} {path}") from None
    except ValueError as exc:
        raise UsageProblem(f"{option} {str(path)!r} is not a usable path ({exc})") from None

    if stat_mod.S_ISDIR(st.st_mode):
        raise UsageProblem(f"{option} {path} is a folder; name a file")


def has_content(path: Path, kind: str) -> bool:
    marker = read_marker(path) if Path(path).is_dir() else None
    names = owned_files(path, marker) if marker else FIXED_FILES[kind]
    return any(os.path.lexists(Path(path) / n) for n in names)


def check_writable(path: Path, kind: str, option: str, overwrite: bool, what: str = "") -> str:
    """`inspect`, then: a folder that already holds advbp's files of this kind needs --overwrite. Writes nothing."""
    state = inspect(path, kind, option)
    if state == "own" and has_content(path, kind) and not overwrite:
        raise UsageProblem(f"{option} {path} already holds {what or KINDS[kind]}; use --overwrite (only advbp's own "
                           f"files there are replaced) or another {option}")
    return state


# ------------------------------------------------------------------------------------------------ taking a folder
class FolderLock:
    """An flock on FOLDER/.lock: released by the kernel when the process dies, so a killed run leaves no stale lock."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._fh = None

    def acquire(self) -> "FolderLock":
        while True:
            try:
                fh = open(self.folder / LOCK, "a+")
            except OSError as exc:
                raise os_problem(exc, f"lock {self.folder}") from None
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                raise UsageProblem(f"{self.folder} is in use by another advbp process (its lock is held); wait for it "
                                   "or use another --out") from None
            try:  # a holder that removed the lock file as it let go (release(remove=True)) locked another file
                same = os.fstat(fh.fileno()).st_ino == os.stat(self.folder / LOCK).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        try:  # the pid is informational; a full disk must not stop the lock
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
        except OSError:
            pass
        self._fh = fh
        return self

    def release(self) -> None:
        """Lets go, deleting the lock file first (while still holding it; see acquire): no lock is left behind."""
        if self._fh is not None:
            _unlink(self.folder / LOCK)
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class Taken:
    """A folder advbp writes into, locked; `undo` removes what taking it (and the work after) added."""

    def __init__(self, path: Path, kind: str, state: str, created: Path | None, lock: FolderLock):
        self.path, self.kind, self.state, self.created, self.lock = path, kind, state, created, lock

    def remove_own_files(self) -> None:
        for name in owned_files(self.path):
            _unlink(self.path / name)

    def undo(self) -> None:
        """After a failed start: the folder as it was. A folder this process created goes (if nothing but advbp's
        files is in it), with the parents it created; one that was empty loses advbp's files again."""
        if self.state not in ("new", "empty"):
            return
        for name in [*FIXED_FILES[self.kind], *owned_files(self.path)]:
            _unlink(self.path / name)
        for tmp in stale_temporaries(self.path, [*FIXED_FILES[self.kind], MARKER]):
            _unlink(tmp)
        shutil.rmtree(self.path / STAGING, ignore_errors=True)
        _unlink(self.path / MARKER)
        if self.state in ("new", "empty"):
            _unlink(self.path / LOCK)  # still held by this process until release
        self.remove_created_folders()

    def remove_created_folders(self) -> None:
        """The folders this process created for a new path, if empty (a user's file put there meanwhile stays)."""
        if self.state != "new":
            return
        folder = self.path
        while True:
            try:
                folder.rmdir()
            except OSError:
                break
            if self.created is None or folder == self.created:
                break
            folder = folder.parent

    def release(self) -> None:
        self.lock.release()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass  # undo and cleanup are best effort; the error that caused them is the one to report


@contextmanager
def _undone_on_error(undo: Callable[[], None], what: str):
    """Any exception in the block runs `undo` (put the folder back as it was) before it propagates; an OSError
    becomes one line saying what could not be done (`what`)."""
    try:
        yield
    except OSError as exc:
        undo()
        raise os_problem(exc, what) from None
    except BaseException:
        undo()
        raise


def take(path: Path, kind: str, option: str, adopt=None) -> Taken:
    """Checks `path` (`inspect`), creates it, writes the marker if missing, takes the lock, and deletes the
    temporaries a killed advbp process left among its own files. Refusals happen before anything is written."""
    path = Path(path)
    state = inspect(path, kind, option, adopt)
    created = None
    if state == "new":
        created = path
        while not os.path.lexists(created.parent) and created.parent != created.parent.parent:
            created = created.parent
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_problem(exc, f"create {option} {path}") from None
    lock = FolderLock(path)
    taken = Taken(path, kind, state, created, lock)
    try:
        lock.acquire()
    except UsageProblem:  # held by another process (nothing here is this one's to undo), or not creatable
        if not os.path.lexists(path / LOCK):
            taken.remove_created_folders()
        raise
    def undo() -> None:
        taken.undo()
        lock.release()

    with _undone_on_error(undo, f"write into {option} {path}"):
        if state != "own":
            write_marker(path, kind, [] if kind in ("attack", "report") else None)
        for tmp in stale_temporaries(path, [*owned_files(path), MARKER]):
            _unlink(tmp)
    return taken


# ------------------------------------------------------------------------------------------------ whole-folder writes
class StagedWrite:
    """`with StagedWrite(out, kind, option, overwrite) as stage:` write the folder's new files into `stage.path`;
    on success they replace advbp's old files as a whole (see the module's docstring), user files stay; on an
    exception nothing in the folder changes and a folder this created is removed. The folder's index file
    (FIXED_FILES[kind][0]) and the marker are moved last."""

    def __init__(self, folder: Path, kind: str, option: str, overwrite: bool = False, what: str = ""):
        self.folder, self.kind, self.option, self.overwrite, self.what = Path(folder), kind, option, overwrite, what
        self.path = self.folder / STAGING
        self.taken: Taken | None = None

    def __enter__(self) -> "StagedWrite":
        check_writable(self.folder, self.kind, self.option, self.overwrite, self.what)
        self.taken = take(self.folder, self.kind, self.option)
        with _undone_on_error(self._abandon, f"write into {self.option} {self.folder}"):
            recover(self.folder)
            if has_content(self.folder, self.kind) and not self.overwrite:  # written meanwhile by another process
                raise UsageProblem(f"{self.option} {self.folder} already holds {self.what or KINDS[self.kind]}; use "
                                   f"--overwrite or another {self.option}")
            self.path.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._abandon()
            if issubclass(exc_type, OSError):  # e.g. a full disk while writing a file: one line, nothing changed
                raise os_problem(exc, f"write into {self.option} {self.folder}") from None
            return False
        with _undone_on_error(self._abandon, f"write into {self.option} {self.folder}"):
            self._write_commit_record()
        try:  # committed: from here on the new files are the folder's, also if this fails half-way (see recover)
            apply_commit(self.folder)
        except OSError as err:
            self.taken.release()
            raise os_problem(err, f"move the new files into {self.option} {self.folder} (they are complete in "
                                  f"{self.path}; the next advbp run that writes there finishes the move)") from None
        self.taken.release()
        return False

    def _abandon(self) -> None:
        """Nothing was committed: drop the staging folder; a folder that was new or empty is restored."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.taken.undo()
        self.taken.release()

    def _write_commit_record(self) -> None:
        index = FIXED_FILES[self.kind][0]
        staged = sorted(p.name for p in self.path.iterdir())
        if index not in staged:
            raise AssertionError(f"a {self.kind} write staged no {index}")
        fixed = set(FIXED_FILES[self.kind])
        write_marker(self.path, self.kind, [n for n in staged if n not in fixed])
        order = [n for n in staged if n != index] + [index, MARKER]
        remove = [n for n in owned_files(self.folder) if n not in order]
        for name in order:
            if (self.folder / name).is_dir() and not (self.folder / name).is_symlink():
                raise UsageProblem(f"{self.option} {self.folder}: {name} is a folder where advbp writes a file; move "
                                   "it away")
        write_json_atomic(self.path / COMMIT, {"format": FORMAT + "/commit", "move": order, "remove": remove})
        _fsync_dir(self.path)


def _read_commit(folder: Path) -> dict | None:
    path = Path(folder) / STAGING / COMMIT
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("move"), list) and isinstance(record.get("remove"), list)
            and all(_plain_name(n) for n in record["move"] + record["remove"])):
        return None
    return record


def apply_commit(folder: Path) -> None:
    """Moves a committed write's files into place, removes the old files it replaces, drops the staging folder.
    Idempotent: after a kill anywhere in here, running it again completes the same write."""
    folder = Path(folder)
    stage = folder / STAGING
    record = _read_commit(folder)
    if record is None:
        return
    for name in record["move"]:
        if os.path.lexists(stage / name):
            os.replace(stage / name, folder / name)
    for name in record["remove"]:
        _unlink(folder / name)
    _fsync_dir(folder)
    (stage / COMMIT).unlink()
    shutil.rmtree(stage, ignore_errors=True)


def recover(folder: Path) -> None:
    """What a killed whole-folder write left (call with the folder's lock held): a committed one is completed, an
    uncommitted one is removed (the old files were never touched)."""
    stage = Path(folder) / STAGING
    if not stage.is_dir():
        return
    if _read_commit(folder) is not None:
        apply_commit(folder)
    else:
        shutil.rmtree(stage, ignore_errors=True)


def resolve(folder: Path, name: str) -> Path:
    """Where a reader finds `name` of an advbp folder: in the staging folder while a committed write is still being
    moved into place (or was killed doing so), else in the folder. An uncommitted write is invisible."""
    folder = Path(folder)
    stage = folder / STAGING
    if (stage / COMMIT).is_file() and os.path.lexists(stage / name):
        return stage / name
    return folder / name


def read_bytes(folder: Path, name: str) -> bytes:
    """The bytes of `name` as `resolve` finds it; when a concurrent writer moves it meanwhile, from its new place."""
    path = resolve(folder, name)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if path.parent == Path(folder):
            raise
        return (Path(folder) / name).read_bytes()
