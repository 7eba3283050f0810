"""Backend → real sidecar (create_app, real /ocr route and pipeline) → fake Ollama, all over
real loopback HTTP: the database rows are what Ollama receives, job after job.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typhoon_ocr.ocr_utils import PROMPTS_SYS

from backend_client import governance
from backend_client.client import SidecarClient
from backend_client.db import Database
from backend_client.documents import DocumentPath, DocumentUpload
from backend_client.errors import InvalidProfile, ModelNotAvailable
from backend_client.resolver import SnapshotResolver
from backend_client.services import (
    OcrService,
    PromptDraft,
    SandboxOcrEngineService,
    failed_pages,
)
from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.schemas import OcrPageResult
from tests.fake_ollama import DEFAULT_OCR_MODEL, FakeModel, FakeOllama
from tests.fake_ollama.server import Fault
from tests.fixtures.documents import text_pdf
from tests.server import ThreadedServer, serve

pytestmark = pytest.mark.asyncio(loop_scope="session")

TYPHOON_INSTRUCTION = PROMPTS_SYS["v1.5"](figure_language="Thai")


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama([FakeModel(DEFAULT_OCR_MODEL, text="page text from the fake model")]) as fake:
        yield fake


@pytest.fixture
def sidecar(make_settings: Callable[..., Settings], ollama: FakeOllama) -> Iterator[ThreadedServer]:
    # A nonexistent local path for the retrieval models: they fail to load in the background
    # at once instead of reaching for a hub; /ocr does not need them.
    settings = make_settings(
        ollama_url=ollama.url, embed_model="/nonexistent/embed", rerank_model="/nonexistent/rerank"
    )
    with serve(create_app(settings)) as server:
        yield server


@pytest.fixture
async def client(sidecar: ThreadedServer, api_key: str) -> AsyncIterator[SidecarClient]:
    async with SidecarClient(sidecar.url, api_key=api_key) as client:
        yield client


@pytest.fixture
def document(upload_base: Path) -> DocumentPath:
    (upload_base / "tenant-a").mkdir()
    (upload_base / "tenant-a" / "invoice.pdf").write_bytes(text_pdf(2))
    return DocumentPath("tenant-a/invoice.pdf")


def _chats(ollama: FakeOllama) -> list[dict[str, Any]]:
    """Chat calls that carry a page (the model-load call has no messages)."""
    return [body for body in ollama.bodies("/api/chat") if body.get("messages")]


async def test_stored_parameters_reach_ollama_and_a_change_reaches_the_next_job(
    db: Database, client: SidecarClient, ollama: FakeOllama, document: DocumentPath
) -> None:
    service = OcrService(SnapshotResolver(db), client)
    response = await service.extract(document, request_id="full-path-1")
    assert response.request_id == "full-path-1"
    assert [page.page for page in response.pages] == [1, 2]
    assert all(page.complete and page.text for page in response.pages)
    assert response.prompt.version == 2
    chats = _chats(ollama)
    assert len(chats) == 2  # one call per page
    for chat in chats:
        assert chat["model"] == DEFAULT_OCR_MODEL
        options = chat["options"]
        assert options["temperature"] == 0.1
        assert options["top_p"] == 0.6
        assert options["repeat_penalty"] == 1.1
        assert options["num_predict"] == 12288
        assert options["num_ctx"] == 16384
        system = chat["messages"][0]
        assert system["role"] == "system"
        assert "{{dms_tags}}" not in system["content"]
        assert "document_type, document_number" in system["content"]
        user = chat["messages"][-1]
        assert user["content"] == TYPHOON_INSTRUCTION  # the model's own text, byte for byte
        assert user["images"]

    # The operator changes the profile and activates a new prompt: no restart anywhere.
    await governance.update_profile(db, "ocr-extract", {"temperature": 0.4, "top_p": None})
    await governance.add_prompt_version(
        db, "ocr-extract", system_prompt="Focus on {{dms_tags}}.", dms_tags=["po_number"],
        activate=True,
    )  # fmt: skip
    ollama.clear_requests()
    response = await service.extract(document, pages=[2])
    assert [page.page for page in response.pages] == [2]
    assert response.prompt.version == 3
    (chat,) = _chats(ollama)
    assert chat["options"]["temperature"] == 0.4
    assert "top_p" not in chat["options"]  # unset → omitted, Ollama's Modelfile value applies
    assert chat["messages"][0]["content"] == "Focus on po_number."


async def test_sandbox_runs_a_draft_end_to_end_and_saves_nothing(
    db: Database, client: SidecarClient, ollama: FakeOllama
) -> None:
    sandbox = SandboxOcrEngineService(SnapshotResolver(db), client)
    upload = DocumentUpload("draft.pdf", text_pdf(1), "application/pdf")
    outcome = await sandbox.run(
        upload, PromptDraft(system_prompt="Draft: {{dms_tags}}", dms_tags=["x"]),
        {"temperature": 0.9, "options.num_ctx": 8192},
    )  # fmt: skip
    assert outcome.result.pages[0].complete
    (chat,) = _chats(ollama)
    assert chat["messages"][0]["content"] == "Draft: x"
    assert chat["options"]["temperature"] == 0.9
    assert chat["options"]["num_ctx"] == 8192
    changed = {difference.field for difference in outcome.differences}
    assert changed == {
        "profile.temperature", "profile.options.num_ctx", "prompt.system_prompt", "prompt.dms_tags",
    }  # fmt: skip
    stored = await SnapshotResolver(db).resolve()
    assert (stored.profile.temperature, stored.prompt.version) == (0.1, 2)


async def test_an_invalid_sandbox_edit_reaches_nothing_downstream(
    db: Database, client: SidecarClient, ollama: FakeOllama, document: DocumentPath
) -> None:
    sandbox = SandboxOcrEngineService(SnapshotResolver(db), client)
    with pytest.raises(InvalidProfile, match=r"options\.keep_alive"):
        await sandbox.run(DocumentUpload("a.pdf", text_pdf(1)), None, {"options.keep_alive": "1h"})
    assert ollama.requests == []


async def test_a_model_ollama_lacks_is_a_typed_error(
    db: Database, client: SidecarClient, document: DocumentPath
) -> None:
    await governance.update_profile(db, "ocr-extract", {"model": "scb10x/not-pulled"})
    with pytest.raises(ModelNotAvailable) as raised:
        await OcrService(SnapshotResolver(db), client).extract(document, request_id="rid-424")
    assert (raised.value.code, raised.value.status) == ("model_not_available", 424)
    assert raised.value.request_id == "rid-424"


async def test_pages_stream_through_ocr_service_and_only_failed_pages_are_retried(
    db: Database, client: SidecarClient, ollama: FakeOllama, upload_base: Path
) -> None:
    (upload_base / "three.pdf").write_bytes(text_pdf(3))
    document = DocumentPath("three.pdf")
    service = OcrService(SnapshotResolver(db), client)
    seen: list[OcrPageResult] = []
    whole = await service.extract(document, request_id="stream-1", on_page=seen.append)
    assert [page.page for page in seen] == [1, 2, 3]  # from the real NDJSON stream
    assert whole.pages == seen
    assert (whole.request_id, whole.complete) == ("stream-1", True)

    # One Ollama failure (500, not retried by the sidecar) right after the first page: a partial
    # job. Where that call falls (after any model-load call) is measured on an identical job.
    ollama.clear_requests()
    await service.extract(document)
    # Every inference call counts for `skip`: load calls go to /api/generate, pages to /api/chat.
    calls = [r.path for r in ollama.requests if r.path in ("/api/generate", "/api/chat")]
    first_page_call = calls.index("/api/chat")
    ollama.clear_requests()
    ollama.fail(Fault.ERROR_500, times=1, skip=first_page_call + 1)
    seen.clear()
    partial = await service.extract(document, on_page=seen.append)
    assert failed_pages(partial) == [2], partial
    assert not partial.complete
    assert partial.pages[1].error is not None
    assert partial.pages[1].error.code == "ollama_bad_response"
    assert [page.page for page in seen] == [1, 2, 3]
    ollama.clear_requests()
    merged = await service.retry_failed(document, partial, on_page=seen.append)
    assert merged.complete
    assert [page.page for page in merged.pages] == [1, 2, 3]
    assert merged.pages[0] == partial.pages[0]
    assert len(_chats(ollama)) == 1  # only the failed page went to Ollama again
    assert seen[-1].page == 2


async def test_leaving_a_stream_early_cancels_the_rest_of_the_job(
    db: Database, client: SidecarClient, ollama: FakeOllama, upload_base: Path
) -> None:
    (upload_base / "three.pdf").write_bytes(text_pdf(3))
    document = DocumentPath("three.pdf")
    snapshot = await SnapshotResolver(db).resolve()
    ollama.hold(after=1)  # page calls only: page 1 is answered, page 2 waits in "Ollama"
    try:
        async with client.ocr_stream(snapshot.job(), document) as stream:
            async for page in stream:
                assert page.page == 1
                assert await asyncio.to_thread(ollama.wait_for, lambda fake: fake.held == 1)
                break  # the caller has what it needs while page 2 is in "Ollama"
        # Closing the stream closed the connection: the sidecar dropped page 2's Ollama call...
        assert await asyncio.to_thread(ollama.wait_for, lambda fake: fake.client_gone == 1)
        # ...and never sent page 3.
        assert len(_chats(ollama)) == 2
    finally:
        ollama.release()
