"""Admission control for OCR jobs: a few in Ollama at once, a bounded FIFO queue, 429 beyond it.

At most `MAX_CONCURRENT_OCR` jobs hold a slot; up to `QUEUE_SIZE` more wait in arrival order; the
next one is refused at once with `Overloaded` (429 `overloaded`, `Retry-After` estimated from
recent job durations). `is_overloaded()` is the one test of "full" that both the early check
(before an upload is read) and the slot itself use. While `exclusive_when()` is true (critical
VRAM pressure) only one job runs at a time: jobs already running finish, and no new one starts
until the slot count is back under the limit.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from sidecar.errors import Overloaded
from sidecar.observability import Metrics

# Retry-After bounds (seconds) and the weight of the newest job in the duration average.
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 60
_EWMA_WEIGHT = 0.2


@dataclass(frozen=True, slots=True)
class Admission:
    queue_seconds: float


class AdmissionControl:
    def __init__(
        self,
        max_concurrent: int,
        queue_size: int,
        metrics: Metrics,
        *,
        exclusive_when: Callable[[], bool] | None = None,
    ) -> None:
        if max_concurrent < 1 or queue_size < 0:
            raise ValueError("max_concurrent must be ≥ 1 and queue_size ≥ 0")
        self.max_concurrent = max_concurrent
        self.queue_size = queue_size
        self.metrics = metrics
        self._exclusive_when = exclusive_when
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._job_seconds = 1.0  # running average of slot hold time, for Retry-After

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    def limit(self) -> int:
        """Slots available right now: 1 under critical VRAM pressure."""
        if self._exclusive_when is not None and self._exclusive_when():
            return 1
        return self.max_concurrent

    def _can_start_now(self) -> bool:
        return not self._waiters and self._active < self.limit()

    def is_overloaded(self) -> bool:
        """A new job could neither start nor queue (the queue holds `queue_size` waiters)."""
        return not self._can_start_now() and self.waiting >= self.queue_size

    def refuse_if_overloaded(self) -> None:
        """Raise `Overloaded` (429) when a new job could not even queue."""
        if self.is_overloaded():
            self.metrics.ocr_rejected.inc()
            raise Overloaded(
                f"{self._active} OCR jobs are running and {self.waiting} are queued "
                f"(limit {self.queue_size}); retry later.",
                self.retry_after_seconds(),
            )

    def retry_after_seconds(self) -> int:
        estimate = math.ceil(self._job_seconds / self.max_concurrent)
        return max(MIN_RETRY_AFTER_S, min(MAX_RETRY_AFTER_S, estimate))

    def stats(self) -> dict[str, int]:
        return {
            "active": self._active,
            "waiting": self.waiting,
            "max_concurrent": self.max_concurrent,
            "limit": self.limit(),
            "queue_size": self.queue_size,
        }

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Admission]:
        """Hold one job slot for the body of the `async with`; raises 429 when the queue is full."""
        queue_seconds = await self._acquire()
        held_from = time.perf_counter()
        try:
            yield Admission(queue_seconds)
        finally:
            self._record_job(time.perf_counter() - held_from)
            self._release()

    async def _acquire(self) -> float:
        started = time.perf_counter()
        if self._can_start_now():
            self._take()
            self.metrics.ocr_queue_seconds.observe(0.0)
            return 0.0
        self.refuse_if_overloaded()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._publish()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted in the same tick the caller gave up: hand it on
            else:
                self._forget(waiter)
            raise
        finally:
            self._publish()
        waited = time.perf_counter() - started
        self.metrics.ocr_queue_seconds.observe(waited)
        return waited

    def _take(self) -> None:
        self._active += 1
        self._publish()

    def _release(self) -> None:
        self._active -= 1
        self._grant()
        self._publish()

    def _grant(self) -> None:
        """Wake waiters in arrival order while slots are free."""
        while self._waiters and self._active < self.limit():
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled while queued
                continue
            self._active += 1
            waiter.set_result(None)

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        with suppress(ValueError):
            self._waiters.remove(waiter)

    def _record_job(self, seconds: float) -> None:
        self._job_seconds += _EWMA_WEIGHT * (seconds - self._job_seconds)

    def _publish(self) -> None:
        self.metrics.ocr_active.set(self._active)
        self.metrics.ocr_queue_depth.set(self.waiting)
