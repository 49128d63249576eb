"""The exceptions that end a command, each printed by cli.main as one line with its exit code: UsageProblem
(anything the user can fix, exit 2; DataMissing is one), TrainingDiverged (exit 3) and Interrupted (Ctrl-C, exit
130). Library code raises these; only cli.main turns them into text."""

from __future__ import annotations

import errno


class UsageProblem(Exception):
    """Bad option, bad file, missing data: anything the user can fix. Printed as `Error: <message>`, exit 2."""

    exit_code = 2


class TrainingDiverged(Exception):
    """NaN or Inf in the loss or the weights. The run keeps its last good checkpoint; exit 3."""

    exit_code = 3


class Interrupted(Exception):
    """Ctrl-C during training or a sweep; the completed epochs are on disk. Printed as `Stopped: <message>`, exit 130."""

    exit_code = 130


def os_error_text(exc: OSError) -> str:
    """'No space left on device' (plus the file when the error names one that is not `path` already)."""
    what = exc.strerror or errno.errorcode.get(exc.errno or 0) or str(exc)
    return what


def os_problem(exc: OSError, doing: str) -> UsageProblem:
    """An OS error while `doing` something ("write runs/x/checkpoint.safetensors") as one usable line. The file the
    OS names is added when it is not already in `doing` (e.g. a parent folder that is a file)."""
    name = exc.filename if exc.filename is not None else None
    where = f" ({name})" if name is not None and str(name) not in doing else ""
    hint = {errno.ENOSPC: "; free some space or use another folder",
            errno.EDQUOT: "; free some space or use another folder",
            errno.EFBIG: "; the file-size limit (ulimit -f) is too small for it",
            errno.ENAMETOOLONG: "; use a shorter name",
            errno.ENOTDIR: "; a part of the path is a file, not a folder",
            errno.EROFS: "; the file system is read-only",
            errno.EACCES: "; check the folder's permissions",
            errno.EPERM: "; check the folder's permissions"}.get(exc.errno, "")
    return UsageProblem(f"cannot {doing}: {os_error_text(exc)}{where}{hint}")


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or the allocation failures torch raises as RuntimeError (CPU) or OutOfMemoryError (CUDA)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text
                                              or "out of memory" in text.lower())


class DataMissing(UsageProblem):
    """A data set's files are not in its folder and were not downloaded (download off, or it failed). The command
    that chose the data folder rewords it with where that folder came from (data.paths.explained)."""

    def __init__(self, label: str, folder, expected: str, reason: str, detail: str = ""):
        self.label, self.folder, self.expected, self.reason = label, folder, expected, reason
        super().__init__(f"{label} not found in {folder} ({reason}); place {expected} there, or point --data-dir "
                         "or $ADVBP_DATA_DIR at the folder that holds it" + (f". Details: {detail}" if detail else ""))
