"""Poll a condition until it holds, within a bound: for effects the sidecar applies on its own
schedule (the key file is re-checked at most twice a second)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Key-file changes show within sidecar.auth.KEY_FILE_RECHECK_S (0.5 s); this leaves slack for a
# loaded CI machine without letting a broken reload pass.
KEY_CHANGE_BOUND_S = 5.0


def eventually(probe: Callable[[], T], expected: T, within_s: float = KEY_CHANGE_BOUND_S) -> T:
    """Call `probe` until it returns `expected`; return the last value (== expected if it came)."""
    deadline = time.monotonic() + within_s
    value = probe()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.02)  # polling interval of a bounded wait, not a fix for a race
        value = probe()
    return value
