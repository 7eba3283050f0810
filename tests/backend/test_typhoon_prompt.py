"""Migration 0002 seeds Typhoon OCR 1.5's own instruction byte for byte as prompt version 2.

The reference is the model's client itself (`typhoon-ocr`, a development dependency only): the
product copies the text into the migration and never imports the package.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select
from typhoon_ocr.ocr_utils import PROMPTS_SYS

from backend_client import governance, migrate
from backend_client.db import Database
from backend_client.models import AiPrompt
from backend_client.resolver import SnapshotResolver

pytestmark = pytest.mark.asyncio(loop_scope="session")

PACKAGE_INSTRUCTION = PROMPTS_SYS["v1.5"](figure_language="Thai")


async def _versions(db: Database) -> dict[int, AiPrompt]:
    async with db.transaction() as session:
        rows = await session.scalars(select(AiPrompt).where(AiPrompt.prompt_key == "ocr-extract"))
        return {row.version: row for row in rows}


async def test_version_2_is_the_packages_instruction_and_is_active(db: Database) -> None:
    versions = await _versions(db)
    assert sorted(versions) == [1, 2]
    assert versions[2].user_template == PACKAGE_INSTRUCTION  # every byte, trailing spaces too
    assert versions[2].user_template.encode() == PACKAGE_INSTRUCTION.encode()
    assert (versions[1].is_active, versions[2].is_active) == (False, True)
    # the DMS system prompt and tags of version 1 stay; version 1 itself is not edited
    assert versions[2].system_prompt == versions[1].system_prompt
    assert versions[2].dms_tags == versions[1].dms_tags
    assert versions[1].user_template != PACKAGE_INSTRUCTION


async def test_a_job_sends_the_packages_instruction(db: Database) -> None:
    snapshot = await SnapshotResolver(db).resolve()
    assert snapshot.prompt.version == 2
    assert snapshot.prompt.user_template == PACKAGE_INSTRUCTION


async def test_downgrade_to_0001_restores_version_1(db: Database) -> None:
    before = await _versions(db)
    await migrate.downgrade(db.engine, "0001")
    after = await _versions(db)
    assert sorted(after) == [1]
    assert after[1].is_active
    assert after[1].user_template == before[1].user_template
    assert after[1].system_prompt == before[1].system_prompt
    await migrate.upgrade(db.engine)
    assert (await SnapshotResolver(db).resolve()).prompt.version == 2


async def test_downgrade_keeps_a_version_activated_since(db: Database) -> None:
    added = await governance.add_prompt_version(
        db, "ocr-extract", system_prompt="v3", activate=True
    )
    await migrate.downgrade(db.engine, "0001")
    after = await _versions(db)
    assert sorted(after) == [1, added.version]
    assert (after[1].is_active, after[added.version].is_active) == (False, True)
