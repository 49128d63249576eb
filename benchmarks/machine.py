"""What the benchmarks print about the machine they ran on (a benchmark's number means little without it)."""

from __future__ import annotations

from pathlib import Path


def autogroup() -> str:
    """Whether Linux's autogroup scheduling is on: then CPU time is shared per session first, so a benchmark's
    processes compete with other sessions as sessions, not as processes (see contention.py)."""
    try:
        on = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return "autogroup scheduling: unknown"
    return f"autogroup scheduling (CPU time shared per session first): {'on' if on else 'off'}"
