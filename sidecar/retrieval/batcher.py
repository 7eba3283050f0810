"""Dynamic micro-batching: concurrent requests share forward passes, bounded by a token budget.

Requests put their (already tokenised) items on one queue. A single worker thread takes everything
queued at that moment as a *round*, sorts the round by length (longest first, so batches pad
little), cuts it into micro-batches whose padded size `items × longest` stays within
`max_batch_tokens`, runs each batch and scatters the outputs back to the requests they came from,
one event-loop wake-up per batch. While a round runs, new requests queue up and form the next
round. A lone request runs at once; only when the last round was bigger than what is queued does a
round wait (at most `max_wait_s`) for stragglers.

The queue is bounded in items, counting the items of requests still being prepared (tokenised,
see `admission`) as well as those queued: `is_overloaded` is the one test, and a request that does
not fit is refused with `sidecar.errors.Overloaded` (429 with `Retry-After`) before any work.

A request's `finish` turns its outputs into the reply (for the routes: the response bytes) here in
the worker thread, as Infinity post-processes in its batch thread: the event loop only hands the
finished reply on, so building a 256 x 1024 float reply never stalls it.

Nothing here knows about models: the runner is a callable `list[payload] -> BatchOutput`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sidecar.errors import Overloaded
from sidecar.observability import Metrics

logger = logging.getLogger("sidecar.batcher")

P = TypeVar("P")  # what the runner consumes per item (token ids, …)
R = TypeVar("R")  # what the runner produces per item
T = TypeVar("T")  # what a request's `finish` makes of its outputs (the reply)

# Longest a round waits for requests still arriving (only while the last round was bigger).
DEFAULT_MAX_WAIT_S = 0.005
# Weight of the newest batch in the throughput estimate behind Retry-After.
_RATE_SMOOTHING = 0.2


class BatcherClosed(Exception):
    """The batcher stopped (shutdown) before the request was served."""


@dataclass(frozen=True, slots=True)
class BatchOutput(Generic[R]):
    """What a runner returns for one micro-batch: outputs in batch order and where it ran."""

    outputs: list[R]
    device: str
    reason: str = ""


@dataclass(slots=True)
class Completed(Generic[R]):
    """A request's outputs in its input order; the device is `cpu` if any batch ran there."""

    outputs: list[R]
    device: str
    reason: str


@dataclass(eq=False, slots=True)
class _Request(Generic[R]):
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]  # resolves to what `finish` returned
    finish: Callable[[Completed[R]], Any]
    outputs: list[R | None]
    remaining: int
    device: str = ""
    reason: str = ""
    abandoned: bool = False  # failed or cancelled: its remaining items are skipped

    def record(self, device: str, reason: str) -> None:
        # CPU wins: a reply whose work partly ran on the CPU reports the CPU and why.
        if not self.device or (device == "cpu" and self.device != "cpu"):
            self.device, self.reason = device, reason


@dataclass(slots=True)
class _Item(Generic[P, R]):
    payload: P
    tokens: int
    request: _Request[R]
    position: int = field(default=0)


