"""A process's resident memory from /proc: now, at peak, and the peak reset (Linux)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the highest RSS since start or since `reset_peak_rss`."""
    return _status_kib(pid, "VmHWM") * 1024


def reset_peak_rss(pid: int) -> bool:
    """Start a new peak from the current RSS (Linux ≥ 4.0, needs the right to write clear_refs).
    Returns False where not allowed: the peak then covers the whole life of the process."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    return False
