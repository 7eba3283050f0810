"""The NDJSON encoder and the job task without HTTP: the line shapes, an error after the first
line, a caller that goes away, and which Accept headers ask for the stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from hypothesis import given
from hypothesis import strategies as st

from sidecar.errors import ApiError
from sidecar.observability import Metrics
from sidecar.ocr.run import ClientGone, OcrRun
from sidecar.ocr.stream import ndjson_lines, wants_ndjson
from sidecar.schemas import OcrJobSummary, OcrPageResult, OcrTimings, PromptRef, ResidencyInfo

Emit = Callable[[OcrPageResult], Awaitable[None]]


def page(number: int) -> OcrPageResult:
    return OcrPageResult(page=number, text=f"text {number}", complete=True, duration_ms=1)


SUMMARY = OcrJobSummary(
    request_id="r1",
    model="m",
    complete=True,
    residency=ResidencyInfo(keep_alive="0s", rule="unknown", reason="vram unknown"),
    params_sent={},
    prompt=PromptRef(),
    timings=OcrTimings(queue_ms=0, render_ms=0, total_ms=1),
)


class Caller:
    """An ASGI `receive` whose client disconnects when `leave()` is called."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, str]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def leave(self) -> None:
        self.gone.set()


async def lines_of(run: OcrRun) -> list[dict]:
    first = await run.next_event()
    return [json.loads(line) async for line in ndjson_lines(run, first, "r1")]


async def test_pages_then_done():
    async def job(emit: Emit) -> OcrJobSummary:
        for number in (1, 2):
            await emit(page(number))
        return SUMMARY

    lines = await lines_of(OcrRun(job, Caller().receive, Metrics()))
    assert [(line["event"], line.get("page")) for line in lines] == [
        ("page", 1), ("page", 2), ("done", None)]  # fmt: skip
    assert lines[-1]["residency"]["rule"] == "unknown" and "pages" not in lines[-1]


async def test_an_error_after_the_first_line_ends_the_stream_with_problem_fields():
    async def job(emit: Emit) -> OcrJobSummary:
        await emit(page(1))
        raise ApiError("ollama_unavailable", "Ollama cannot be reached.")

    lines = await lines_of(OcrRun(job, Caller().receive, Metrics()))
    assert [line["event"] for line in lines] == ["page", "error"]
    error = lines[-1]
    assert {k: error[k] for k in ("status", "code", "request_id")} == {
        "status": 503, "code": "ollama_unavailable", "request_id": "r1"}  # fmt: skip
    assert error["type"].endswith("/ollama_unavailable") and error["title"]


async def test_an_unexpected_failure_is_an_internal_error_line_without_its_text():
    async def job(emit: Emit) -> OcrJobSummary:
        await emit(page(1))
        raise RuntimeError("secret internals")

    lines = await lines_of(OcrRun(job, Caller().receive, Metrics()))
    assert lines[-1]["code"] == "internal_error" and "secret" not in lines[-1]["detail"]


async def test_a_caller_that_leaves_cancels_the_job_once():
    metrics = Metrics()
    caller = Caller()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def job(emit: Emit) -> OcrJobSummary:
        started.set()
        try:
            await asyncio.Event().wait()  # a page that never comes back
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return SUMMARY

    run = OcrRun(job, caller.receive, metrics)
    await started.wait()
    caller.leave()
    await cancelled.wait()
    try:
        await run.next_event()
    except ClientGone:
        pass
    else:
        raise AssertionError("the job went on without its caller")
    await run.close()  # a second stop: nothing more to cancel, nothing counted twice
    labels = {"reason": "client_gone"}
    assert metrics.registry.get_sample_value("sidecar_ocr_jobs_cancelled_total", labels) == 1


def test_accept_headers():
    assert wants_ndjson("application/x-ndjson")
    assert wants_ndjson("application/json;q=0.5, Application/X-NDJSON")
    assert wants_ndjson("application/x-ndjson; q=0.1")
    assert not wants_ndjson("application/x-ndjson;q=0")
    assert not wants_ndjson("application/json")
    assert not wants_ndjson("*/*")
    assert not wants_ndjson(None)


MEDIA_TYPES = st.sampled_from(
    ["application/x-ndjson", "Application/X-NDJSON", "application/json", "text/*", "*/*"]
)
Q_VALUES = st.sampled_from([None, "0", "0.0", "0.5", "1", "oops"])


@given(st.lists(st.tuples(MEDIA_TYPES, Q_VALUES), max_size=5))
def test_the_stream_is_asked_for_by_its_first_ndjson_entry_unless_its_q_is_zero(
    entries: list[tuple[str, str | None]],
):
    header = ", ".join(kind if q is None else f"{kind};q={q}" for kind, q in entries)
    ndjson = [q for kind, q in entries if kind.lower() == "application/x-ndjson"]
    expected = bool(ndjson) and ndjson[0] not in ("0", "0.0")
    assert wants_ndjson(header) is expected