def split_by_budget(lengths: Sequence[int], max_batch_tokens: int) -> list[range]:
    """Cut items (already sorted longest first) into consecutive batches within the budget.

    A batch's padded cost is `len(batch) × its longest item`; an item longer than the budget
    runs alone.
    """
    batches: list[range] = []
    start = 0
    while start < len(lengths):
        longest = max(lengths[start], 1)
        size = max(1, max_batch_tokens // longest)
        end = min(len(lengths), start + size)
        batches.append(range(start, end))
        start = end
    return batches


class MicroBatcher(Generic[P, R]):
    """One worker thread running micro-batches of `runner` for every caller of `submit`."""

    def __init__(
        self,
        kind: str,
        runner: Callable[[list[P]], BatchOutput[R]],
        *,
        max_batch_tokens: int,
        max_queued_items: int,
        metrics: Metrics,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
    ) -> None:
        self.kind = kind
        self.runner = runner
        self.max_batch_tokens = max_batch_tokens
        self.max_queued_items = max_queued_items
        self.metrics = metrics
        self.max_wait_s = max_wait_s
        self._last_round = 0  # items in the previous round
        self._pending: list[_Item[P, R]] = []
        self._queued = 0  # submitted items not yet handed to the model
        self._preparing = 0  # items of admitted requests not yet submitted (being tokenised)
        self._running = 0  # items inside the runner right now
        self._closed = False
        self._cond = threading.Condition()
        self._items_per_s: float | None = None
        self._thread = threading.Thread(target=self._work, name=f"batcher-{kind}", daemon=True)
        self.batches_run = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return self._running

    @property
    def preparing(self) -> int:
        return self._preparing

    def is_overloaded(self, items: int) -> bool:
        """Whether `items` more would overflow the queue (queued plus being prepared)."""
        return self._queued + self._preparing + items > self.max_queued_items

    def retry_after_s(self) -> int:
        """Seconds until the current queue has likely drained (1 when the rate is unknown)."""
        rate = self._items_per_s
        if not rate:
            return 1
        return max(1, min(60, math.ceil(self._queued / rate)))

    def _refuse_if_full(self, items: int) -> None:
        """Raise `BatcherClosed` or `Overloaded` when `items` more cannot be taken (lock held)."""
        if self._closed:
            raise BatcherClosed(f"{self.kind} batcher is closed")
        if self.is_overloaded(items):
            self.metrics.retrieval_rejected.labels(self.kind).inc()
            retry = self.retry_after_s()
            raise Overloaded(f"the {self.kind} queue is full; retry after {retry}s", retry)

    @contextlib.contextmanager
    def admission(self, items: int) -> Iterator[None]:
        """Hold places for a request's `items` while it is prepared (tokenised): the 429 for a full
        queue comes before that work, and requests cannot pile up unbounded in front of the queue.
        """
        with self._cond:
            self._refuse_if_full(items)
            self._preparing += items
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._preparing -= items
                self._cond.notify_all()

    async def submit(
        self,
        payloads: Sequence[P],
        lengths: Sequence[int],
        finish: Callable[[Completed[R]], T],
    ) -> T:
        """Queue one request's items; once all are done, `finish(outputs in input order)` runs in
        the worker thread and its result (or exception) is the answer."""
        loop = asyncio.get_running_loop()
        request: _Request[R] = _Request(
            loop, loop.create_future(), finish, [None] * len(payloads), len(payloads)
        )
        with self._cond:
            self._refuse_if_full(len(payloads))
            for position, (payload, tokens) in enumerate(zip(payloads, lengths, strict=True)):
                self._pending.append(_Item(payload, tokens, request, position))
            self._queued += len(payloads)
            self.metrics.retrieval_queue_depth.labels(self.kind).set(self._queued)
            self._cond.notify_all()
        try:
            return await request.future
        except asyncio.CancelledError:
            request.abandoned = True  # the caller left: do not spend the model on it
            raise

    def close(self) -> None:
        """Stop the worker; requests still queued fail with `BatcherClosed`."""
        with self._cond:
            self._closed = True
            leftovers, self._pending = self._pending, []
            self._queued = 0
            self._cond.notify_all()
        for item in leftovers:
            self._fail(item.request, BatcherClosed(f"{self.kind} batcher closed"))
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _take_round(self) -> list[_Item[P, R]] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            # Closed-loop clients come back in about the numbers they left: when the last round
            # was bigger than what is queued now, give the stragglers (still in HTTP parsing) up
            # to `max_wait_s` to join. A lone request after a lone request never waits.
            target = min(self._last_round, self.max_queued_items)
            if self.max_wait_s > 0 and len(self._pending) < target:
                self._cond.wait_for(
                    lambda: self._closed or len(self._pending) >= target, self.max_wait_s
                )
            if self._closed:
                return None
            round_items, self._pending = self._pending, []
        self._last_round = len(round_items)
        round_items.sort(key=lambda item: item.tokens, reverse=True)
        return round_items

    def _work(self) -> None:
        while (round_items := self._take_round()) is not None:
            lengths = [item.tokens for item in round_items]
            for span in split_by_budget(lengths, self.max_batch_tokens):
                self._run_batch([round_items[i] for i in span])

    def _set_running(self, items: int) -> None:
        with self._cond:
            self._running = items
            self._cond.notify_all()

    def _run_batch(self, batch: list[_Item[P, R]]) -> None:
        live = [item for item in batch if not item.request.abandoned]
        with self._cond:
            self._queued = max(0, self._queued - len(batch))
            self._running = len(live)
            self.metrics.retrieval_queue_depth.labels(self.kind).set(self._queued)
            self._cond.notify_all()
        if not live:
            return
        started = time.perf_counter()
        try:
            result = self.runner([item.payload for item in live])
            if len(result.outputs) != len(live):
                raise RuntimeError(f"runner gave {len(result.outputs)} outputs for {len(live)}")
        except Exception as exc:
            logger.exception("%s batch failed", self.kind)
            for request in {item.request for item in live}:
                self._fail(request, exc)
            return
        finally:
            self._set_running(0)
        self.batches_run += 1
        self.metrics.retrieval_batch_size.labels(self.kind).observe(len(live))
        self._update_rate(len(live), time.perf_counter() - started)
        finished: list[tuple[_Request[R], Any]] = []
        for item, output in zip(live, result.outputs, strict=True):
            request = item.request
            request.outputs[item.position] = output
            request.record(result.device, result.reason)
            request.remaining -= 1
            if request.remaining == 0 and not request.abandoned:
                done = Completed(list(request.outputs), request.device, request.reason)
                try:
                    finished.append((request, request.finish(done)))
                except Exception as exc:
                    logger.exception("%s reply failed", self.kind)
                    self._fail(request, exc)
        self._resolve_all(finished)

    def _update_rate(self, items: int, seconds: float) -> None:
        rate = items / max(seconds, 1e-6)
        previous = self._items_per_s
        self._items_per_s = (
            rate if previous is None else (1 - _RATE_SMOOTHING) * previous + _RATE_SMOOTHING * rate
        )

    @staticmethod
    def _resolve_all(finished: list[tuple[_Request[R], Any]]) -> None:
        """Hand a batch's finished requests to their event loops: one wake-up per loop per batch,
        not one per request (each is a cross-thread hop that competes with the model for CPU)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request[R], Any]]] = {}
        for request, value in finished:
            by_loop.setdefault(request.loop, []).append((request, value))

        def settle(entries: list[tuple[_Request[R], Any]]) -> None:
            for request, value in entries:
                if not request.future.done():
                    request.future.set_result(value)

        for loop, entries in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop already closed (shutdown)
                loop.call_soon_threadsafe(settle, entries)

    @staticmethod
    def _fail(request: _Request[R], exc: BaseException) -> None:
        if request.abandoned:
            return
        request.abandoned = True

        def settle() -> None:
            if not request.future.done():
                request.future.set_exception(exc)

        with contextlib.suppress(RuntimeError):
            request.loop.call_soon_threadsafe(settle)
