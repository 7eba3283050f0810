"""Key rotation under load: 32 clients keep calling while the operator rotates the key file.

The runbook, step by step, against a real sidecar process:
1. clients use the old key; the operator adds the new key (atomic rename: old + new);
2. once the new key is accepted, every client moves to it (each confirms one request with it);
3. the operator removes the old key (rename again: new only); a probe measures how long the old
   key is still accepted.
Every client request must succeed throughout. Shared by the test and the bench.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.reliability.eventually import eventually


def replace_key_file(path: Path, keys: list[str]) -> None:
    """What the runbook does: write beside the file, then rename over it."""
    staged = path.with_name(f".{path.name}.new")
    staged.write_text("".join(f"{key}\n" for key in keys), encoding="utf-8")
    os.replace(staged, path)


@dataclass
class RotationRun:
    sent: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    old_key_refused_after_s: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, key_name: str, status: int) -> None:
        with self.lock:
            self.sent += 1
            if status != 200:
                self.failed += 1
                if len(self.failures) < 20:
                    self.failures.append(f"{key_name} key → {status}")


class Clients:
    """`count` threads calling GET /health in a loop with whichever key is current."""

    def __init__(self, url: str, key: str, count: int, run: RotationRun) -> None:
        self.url = url
        self.key = key
        self.key_name = "old"
        self.run = run
        self.stop = threading.Event()
        self.moved: set[int] = set()  # clients that finished a request with the new key
        self.progress = threading.Condition()
        self.threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(count)]

    def _loop(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                key, name = self.key, self.key_name
                status = client.get("/health", headers={"X-API-Key": key}).status_code
                self.run.record(name, status)
                with self.progress:
                    if name == "new":
                        self.moved.add(index)
                    self.progress.notify_all()

    def wait_for(self, predicate: object, timeout: float = 60.0) -> bool:
        with self.progress:
            return self.progress.wait_for(predicate, timeout)  # type: ignore[arg-type]

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def rotate_under_load(
    url: str, key_file: Path, old: str, new: str, clients: int = 32, per_phase: int = 300
) -> RotationRun:
    """Run the runbook while `clients` threads call; `per_phase` requests between steps."""
    run = RotationRun()
    status_of = lambda key: httpx.get(f"{url}/health", headers={"X-API-Key": key}).status_code  # noqa: E731
    with Clients(url, old, clients, run) as load:
        assert load.wait_for(lambda: run.sent >= per_phase)
        replace_key_file(key_file, [old, new])
        assert eventually(lambda: status_of(new), 200) == 200, "the new key was never accepted"
        load.key, load.key_name = new, "new"
        assert load.wait_for(lambda: len(load.moved) == clients), "not every client moved"
        mark = run.sent
        assert load.wait_for(lambda: run.sent >= mark + per_phase)
        replace_key_file(key_file, [new])
        removed_at = time.monotonic()
        if eventually(lambda: status_of(old), 401) == 401:
            run.old_key_refused_after_s = time.monotonic() - removed_at
        mark = run.sent
        assert load.wait_for(lambda: run.sent >= mark + per_phase)
    return run
