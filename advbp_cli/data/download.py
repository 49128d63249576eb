"""Downloads with a progress bar, sha256 verification, bounded retries and atomic placement.

A file is written to a temporary name, checked, and only then renamed into place: a truncated or corrupt
download is never kept under the final name."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import UsageProblem
from ..files import atomic_path

ATTEMPTS_PER_MIRROR = 2
TIMEOUT_S = 30.0


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path, progress_label: str) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
        total = resp.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        got = 0
        with open(dest, "wb") as out, Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True
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


def download_verified(name: str, urls: list[str], dest: Path, sha256: str, log=print) -> None:
    """Tries each URL (ATTEMPTS_PER_MIRROR times for network errors, once for a wrong checksum) and places the
    first file whose sha256 matches at `dest`. Raises UsageProblem saying what happened at every mirror."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
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
                log(f"advbp: {url} served a file with the wrong checksum; trying the next mirror")
                break  # the same mirror would serve the same bytes again
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                reason = getattr(exc, "reason", None) or exc
                failures.append(f"{url}: {reason}")
                if attempt < ATTEMPTS_PER_MIRROR:
                    time.sleep(0.2 * attempt)
    raise UsageProblem(
        f"could not download {name}: " + "; ".join(failures) + f". Place the file at {dest} by hand, "
        "or point --data-dir / $ADVBP_DATA_DIR at a folder that has it"
    )


def mirrors_from_env(var: str, default: list[str]) -> list[str]:
    """Mirror base URLs, overridable (comma-separated) for tests and for users behind a proxy or a local copy."""
    value = os.environ.get(var)
    return [u.strip().rstrip("/") + "/" for u in value.split(",") if u.strip()] if value else default
