"""SidecarClient against a real loopback HTTP server: retries, Retry-After, typed errors.

Retry waits go through an injected sleep that records them, so the tests assert the exact
waits without spending them (and without looking at the wall clock).
"""

from __future__ import annotations

import pytest

from backend_client.client import SidecarClient
from backend_client.documents import DocumentPath, DocumentUpload
from backend_client.errors import (
    ERROR_TYPES,
    ModelNotAvailable,
    SidecarAuthError,
    SidecarDocumentError,
    SidecarError,
    SidecarOverloaded,
    SidecarProtocolError,
    SidecarUnavailable,
    SidecarUnreachable,
    SidecarUpstreamError,
    SidecarValidationError,
)
from backend_client.retry import RetryPolicy
from backend_client.snapshot import JobSnapshot
from sidecar.error_codes import CODES
from sidecar.schemas import OcrJob, OcrProfile, OcrPrompt
from tests.backend.conftest import SleepRecorder
from tests.backend.fake_sidecar import RecordingSidecar, Scripted, problem
from tests.server import ThreadedServer, free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

JOB = JobSnapshot(
    profile=OcrProfile(name="ocr-extract", model="scb10x/typhoon-ocr1.5-3b", temperature=0.1),
    prompt=OcrPrompt(id=1, version=1, system_prompt="s {{dms_tags}}", dms_tags=["a"]),
).job([1])
DOC = DocumentPath("a/b.pdf")
NO_JITTER = RetryPolicy(attempts=4, initial_s=0.5, exp_base=2.0, max_s=10.0, jitter_s=0.25)


