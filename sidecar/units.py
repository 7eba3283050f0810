"""The sidecar's units: sizes are MiB (1024 × 1024 bytes) everywhere, in figures and in messages.

Standard library only, so the pure policies and the contract modules can share it.
"""

from __future__ import annotations

MIB = 1024 * 1024


def mib_text(size_bytes: int) -> str:
    """`size_bytes` as an operator reads it in a message: `50 MiB`, `1.5 MiB`."""
    return f"{size_bytes / MIB:g} MiB"


def pct_text(value: float) -> str:
    """A percentage as reasons and headers show it: whole numbers, `91%`."""
    return f"{value:.0f}%"
