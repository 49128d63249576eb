"""A run directory: the resolved config with provenance, metrics (one JSON line per epoch), the checkpoint of
the last completed epoch, and the summary. Guarded by a lock so two processes never write the same run, and by
a marker (advbp_cli.outdir) so advbp never writes into, or deletes from, a folder it did not make."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .checkpoint import check_same_record, read_metadata
from .config import RunConfig
from .errors import UsageProblem
from .evaluate import mean_last_epochs
from .files import json_text, loads_finite, write_json_atomic, write_text_atomic
from .outdir import LOCK, read_marker, take  # noqa: F401  (LOCK: the lock file's name, used by the tests)

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
SUMMARY = "summary.json"
METRICS_DIGEST = "metrics_sha256"  # checkpoint metadata: metrics_digest of the epochs up to the checkpoint's
TIMING_FIELDS = ("train_seconds", "seconds")  # the only metrics that differ between two identical runs


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._taken = None

    config_path = property(lambda self: self.path / CONFIG)
    metrics_path = property(lambda self: self.path / METRICS)
    checkpoint_path = property(lambda self: self.path / CHECKPOINT)
    summary_path = property(lambda self: self.path / SUMMARY)

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def is_complete(self) -> bool:
        return self.summary_path.is_file()

    # --- taking the folder: refused unless it is new, empty or advbp's own run (outdir); then locked. flock is
    # released by the kernel when the process dies, so a killed run never leaves a stale lock; unlock deletes it.
    def lock(self, adopt: bool = False, option: str = "--out") -> None:
        """`adopt`: a run directory an older advbp wrote (no marker, but an advbp config.json) may be taken."""
        try:
            self._taken = take(self.path, "run", option, adopt=is_advbp_run if adopt else None)
        except UsageProblem as exc:
            if not adopt and self.path.is_dir() and read_marker(self.path) is None and is_advbp_run(self.path):
                raise UsageProblem(f"{exc} (it holds a run an older advbp wrote: continue it with --resume "
                                   f"{self.path})") from None
            raise

    def unlock(self) -> None:
        if self._taken is not None:
            self._taken.release()
            self._taken = None

    def remove_own_files(self) -> None:
        """--overwrite: advbp's files of the run (config, metrics, checkpoint, summary), never a user's."""
        self._taken.remove_own_files()

    def undo(self) -> None:
        """A start that failed before its first checkpoint: the folder goes back to how it was (see Taken.undo)."""
        if self._taken is not None:
            self._taken.undo()

    # --- contents
    def read_config(self) -> dict:
        try:
            record = loads_finite(self.config_path.read_text())
        except FileNotFoundError:
            raise UsageProblem(f"{self.path} is not an advbp run directory (no {CONFIG})") from None
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
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
            rows = [loads_finite(ln) for ln in lines]
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise UsageProblem(f"{self.metrics_path} is corrupt ({exc})") from None
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict) or row.get("epoch") != i:
                raise UsageProblem(f"{self.metrics_path} is corrupt (line {i} is not the metrics of epoch {i})")
        return rows

    def write_metrics(self, rows: list[dict]) -> str:
        """Rewritten whole (it is small) so the file is always a complete set of lines; returns the rows' digest
        (metrics_digest), which the checkpoint of the same epoch records (METRICS_DIGEST)."""
        write_text_atomic(self.metrics_path, "".join(json_text(r, self.metrics_path, indent=None) + "\n" for r in rows))
        return metrics_digest(rows)

    def check_metrics(self, meta: dict, epochs: int) -> list[dict]:
        """The metrics of the first `epochs` epochs, which must be the ones the checkpoint's metadata has the digest
        of (checkpoints written before the digest existed are not checked)."""
        rows = self.read_metrics()[:epochs]
        want = meta.get(METRICS_DIGEST)
        if want is not None and (len(rows) < epochs or metrics_digest(rows) != want):
            raise UsageProblem(f"{self.metrics_path} differs from the metrics its run's {CHECKPOINT} records (the "
                               f"sha256 of epochs 1-{epochs}): it was edited or belongs to another run")
        return rows

    def read_summary(self) -> dict:
        try:
            summary = loads_finite(self.summary_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise UsageProblem(f"{self.summary_path} is corrupt ({exc})") from None
        if not isinstance(summary, dict):
            raise UsageProblem(f"{self.summary_path} is corrupt (expected a JSON object)")
        return summary

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.summary_path, summary)

    def read_record(self):
        """(RunConfig, checkpoint metadata, metrics up to the checkpoint's epoch), checked to be one run: config.json
        has the identity the checkpoint was trained with (checkpoint.check_same_record) and the metrics are the
        ones it records the digest of. Needs the checkpoint; reads only its header."""
        record = self.read_config()
        try:
            cfg = RunConfig.model_validate(record.get("config", record))
        except Exception as exc:
            raise UsageProblem(f"the config in {self.config_path} is not valid: {str(exc).splitlines()[0]}") from None
        meta = read_metadata(self.checkpoint_path)
        check_same_record(self.checkpoint_path, meta, cfg, str(self.config_path))
        return cfg, meta, self.check_metrics(meta, int(meta["epoch"]))

    def read_verified_summary(self) -> dict:
        """summary.json, only if it is the summary of the run's record: its epochs and its headline (the mean eval
        error of the last epochs) must be what the verified metrics give. An edited summary is refused."""
        summary = self.read_summary()
        cfg, meta, rows = self.read_record()
        head = summary.get("headline")
        value = head.get("value") if isinstance(head, dict) else None
        want = mean_last_epochs(rows, cfg.train.mean_last)
        if summary.get("epochs_completed") != len(rows) or value != want:
            raise UsageProblem(f"{self.summary_path} does not match its run (headline {value!r} over "
                               f"{summary.get('epochs_completed')!r} epochs; the run's metrics give {want!r} over "
                               f"{len(rows)}): it was edited or belongs to another run")
        return summary


def metrics_digest(rows: list[dict]) -> str:
    """sha256 of the metrics rows without their timing fields (which differ between identical runs)."""
    text = "\n".join(json.dumps({k: v for k, v in r.items() if k not in TIMING_FIELDS}, sort_keys=True) for r in rows)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_advbp_run(path: Path) -> bool:
    """A run directory of an advbp from before folder markers: its config.json is an advbp run record."""
    try:
        record = json.loads((Path(path) / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and isinstance(record.get("config"), dict) and isinstance(record.get("provenance"), dict)
