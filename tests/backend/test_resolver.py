"""The resolver reads the rows fresh for every job; each failure mode sends nothing.

"Sends nothing" is checked against a real HTTP server that records every request it receives.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from backend_client import governance
from backend_client.db import Database
from backend_client.documents import DocumentPath
from backend_client.errors import (
    ActivePromptUnavailable,
    InvalidJobRequest,
    InvalidProfile,
    InvalidPrompt,
    ProfileNotFound,
)
from backend_client.services import OcrService
from tests.backend.fake_sidecar import RecordingSidecar

# Fixtures run on the session event loop (pyproject); the tests must share it.
pytestmark = pytest.mark.asyncio(loop_scope="session")

DOC = DocumentPath("tenant-a/invoice.pdf")


async def _execute(db: Database, statement: str, **params: Any) -> None:
    """An operator's direct SQL edit, through a connection of its own (not the service's)."""
    other = Database.from_url(db.url)
    try:
        async with other.transaction() as session:
            await session.execute(text(statement), params)
    finally:
        await other.dispose()


async def test_a_job_sends_the_stored_profile_and_active_prompt(
    ocr_service: OcrService, fake_sidecar: RecordingSidecar
) -> None:
    response = await ocr_service.extract(DOC, pages=[1, 2])
    assert [page.page for page in response.pages] == [1, 2]
    (sent,) = fake_sidecar.requests
    assert sent.path == DOC.path
    assert sent.job["pages"] == [1, 2]
    profile = sent.job["profile"]
    assert profile["name"] == "ocr-extract"
    assert profile["model"] == "scb10x/typhoon-ocr1.5-3b"
    assert (profile["temperature"], profile["top_p"], profile["repeat_penalty"]) == (0.1, 0.6, 1.1)
    assert profile["keep_alive"] == "5m"
    assert profile["options"] == {"num_ctx": 16384}
    assert sent.job["prompt"]["version"] == 2  # the seeded active version (migration 0002)
    assert "{{dms_tags}}" in sent.job["prompt"]["system_prompt"]
    assert response.prompt.version == 2


async def test_a_profile_change_reaches_the_very_next_job(
    db: Database, ocr_service: OcrService, fake_sidecar: RecordingSidecar
) -> None:
    await ocr_service.extract(DOC)
    await governance.update_profile(db, "ocr-extract", {"temperature": 0.7, "top_p": None})
    await ocr_service.extract(DOC)
    await _execute(db, "UPDATE ai_execution_profiles SET max_tokens = 4096, keep_alive = '30s'")
    await ocr_service.extract(DOC)
    sent = [request.job["profile"] for request in fake_sidecar.requests]
    assert [p["temperature"] for p in sent] == [0.1, 0.7, 0.7]
    assert [p["top_p"] for p in sent] == [0.6, None, None]
    assert [p["max_tokens"] for p in sent] == [12288, 12288, 4096]
    assert [p["keep_alive"] for p in sent] == ["5m", "5m", "30s"]


async def test_a_prompt_activation_reaches_the_very_next_job(
    db: Database, ocr_service: OcrService, fake_sidecar: RecordingSidecar
) -> None:
    await ocr_service.extract(DOC)
    added = await governance.add_prompt_version(
        db, "ocr-extract", system_prompt="v3 {{dms_tags}}", dms_tags=["a", "b"]
    )
    await ocr_service.extract(DOC)  # added but not active yet: still version 2
    await governance.activate_prompt(db, "ocr-extract", added.version)
    await ocr_service.extract(DOC)
    await _execute(db, "UPDATE ai_prompts SET is_active = false WHERE version = 3")
    await _execute(db, "UPDATE ai_prompts SET is_active = true WHERE version = 2")
    await ocr_service.extract(DOC)  # rolled back by hand in SQL
    prompts = [request.job["prompt"] for request in fake_sidecar.requests]
    assert [p["version"] for p in prompts] == [2, 2, 3, 2]
    assert prompts[2]["system_prompt"] == "v3 {{dms_tags}}"
    assert prompts[2]["dms_tags"] == ["a", "b"]
    # user_template was not given: the new version carries the active one's over.
    assert prompts[2]["user_template"] == prompts[0]["user_template"]


# Each row edit an operator could make by hand, and the field the error must name.
INVALID_PROFILES = [
    ("temperature = 2.5", "temperature"),
    ("temperature = -0.1", "temperature"),
    ("top_p = 0", "top_p"),
    ("top_p = 1.5", "top_p"),
    ("repeat_penalty = 0", "repeat_penalty"),
    ("max_tokens = 0", "max_tokens"),
    ("max_tokens = 200000", "max_tokens"),
    ("keep_alive = '5 minutes'", "keep_alive"),
    ("keep_alive = '10'", "keep_alive"),
    ("model = NULL", "model"),
    ("model = '   '", "model"),
    ('options = \'{"keep_alive": "1h"}\'', "options.keep_alive"),
    ("options = '[1, 2]'", "options"),
    # Ollama options the sidecar would refuse with its 422: refused here, before sending.
    ('options = \'{"num_ctx": "big"}\'', "options.num_ctx"),
    ("options = '{\"max_tokens\": 5}'", "options.max_tokens"),
    ("options = '{\"temperature\": 0.5}'", "options.temperature"),
]


@pytest.mark.parametrize(("assignment", "field"), INVALID_PROFILES)
async def test_an_invalid_profile_value_is_named_and_nothing_is_sent(
    db: Database,
    ocr_service: OcrService,
    fake_sidecar: RecordingSidecar,
    assignment: str,
    field: str,
) -> None:
    await _execute(db, f"UPDATE ai_execution_profiles SET {assignment}")  # noqa: S608
    with pytest.raises(InvalidProfile) as raised:
        await ocr_service.extract(DOC)
    assert raised.value.field == field
    assert raised.value.name == "ocr-extract"
    assert field in str(raised.value)
    assert fake_sidecar.count == 0


async def test_a_missing_profile_sends_nothing(
    db: Database, ocr_service: OcrService, fake_sidecar: RecordingSidecar
) -> None:
    await _execute(db, "DELETE FROM ai_execution_profiles WHERE name = 'ocr-extract'")
    with pytest.raises(ProfileNotFound, match="ocr-extract"):
        await ocr_service.extract(DOC)
    assert fake_sidecar.count == 0


async def test_no_active_prompt_sends_nothing(
    db: Database, ocr_service: OcrService, fake_sidecar: RecordingSidecar
) -> None:
    await _execute(db, "UPDATE ai_prompts SET is_active = false")
    with pytest.raises(ActivePromptUnavailable, match="ocr-extract"):
        await ocr_service.extract(DOC)
    assert fake_sidecar.count == 0


@pytest.mark.parametrize(
    "tags", ['"invoice_no"', '["a", ""]', "[1, 2]"], ids=["not-a-list", "blank", "numbers"]
)
async def test_an_invalid_active_prompt_sends_nothing(
    db: Database, ocr_service: OcrService, fake_sidecar: RecordingSidecar, tags: str
) -> None:
    await _execute(db, "UPDATE ai_prompts SET dms_tags = :tags", tags=tags)
    with pytest.raises(InvalidPrompt) as raised:
        await ocr_service.extract(DOC)
    assert raised.value.field.startswith("dms_tags")
    assert raised.value.version == 2
    assert fake_sidecar.count == 0


@pytest.mark.parametrize("pages", [[0], [], [-3, 1]])
async def test_invalid_pages_send_nothing(
    ocr_service: OcrService, fake_sidecar: RecordingSidecar, pages: list[int]
) -> None:
    with pytest.raises(InvalidJobRequest, match="pages"):
        await ocr_service.extract(DOC, pages=pages)
    assert fake_sidecar.count == 0


async def test_a_job_after_a_fixed_row_goes_through(
    db: Database, ocr_service: OcrService, fake_sidecar: RecordingSidecar
) -> None:
    """No state is kept from a failure: fixing the row is enough."""
    await _execute(db, "UPDATE ai_execution_profiles SET temperature = 9")
    with pytest.raises(InvalidProfile):
        await ocr_service.extract(DOC)
    await _execute(db, "UPDATE ai_execution_profiles SET temperature = 0.2")
    await ocr_service.extract(DOC)
    assert [r.job["profile"]["temperature"] for r in fake_sidecar.requests] == [0.2]
