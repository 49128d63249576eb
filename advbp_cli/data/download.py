"""Downloads with a progress bar, sha256 verification, bounded retries and atomic placement.

A file is written to a temporary name, checked, and only then renamed into place: a truncated or corrupt
download is never kept under the final name."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UsageProblem
from ..files import atomic_path

ATTEMPTS_PER_MIRROR = 2
TIMEOUT_S = 30.0
RETRY_PAUSE_S = 0.5


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path, progress_label: str) -> None:
    from rich.console import Console  # lazy: only a download draws a bar
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
        total = resp.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        got = 0
        with open(dest, "wb") as out, Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True,
            console=Console(stderr=True),  # stdout is kept for results (--json)
        ) as bar:
            task = bar.add_task(progress_label, total=total)
            while block := resp.read(1 << 16):
                out.write(block)
                got += len(block)
                bar.update(task, advance=len(block))
        if total is not None and got != total:
            raise OSError(f"connection closed after {got} of {total} bytes")


class _BadChecksum(Exception):
    def __init__(self, actual: str):
        super().__init__(actual)
        self.actual = actual


def _describe(exc: BaseException) -> str:
    """What went wrong with one attempt, in words (for the error message that lists every mirror)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed after {len(exc.partial)} bytes{'' if exc.expected is None else f' ({exc.expected} more expected)'}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"no answer within {TIMEOUT_S:g} s"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return _describe(reason)
    return str(reason or exc) or type(exc).__name__


class DownloadFailed(UsageProblem):
    """Every mirror failed. The message lists every attempt; `summary` says it in a few words (the last answer
    of each mirror, by host), for the one-line error a command prints."""

    def __init__(self, message: str, last_by_host: dict[str, str]):
        super().__init__(message)
        reasons = set(last_by_host.values())
        if len(reasons) == 1:
            self.summary = f"{len(last_by_host)} mirror(s) tried, each: {reasons.pop()}"
        else:
            self.summary = "; ".join(f"{host}: {why}" for host, why in last_by_host.items())


def _host(url: str) -> str:
    parts = urlsplit(url)
    return (parts.netloc + "/" + parts.path.strip("/").rsplit("/", 1)[0]).rstrip("/") if parts.netloc else url


def download_verified(name: str, urls: list[str], dest: Path, sha256: str, log=print) -> None:
    """Tries each URL and places the first file whose sha256 matches at `dest`. Network errors and truncated
    transfers and HTTP 5xx are tried ATTEMPTS_PER_MIRROR times per mirror; an HTTP 4xx (e.g. 404) or a wrong
    checksum moves on to the next mirror at once, since asking again would get the same answer. Nothing but a verified
    file ever carries the final name, and no temporary file is left behind. Raises DownloadFailed saying what
    happened at every mirror. Callers that must not leave folders behind create dest's folder with new_folder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    last: dict[str, str] = {}
    for url in urls:
        for attempt in range(1, ATTEMPTS_PER_MIRROR + 1):
            try:
                with atomic_path(dest) as tmp:
                    _fetch(url, tmp, name)
                    actual = sha256_of(tmp)
                    if actual != sha256:
                        raise _BadChecksum(actual)
                return
            except _BadChecksum as bad:
                failures.append(f"{url}: sha256 {bad.actual[:12]}... does not match the expected {sha256[:12]}...")
                last[_host(url)] = "wrong checksum"
                log(f"advbp: {url} served a file with the wrong checksum; trying the next mirror")
                break  # the same mirror would serve the same bytes again
            except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException, ValueError) as exc:
                what = _describe(exc)
                last[_host(url)] = what
                if isinstance(exc, urllib.error.HTTPError) and exc.code < 500 or isinstance(exc, ValueError):
                    failures.append(f"{url}: {what}")
                    log(f"advbp: {url}: {what}; trying the next mirror")
                    break  # 404, 403, a malformed URL: asking again gets the same answer
                failures.append(f"{url} (attempt {attempt} of {ATTEMPTS_PER_MIRROR}): {what}")
                if attempt < ATTEMPTS_PER_MIRROR:
                    log(f"advbp: {url}: {what}; retrying")
                    time.sleep(RETRY_PAUSE_S * attempt)
    raise DownloadFailed(
        f"could not download {name}: " + "; ".join(failures) + f". Place the file at {dest} by hand, "
        "or point --data-dir / $ADVBP_DATA_DIR at a folder that has it", last)


@contextmanager
def new_folder(folder: Path):
    """Creates `folder` (and missing parents) for a download; if the block fails, removes what it created, as far
    as it is still empty, so a failed download leaves no empty folders behind."""
    folder = Path(folder)
    made = []
    p = folder
    while not p.exists():
        made.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageProblem(f"cannot create {folder} to download into: {exc.strerror or exc}") from None
    try:
        yield folder
    except BaseException:
        for d in made:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break
        raise


def mirrors_from_env(var: str, default: list[str]) -> list[str]:
    """Mirror base URLs, overridable (comma-separated) for tests and for users behind a proxy or a local copy."""
    value = os.environ.get(var)
    return [u.strip().rstrip("/") + "/" for u in value.split(",") if u.strip()] if value else default
