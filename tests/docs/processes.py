"""Helpers for the tests that run the documented commands as separate processes."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any sidecar setting (a developer's shell must not leak)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OCR_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    """Poll a condition another process makes true (bounded; there is nothing to wait on)."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        pause.wait(0.2)
