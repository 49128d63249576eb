"""A run directory: the resolved config with provenance, metrics (one JSON line per epoch), the checkpoint of
the last completed epoch, and the summary. Guarded by a lock so two processes never write the same run."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from .errors import UsageProblem
from .files import stale_temporaries, write_json_atomic, write_text_atomic

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
SUMMARY = "summary.json"
LOCK = ".lock"


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fh = None

    config_path = property(lambda self: self.path / CONFIG)
    metrics_path = property(lambda self: self.path / METRICS)
    checkpoint_path = property(lambda self: self.path / CHECKPOINT)
    summary_path = property(lambda self: self.path / SUMMARY)

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def is_complete(self) -> bool:
        return self.summary_path.is_file()

    # --- locking: flock is released by the kernel when the process dies, so a killed run never leaves a stale lock
    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise UsageProblem(f"{self.path} is in use by another advbp process (its lock is held); wait for it or use another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh
        # A process killed mid-write leaves its temporary file behind (never a truncated final file); with the
        # lock held nobody else can be writing here, so they are deleted.
        for tmp in stale_temporaries(self.path):
            tmp.unlink(missing_ok=True)

    def unlock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # --- contents
    def read_config(self) -> dict:
        try:
            record = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            raise UsageProblem(f"{self.path} is not an advbp run directory (no {CONFIG})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageProblem(f"{self.config_path} is not valid JSON ({exc})") from None
        except OSError as exc:
            raise UsageProblem(f"cannot read {self.config_path}: {exc.strerror}") from None
        if not isinstance(record, dict) or not isinstance(record.get("config", {}), dict):
            raise UsageProblem(f"{self.config_path} is not an advbp run config (expected a JSON object with a 'config' object)")
        return record

    def write_config(self, record: dict) -> None:
        write_json_atomic(self.config_path, record)

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        try:
            lines = [ln for ln in self.metrics_path.read_text().splitlines() if ln.strip()]
            rows = [json.loads(ln) for ln in lines]
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageProblem(f"{self.metrics_path} is corrupt ({exc})") from None
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict) or row.get("epoch") != i:
                raise UsageProblem(f"{self.metrics_path} is corrupt (line {i} is not the metrics of epoch {i})")
        return rows

    def write_metrics(self, rows: list[dict]) -> None:
        # Rewritten whole (it is small) so the file is always a complete set of lines.
        write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def read_summary(self) -> dict:
        try:
            summary = json.loads(self.summary_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageProblem(f"{self.summary_path} is corrupt ({exc})") from None
        if not isinstance(summary, dict):
            raise UsageProblem(f"{self.summary_path} is corrupt (expected a JSON object)")
        return summary

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.summary_path, summary)
