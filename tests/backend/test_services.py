"""OcrService page-by-page progress and the sandbox's draft handling, over the recording sidecar."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from backend_client.client import SidecarClient
from backend_client.db import Database
from backend_client.documents import DocumentPath, DocumentUpload
from backend_client.errors import ActivePromptUnavailable, InvalidProfile, InvalidPrompt
from backend_client.resolver import SnapshotResolver
from backend_client.services import OcrService, PromptDraft, SandboxOcrEngineService
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


async def test_pages_are_reported_one_by_one_with_one_snapshot(
    db: Database, ocr_service: OcrService, fake_sidecar: RecordingSidecar
) -> None:
    seen: list[OcrPageResult] = []
    response = await ocr_service.extract(
        DocumentPath("a.pdf"), pages=[3, 1, 2], request_id="doc-9", on_page=seen.append
    )
    assert [page.page for page in seen] == [3, 1, 2]
    assert [page.page for page in response.pages] == [3, 1, 2]
    assert response.request_id == "doc-9"
    assert response.timings.total_ms == 3 * 7  # the fake reports 7 ms per request
    requests = fake_sidecar.requests
    assert [r.job["pages"] for r in requests] == [[3], [1], [2]]
    assert [r.headers["x-request-id"] for r in requests] == ["doc-9.p3", "doc-9.p1", "doc-9.p2"]
    assert len({str(r.job["profile"]) + str(r.job["prompt"]) for r in requests}) == 1


async def test_an_upload_is_one_request_even_with_a_page_callback(
    ocr_service: OcrService, fake_sidecar: RecordingSidecar
) -> None:
    seen: list[OcrPageResult] = []
    await ocr_service.extract(UPLOAD, pages=[1, 2], on_page=seen.append)
    assert fake_sidecar.count == 1  # the bytes are not uploaded once per page
    assert [page.page for page in seen] == [1, 2]


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
    assert outcome.active_version == 1
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
    assert outcome.snapshot.prompt.version == 1


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
