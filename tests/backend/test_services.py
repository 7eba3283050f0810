"""OcrService (one job per document, streamed pages, retrying failed pages) and the sandbox's draft
handling, over the recording sidecar."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from backend_client import governance
from backend_client.client import SidecarClient
from backend_client.db import Database
from backend_client.documents import DocumentPath, DocumentUpload
from backend_client.errors import (
    ActivePromptUnavailable,
    InvalidJobRequest,
    InvalidProfile,
    InvalidPrompt,
    JobTimeout,
)
from backend_client.resolver import SnapshotResolver
from backend_client.services import (
    OcrService,
    PromptDraft,
    SandboxOcrEngineService,
    failed_pages,
)
from sidecar.schemas import OcrPageResult
from tests.backend.fake_sidecar import RecordingSidecar

pytestmark = pytest.mark.asyncio(loop_scope="session")

UPLOAD = DocumentUpload("scan.pdf", b"%PDF-1.7 test bytes", "application/pdf")


@pytest.fixture
def sandbox(db: Database, sidecar_client: SidecarClient) -> SandboxOcrEngineService:
    return SandboxOcrEngineService(SnapshotResolver(db), sidecar_client)


async def _rows(db: Database) -> list[tuple[object, ...]]:
    async with db.transaction() as session:
        profile = (await session.execute(text("SELECT * FROM ai_execution_profiles"))).all()
        prompts = (await session.execute(text("SELECT * FROM ai_prompts ORDER BY id"))).all()
    return [tuple(row) for row in [*profile, *prompts]]


async def test_a_document_is_one_streamed_job_and_pages_reach_the_callback(
    ocr_service: OcrService, fake_sidecar: RecordingSidecar
) -> None:
    seen: list[OcrPageResult] = []
    response = await ocr_service.extract(
        DocumentPath("a.pdf"), pages=[3, 1, 2], request_id="doc-9", on_page=seen.append
    )
    (sent,) = fake_sidecar.requests  # one job for the whole document, not one per page
    assert sent.job["pages"] == [3, 1, 2]
    assert sent.headers["x-request-id"] == "doc-9"
    assert sent.headers["accept"] == "application/x-ndjson"
    assert [page.page for page in seen] == [3, 1, 2]
    assert response.pages == seen
    assert (response.request_id, response.complete) == ("doc-9", True)


async def test_without_a_callback_the_answer_is_not_streamed(
    ocr_service: OcrService, fake_sidecar: RecordingSidecar
) -> None:
    response = await ocr_service.extract(UPLOAD, pages=[1, 2])
    (sent,) = fake_sidecar.requests
    assert "ndjson" not in sent.headers.get("accept", "")
    assert sent.upload == UPLOAD.content
    assert [page.page for page in response.pages] == [1, 2]


async def test_retry_failed_resends_only_the_failed_pages_and_merges_them(
    ocr_service: OcrService, fake_sidecar: RecordingSidecar
) -> None:
    fake_sidecar.fail_pages(2, 4)
    document = DocumentPath("long.pdf")
    partial = await ocr_service.extract(document, pages=[1, 2, 3, 4])
    assert not partial.complete
    assert failed_pages(partial) == [2, 4]
    assert [page.text is None for page in partial.pages] == [False, True, False, True]
    seen: list[OcrPageResult] = []
    merged = await ocr_service.retry_failed(document, partial, on_page=seen.append)
    assert [r.job["pages"] for r in fake_sidecar.requests] == [[1, 2, 3, 4], [2, 4]]
    assert [page.page for page in seen] == [2, 4]
    assert merged.complete
    assert [page.text for page in merged.pages] == [f"text of page {n}" for n in (1, 2, 3, 4)]
    assert merged.pages[0] == partial.pages[0]  # pages that succeeded are kept, not re-sent
    assert merged.timings.total_ms == partial.timings.total_ms + 7  # the fake: 7 ms per job
    # nothing left to retry: nothing is sent
    assert await ocr_service.retry_failed(document, merged) == merged
    assert fake_sidecar.count == 2


async def test_retry_failed_refuses_to_mix_prompt_versions(
    db: Database, ocr_service: OcrService, fake_sidecar: RecordingSidecar
) -> None:
    fake_sidecar.fail_pages(1)
    document = DocumentPath("a.pdf")
    partial = await ocr_service.extract(document, pages=[1, 2])
    await governance.add_prompt_version(db, "ocr-extract", system_prompt="v3", activate=True)
    with pytest.raises(InvalidJobRequest, match="version 3"):
        await ocr_service.retry_failed(document, partial)
    assert fake_sidecar.count == 1


async def test_an_error_event_mid_stream_raises_its_typed_error(
    ocr_service: OcrService, fake_sidecar: RecordingSidecar
) -> None:
    fake_sidecar.end_stream_with_error_after(1)
    seen: list[OcrPageResult] = []
    with pytest.raises(JobTimeout) as raised:
        await ocr_service.extract(DocumentPath("a.pdf"), pages=[1, 2], on_page=seen.append)
    assert [page.page for page in seen] == [1]  # the page that arrived was delivered
    assert raised.value.code == "job_timeout"


async def test_sandbox_sends_the_draft_reports_differences_and_saves_nothing(
    db: Database, sandbox: SandboxOcrEngineService, fake_sidecar: RecordingSidecar
) -> None:
    before = await _rows(db)
    outcome = await sandbox.run(UPLOAD, "Only {{dms_tags}}", {"top_p": 0.9, "options.seed": 7})
    (sent,) = fake_sidecar.requests
    assert sent.upload == UPLOAD.content
    assert sent.job["prompt"]["system_prompt"] == "Only {{dms_tags}}"
    assert sent.job["prompt"]["version"] is None  # a draft, not a stored version
    assert sent.job["profile"]["top_p"] == 0.9
    assert sent.job["profile"]["options"] == {"num_ctx": 16384, "seed": 7}
    assert outcome.snapshot.prompt.system_prompt == "Only {{dms_tags}}"
    assert outcome.active_version == 2
    differences = {d.field: (d.active, d.sandbox) for d in outcome.differences}
    assert differences["profile.top_p"] == (0.6, 0.9)
    assert differences["profile.options.seed"] == (None, 7)
    assert differences["prompt.system_prompt"][1] == "Only {{dms_tags}}"
    assert set(differences) == {"profile.top_p", "profile.options.seed", "prompt.system_prompt"}
    assert outcome.as_dict()["result"]["pages"][0]["text"]
    assert await _rows(db) == before


async def test_sandbox_without_changes_differs_in_nothing(
    sandbox: SandboxOcrEngineService,
) -> None:
    outcome = await sandbox.run(UPLOAD)
    assert outcome.differences == ()
    assert outcome.snapshot.prompt.version == 2


async def test_sandbox_reads_a_file_and_streams_pages_to_the_callback(
    tmp_path: Path, sandbox: SandboxOcrEngineService, fake_sidecar: RecordingSidecar
) -> None:
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(UPLOAD.content)
    seen: list[OcrPageResult] = []
    outcome = await sandbox.run(scan, pages=[1, 2], on_page=seen.append)
    (sent,) = fake_sidecar.requests
    assert (sent.upload, sent.upload_name) == (UPLOAD.content, "scan.pdf")
    assert [page.page for page in seen] == [1, 2]
    assert outcome.result.pages == seen


@pytest.mark.parametrize(
    ("draft", "edits", "error", "field"),
    [
        (None, {"temperature": 7}, InvalidProfile, "temperature"),
        (None, {"options": {"keep_alive": "1h"}}, InvalidProfile, "options.keep_alive"),
        (None, {"description": "x"}, InvalidProfile, "description"),
        (PromptDraft(dms_tags=["ok", ""]), None, InvalidPrompt, "dms_tags"),
    ],
)
async def test_sandbox_validates_drafts_like_stored_rows_and_sends_nothing(
    sandbox: SandboxOcrEngineService,
    fake_sidecar: RecordingSidecar,
    draft: PromptDraft | None,
    edits: dict[str, object] | None,
    error: type[Exception],
    field: str,
) -> None:
    with pytest.raises(error) as raised:
        await sandbox.run(UPLOAD, draft, edits)
    assert raised.value.field == field  # type: ignore[attr-defined]
    assert fake_sidecar.count == 0


async def test_sandbox_draft_works_without_an_active_version(
    db: Database, sandbox: SandboxOcrEngineService, fake_sidecar: RecordingSidecar
) -> None:
    async with db.transaction() as session:
        await session.execute(text("UPDATE ai_prompts SET is_active = false"))
    with pytest.raises(ActivePromptUnavailable):
        await sandbox.run(UPLOAD)
    assert fake_sidecar.count == 0
    outcome = await sandbox.run(UPLOAD, PromptDraft(system_prompt="fresh", dms_tags=["t"]))
    assert outcome.active_version is None
    assert fake_sidecar.requests[0].job["prompt"]["dms_tags"] == ["t"]
