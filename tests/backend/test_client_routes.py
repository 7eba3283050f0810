"""`SidecarClient.embed()`, `.rerank()` and `.ocr_stream()` against the recording sidecar on a real
socket: the same retries and typed errors as `ocr()`, and the NDJSON stream read line by line.
"""

from __future__ import annotations

import pytest

from backend_client.client import SidecarClient
from backend_client.documents import DocumentPath
from backend_client.errors import (
    DocumentNotFound,
    InvalidJobRequest,
    JobTimeout,
    OllamaUnavailable,
    SidecarProtocolError,
    TooManyInputs,
)
from backend_client.retry import RetryPolicy
from backend_client.snapshot import JobSnapshot
from sidecar.schemas import OcrPageResult, OcrProfile, OcrPrompt
from tests.backend.conftest import SleepRecorder
from tests.backend.fake_sidecar import RecordingSidecar, Scripted, problem

pytestmark = pytest.mark.asyncio(loop_scope="session")

SNAPSHOT = JobSnapshot(
    profile=OcrProfile(name="ocr-extract", model="scb10x/typhoon-ocr1.5-3b"),
    prompt=OcrPrompt(id=1, version=2, system_prompt="s", dms_tags=[]),
)
DOC = DocumentPath("a/b.pdf")
UNAVAILABLE = Scripted(503, problem(503, "ollama_unavailable"), {"Retry-After": "2"})


def client_for(sidecar: RecordingSidecar, sleeps: SleepRecorder) -> SidecarClient:
    return SidecarClient(sidecar.url, sleep=sleeps, jitter=lambda: 0.0, retry=RetryPolicy())


async def test_embed_and_rerank_answer_typed_models_after_retrying_503(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> None:
    fake_sidecar.fail_next(UNAVAILABLE)
    async with client_for(fake_sidecar, sleeps) as client:
        embedded = await client.embed(["one", "three"], return_sparse=True, request_id="e-1")
        fake_sidecar.fail_next(UNAVAILABLE)
        ranked = await client.rerank("red fox", ["blue sky", "red fox runs"], return_text=True)
    assert embedded.dense == [[3.0, 1.0], [5.0, 1.0]]
    assert embedded.sparse == [{"1": 0.5}, {"1": 0.5}]
    assert [(r.index, r.text) for r in ranked.results] == [(1, "red fox runs"), (0, "blue sky")]
    assert sleeps.waits == [2.0, 2.0]  # Retry-After honoured on both routes
    routes = [(r.route, r.headers["x-request-id"]) for r in fake_sidecar.requests]
    assert routes[:2] == [("/embed", "e-1"), ("/embed", "e-1")]  # one id for every attempt
    assert [route for route, _ in routes[2:]] == ["/rerank", "/rerank"]
    assert fake_sidecar.requests[2].job == {
        "query": "red fox",
        "texts": ["blue sky", "red fox runs"],
        "top_n": None,
        "return_text": True,
        "normalize": True,
        "truncate": True,
    }


async def test_embed_errors_are_typed_and_not_retried(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> None:
    fake_sidecar.fail_next(Scripted(413, problem(413, "too_many_inputs", "at most 256")))
    async with client_for(fake_sidecar, sleeps) as client:
        with pytest.raises(TooManyInputs, match="at most 256"):
            await client.embed(["x"])
    assert (fake_sidecar.count, sleeps.waits) == (1, [])


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.embed([]), "inputs"),
        (lambda c: c.embed(["fine", "  "]), "inputs"),
        (lambda c: c.rerank("", ["a"]), "query"),
        (lambda c: c.rerank("q", ["a"], top_n=0), "top_n"),
    ],
)
async def test_requests_the_sidecar_would_refuse_are_not_sent(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder, call: object, field: str
) -> None:
    async with client_for(fake_sidecar, sleeps) as client:
        with pytest.raises(InvalidJobRequest, match=field):
            await call(client)  # type: ignore[operator]
    assert fake_sidecar.count == 0


async def test_ocr_stream_retries_before_the_stream_starts_then_yields_pages(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> None:
    fake_sidecar.fail_next(UNAVAILABLE)
    seen: list[OcrPageResult] = []
    async with (
        client_for(fake_sidecar, sleeps) as client,
        client.ocr_stream(SNAPSHOT.job([2, 1]), DOC, request_id="s-1") as stream,
    ):
        async for page in stream:
            seen.append(page)
    assert [page.page for page in seen] == [2, 1]
    response = stream.response()
    assert (response.request_id, response.complete, response.pages) == ("s-1", True, seen)
    assert sleeps.waits == [2.0]
    assert [r.headers["accept"] for r in fake_sidecar.requests] == ["application/x-ndjson"] * 2


async def test_ocr_stream_problem_before_the_first_line_is_typed(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> None:
    fake_sidecar.fail_next(Scripted(404, problem(404, "document_not_found", "no such file")))
    async with client_for(fake_sidecar, sleeps) as client:
        with pytest.raises(DocumentNotFound, match="no such file"):
            async with client.ocr_stream(SNAPSHOT.job(), DOC):
                pytest.fail("the stream must not open on a 404")


async def test_ocr_stream_error_line_after_pages(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> None:
    fake_sidecar.end_stream_with_error_after(2)
    seen: list[int] = []
    async with client_for(fake_sidecar, sleeps) as client:
        with pytest.raises(JobTimeout) as raised:
            async with client.ocr_stream(SNAPSHOT.job([1, 2, 3]), DOC) as stream:
                async for page in stream:
                    seen.append(page.page)
    assert seen == [1, 2]
    assert raised.value.status == 504


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (
            b'{"event": "page", "page": 1, "text": "t", "complete": true, "duration_ms": 1}\n',
            "done",
        ),
        (b"not json\n", "not JSON"),
        (b'{"event": "page", "page": "one"}\n', "does not fit"),
        (b'{"event": "surprise"}\n', "unknown event"),
        (b'{"event": "error", "detail": "no code"}\n', "without a code"),
    ],
)
async def test_a_broken_stream_is_a_protocol_error(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder, body: bytes, complaint: str
) -> None:
    fake_sidecar.fail_next(
        Scripted(200, raw=body, headers={"Content-Type": "application/x-ndjson"})
    )
    async with client_for(fake_sidecar, sleeps) as client:
        with pytest.raises(SidecarProtocolError, match=complaint):
            async with client.ocr_stream(SNAPSHOT.job([1]), DOC) as stream:
                async for _page in stream:
                    pass


async def test_a_sidecar_that_does_not_stream_gives_the_same_pages(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> None:
    async with client_for(fake_sidecar, sleeps) as client:
        whole = await client.ocr(SNAPSHOT.job([1, 2]), DOC, request_id="w")
        body = whole.model_dump_json().encode()
        fake_sidecar.fail_next(
            Scripted(200, raw=body, headers={"Content-Type": "application/json"})
        )
        async with client.ocr_stream(SNAPSHOT.job([1, 2]), DOC) as stream:
            pages = [page async for page in stream]
    assert pages == whole.pages
    assert stream.response() == whole


async def test_ocr_stream_unavailable_through_every_retry(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> None:
    fake_sidecar.fail_next(*[UNAVAILABLE] * 4)
    async with client_for(fake_sidecar, sleeps) as client:
        with pytest.raises(OllamaUnavailable):
            async with client.ocr_stream(SNAPSHOT.job(), DOC):
                pytest.fail("no stream after the last 503")
    assert fake_sidecar.count == RetryPolicy().attempts