def client_for(url: str, sleeps: SleepRecorder, **kwargs: object) -> SidecarClient:
    return SidecarClient(url, sleep=sleeps, jitter=lambda: 0.0, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ against a real server


async def test_503_and_429_are_retried_honouring_retry_after(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> None:
    fake_sidecar.fail_next(
        Scripted(503, problem(503, "ollama_unavailable"), {"Retry-After": "7"}),
        Scripted(429, problem(429, "overloaded"), {"Retry-After": "3"}),
    )
    async with client_for(fake_sidecar.url, sleeps, retry=NO_JITTER) as client:
        response = await client.ocr(JOB, DOC, request_id="job-42")
    assert response.request_id == "job-42"
    assert fake_sidecar.count == 3
    assert sleeps.waits == [7.0, 3.0]
    # Every attempt of one job carries the same request id.
    assert {r.headers["x-request-id"] for r in fake_sidecar.requests} == {"job-42"}


async def test_retry_after_is_capped_and_its_absence_means_exponential_backoff(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> None:
    fake_sidecar.fail_next(
        Scripted(503, problem(503, "not_ready"), {"Retry-After": "3600"}),
        Scripted(503, problem(503, "not_ready")),
        Scripted(429, problem(429, "overloaded")),
    )
    policy = RetryPolicy(attempts=4, initial_s=0.5, exp_base=2, jitter_s=0.25, retry_after_cap_s=20)
    async with SidecarClient(fake_sidecar.url, sleep=sleeps, jitter=lambda: 1.0, retry=policy) as c:
        await c.ocr(JOB, DOC)
    assert fake_sidecar.count == 4
    # capped Retry-After, then 0.5·2¹ + jitter, 0.5·2² + jitter (jitter_s · 1.0)
    assert sleeps.waits == [20.0, 1.25, 2.25]


async def test_retries_stop_after_the_last_attempt_with_the_typed_error(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> None:
    fake_sidecar.fail_next(
        *[Scripted(503, problem(503, "ollama_unavailable", "Ollama is down"))] * 5
    )
    async with client_for(fake_sidecar.url, sleeps, retry=RetryPolicy(attempts=3)) as client:
        with pytest.raises(SidecarUnavailable) as raised:
            await client.ocr(JOB, DOC, request_id="rid-1")
    assert fake_sidecar.count == 3
    assert len(sleeps.waits) == 2
    error = raised.value
    assert (error.code, error.status, error.request_id) == ("ollama_unavailable", 503, "rid-1")
    assert "Ollama is down" in str(error)


# Every documented code but the two retried statuses, each with its own class and family.
FAMILIES = {
    "unauthorized": SidecarAuthError,
    "forbidden_network": SidecarAuthError,
    "path_forbidden": SidecarDocumentError,
    "document_not_found": SidecarDocumentError,
    "too_many_pages": SidecarDocumentError,
    "unsupported_media_type": SidecarDocumentError,
    "validation_error": SidecarValidationError,
    "keep_alive_not_allowed": SidecarValidationError,
    "model_not_available": ModelNotAvailable,
    "internal_error": SidecarUpstreamError,
    "ollama_bad_response": SidecarUpstreamError,
    "ollama_timeout": SidecarUpstreamError,
    "job_timeout": SidecarUpstreamError,
}
NOT_RETRIED = [
    (status, code, ERROR_TYPES[code])
    for code, (status, _title) in CODES.items()
    if status not in (429, 503)
]


@pytest.mark.parametrize(
    ("status", "code", "error_type"),
    [*NOT_RETRIED, (400, "some_future_code", SidecarError)],
)
async def test_other_errors_are_never_retried_and_are_typed(
    fake_sidecar: RecordingSidecar,
    sleeps: SleepRecorder,
    status: int,
    code: str,
    error_type: type[SidecarError],
) -> None:
    fake_sidecar.fail_next(
        Scripted(
            status, problem(status, code, "why", request_id="sidecar-rid"), {"Retry-After": "1"}
        )
    )
    async with client_for(fake_sidecar.url, sleeps) as client:
        with pytest.raises(error_type) as raised:
            await client.ocr(JOB, DOC, request_id="sent-rid")
    assert type(raised.value) is error_type
    assert isinstance(raised.value, FAMILIES.get(code, SidecarError))
    assert (raised.value.code, raised.value.status) == (code, status)
    assert raised.value.request_id == "sidecar-rid"
    assert fake_sidecar.count == 1
    assert sleeps.waits == []


async def test_connect_errors_are_retried_until_the_sidecar_comes_up(
    sleeps: SleepRecorder,
) -> None:
    port = free_port()
    late = RecordingSidecar()
    started: list[ThreadedServer] = []

    async def start_server_on_first_wait(seconds: float) -> None:
        await sleeps(seconds)
        if not started:  # the sidecar finishes starting while the client backs off
            started.append(ThreadedServer(late.app, port=port).start())

    try:
        async with SidecarClient(
            f"http://127.0.0.1:{port}",
            sleep=start_server_on_first_wait,
            jitter=lambda: 0.0,
            retry=NO_JITTER,
        ) as client:
            response = await client.ocr(JOB, DOC, request_id="late-1")
    finally:
        for server in started:
            server.stop()
    assert response.request_id == "late-1"
    assert sleeps.waits == [0.5]  # one failed connect, one backoff, one success
    assert late.count == 1


async def test_an_unreachable_sidecar_is_a_typed_error_after_all_attempts(
    sleeps: SleepRecorder,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with client_for(url, sleeps, retry=RetryPolicy(attempts=3)) as client:
        with pytest.raises(SidecarUnreachable) as raised:
            await client.ocr(JOB, DOC, request_id="nobody-home")
    assert raised.value.code == "sidecar_unreachable"
    assert raised.value.request_id == "nobody-home"
    assert len(sleeps.waits) == 2


async def test_api_key_is_sent_only_when_configured(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> None:
    async with client_for(
        fake_sidecar.url, sleeps, api_key="k" * 8 + "-rotating-key-0123456789"
    ) as c:
        await c.ocr(JOB, DOC)
    async with client_for(fake_sidecar.url, sleeps) as c:  # phase 2: trusted network, no key
        await c.ocr(JOB, DOC)
    with_key, without_key = fake_sidecar.requests
    assert with_key.headers["x-api-key"] == "k" * 8 + "-rotating-key-0123456789"
    assert "x-api-key" not in without_key.headers
    # A request id is generated when the caller has none.
    assert len(without_key.headers["x-request-id"]) == 32


async def test_upload_mode_sends_multipart_file_and_job(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> None:
    upload = DocumentUpload("scan.png", b"\x89PNG\r\n\x1a\n-bytes", "image/png")
    fake_sidecar.fail_next(Scripted(503, problem(503, "overloaded")))  # and resent on retry
    async with client_for(fake_sidecar.url, sleeps) as client:
        await client.ocr(JOB, upload)
    assert fake_sidecar.count == 2
    for recorded in fake_sidecar.requests:
        assert recorded.upload == upload.content
        assert recorded.upload_name == "scan.png"
        assert OcrJob.model_validate(recorded.job) == JOB
        assert "source" not in recorded.job


@pytest.mark.parametrize(
    ("status", "raw"),
    [(502, b"<html>bad gateway</html>"), (200, b'{"not": "an ocr result"}'), (200, b"\xff")],
)
async def test_answers_that_are_not_the_documented_json_are_protocol_errors(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder, status: int, raw: bytes
) -> None:
    fake_sidecar.fail_next(Scripted(status, raw=raw))
    async with client_for(fake_sidecar.url, sleeps) as client:
        with pytest.raises(SidecarProtocolError) as raised:
            await client.ocr(JOB, DOC, request_id="p-1")
    assert raised.value.status == status
    assert raised.value.request_id == "p-1"
    assert fake_sidecar.count == 1


async def test_exhausted_429_is_overloaded(
    fake_sidecar: RecordingSidecar, sleeps: SleepRecorder
) -> None:
    fake_sidecar.fail_next(*[Scripted(429, problem(429, "overloaded"), {"Retry-After": "1"})] * 2)
    async with client_for(fake_sidecar.url, sleeps, retry=RetryPolicy(attempts=2)) as client:
        with pytest.raises(SidecarOverloaded):
            await client.ocr(JOB, DOC)
    assert sleeps.waits == [1.0]
