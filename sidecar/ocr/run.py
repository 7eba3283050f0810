"""An OCR job running in its own task, watched for the caller going away.

The route starts an `OcrRun` once the request is read. The job's pages come out of `next_event()`
as they are done, then its summary; a job that fails raises its error there. A second task waits
for the ASGI `http.disconnect` message: when the caller disconnects (for the plain JSON reply as
for the stream) the job task is cancelled at once, which closes the Ollama call in flight (httpx
drops that connection from its pool, so Ollama sees the client go and stops generating), renders
no further page and releases the admission slot. Counted in
`sidecar_ocr_jobs_cancelled_total{reason="client_gone"}`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import Receive

from sidecar.observability import Metrics
from sidecar.schemas import OcrJobSummary, OcrPageResult

Event = OcrPageResult | OcrJobSummary
Job = Callable[[Callable[[OcrPageResult], Awaitable[None]]], Awaitable[OcrJobSummary]]


class ClientGone(Exception):
    """The caller disconnected; the job was stopped."""


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the ASGI server reports that the client went away (the body is read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class OcrRun:
    def __init__(self, job: Job, receive: Receive, metrics: Metrics) -> None:
        self.metrics = metrics
        self._cancelled = False
        self._events: asyncio.Queue[Event | _Failed] = asyncio.Queue()
        self._job = asyncio.create_task(self._produce(job), name="ocr-job")
        self._watch = asyncio.create_task(self._watch_caller(receive), name="ocr-disconnect")
        self._job.add_done_callback(lambda _: self._watch.cancel())

    async def _produce(self, job: Job) -> None:
        try:
            summary = await job(self._events.put)
        except asyncio.CancelledError:
            self._events.put_nowait(_Failed(ClientGone()))
            raise
        except Exception as exc:  # handed to the reader, who raises it in the request's task
            self._events.put_nowait(_Failed(exc))
            return
        self._events.put_nowait(summary)

    async def _watch_caller(self, receive: Receive) -> None:
        await wait_for_disconnect(receive)
        self.cancel()

    def cancel(self) -> None:
        """Stop the job because the caller is gone (nothing happens once it has ended).

        Only once: a second `Task.cancel()` would interrupt httpx while it closes the Ollama
        connection, and that connection would stay open with Ollama still generating."""
        if not self._job.done() and not self._cancelled:
            self._cancelled = True
            self.metrics.ocr_cancelled.labels("client_gone").inc()
            self._job.cancel()

    async def next_event(self) -> Event:
        """The next page, or the summary after the last one; raises the job's error, or
        `ClientGone` when the caller disconnected."""
        event = await self._events.get()
        if isinstance(event, _Failed):
            raise event.error
        return event

    async def close(self) -> None:
        """Stop the job if it still runs and wait until it has let go of everything.

        `asyncio.wait`, not `await task`: a caller that is itself being cancelled (Starlette
        cancels the stream's task again and again until it ends) must not pass each of those
        cancellations on to the job, or they would cut httpx off while it closes the Ollama
        connection, and Ollama would go on generating for nobody."""
        self.cancel()
        self._watch.cancel()
        await asyncio.wait((self._job, self._watch))
        for task in (self._job, self._watch):
            if not task.cancelled():
                task.exception()  # retrieved: the reader already got the job's error
