"""Operator actions: validated profile edits, immutable prompt versions, safe activation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from backend_client import governance, migrate
from backend_client.db import Database
from backend_client.errors import (
    InvalidProfile,
    InvalidPrompt,
    ProfileNotFound,
    PromptVersionNotFound,
)
from backend_client.models import AiPrompt
from backend_client.repositories import ProfileRepository

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "ocr-extract"


async def _profile(db: Database) -> dict[str, object]:
    async with db.transaction() as session:
        row = await ProfileRepository(session).require(KEY)
        return {
            "temperature": row.temperature,
            "top_p": row.top_p,
            "keep_alive": row.keep_alive,
            "options": row.options,
            "description": row.description,
        }


async def _versions(db: Database) -> list[tuple[int, bool]]:
    async with db.transaction() as session:
        rows = await session.execute(
            select(AiPrompt.version, AiPrompt.is_active)
            .where(AiPrompt.prompt_key == KEY)
            .order_by(AiPrompt.version)
        )
        return [(version, active) for version, active in rows.all()]


async def test_profile_edits_are_written(db: Database) -> None:
    await governance.update_profile(
        db,
        KEY,
        {
            "temperature": 0.3,
            "top_p": None,
            "keep_alive": 90,
            "options.num_gpu": 99,
            "description": "x",
        },
    )
    assert await _profile(db) == {
        "temperature": 0.3,
        "top_p": None,
        "keep_alive": "90s",  # a number is seconds to Ollama; stored as a duration
        "options": {"num_ctx": 16384, "num_gpu": 99},
        "description": "x",
    }
    await governance.update_profile(db, KEY, {"options.num_gpu": None})
    assert (await _profile(db))["options"] == {"num_ctx": 16384}


@pytest.mark.parametrize(
    ("edits", "field"),
    [
        ({"temperature": 3}, "temperature"),
        ({"keep_alive": "soon"}, "keep_alive"),
        ({"options.keep_alive": "1h"}, "options.keep_alive"),
        ({"options": {"keep_alive": -1}}, "options.keep_alive"),
        ({"options": "num_ctx=1"}, "options"),
        ({"model": ""}, "model"),
        ({"seed": 1}, "seed"),
        ({"name": "renamed"}, "name"),
    ],
)
async def test_invalid_profile_edits_are_refused_and_nothing_is_written(
    db: Database, edits: dict[str, object], field: str
) -> None:
    before = await _profile(db)
    with pytest.raises(InvalidProfile) as raised:
        await governance.update_profile(db, KEY, edits)
    assert raised.value.field == field
    assert await _profile(db) == before


async def test_editing_a_missing_profile_fails(db: Database) -> None:
    with pytest.raises(ProfileNotFound):
        await governance.update_profile(db, "no-such-profile", {"temperature": 0.1})


async def test_a_prompt_change_is_a_new_inactive_version(db: Database) -> None:
    # The seed: version 1, and version 2 (Typhoon's own instruction) active.
    row = await governance.add_prompt_version(db, KEY, system_prompt="v3", dms_tags=[" a ", "b"])
    assert (row.version, row.is_active, row.dms_tags) == (3, False, ["a", "b"])
    assert await _versions(db) == [(1, False), (2, True), (3, False)]
    row = await governance.add_prompt_version(db, KEY, system_prompt="v4", activate=True)
    assert (row.version, row.is_active) == (4, True)
    # Unset tags and user template come from the active version (v2), not the newest (v3).
    async with db.transaction() as session:
        v2 = await session.scalar(select(AiPrompt).where(AiPrompt.version == 2))
    assert v2 is not None
    assert (row.dms_tags, row.user_template) == (v2.dms_tags, v2.user_template)
    assert await _versions(db) == [(1, False), (2, False), (3, False), (4, True)]
    first = await governance.add_prompt_version(db, "new-key", system_prompt="p", dms_tags=[])
    assert (first.version, first.user_template) == (1, None)


async def test_an_invalid_prompt_version_is_not_added(db: Database) -> None:
    with pytest.raises(InvalidPrompt) as raised:
        await governance.add_prompt_version(db, KEY, system_prompt="v3", dms_tags=["ok", "  "])
    assert raised.value.field == "dms_tags"
    assert await _versions(db) == [(1, False), (2, True)]


async def test_activation_swaps_the_active_version(db: Database) -> None:
    await governance.add_prompt_version(db, KEY, system_prompt="v3")
    await governance.activate_prompt(db, KEY, 3)
    assert await _versions(db) == [(1, False), (2, False), (3, True)]
    await governance.activate_prompt(db, KEY, 3)  # idempotent
    await governance.activate_prompt(db, KEY, 1)
    assert await _versions(db) == [(1, True), (2, False), (3, False)]
    with pytest.raises(PromptVersionNotFound):
        await governance.activate_prompt(db, KEY, 7)
    assert await _versions(db) == [(1, True), (2, False), (3, False)]


async def test_concurrent_activations_leave_exactly_one_active(db: Database) -> None:
    for number in range(3, 7):
        await governance.add_prompt_version(db, KEY, system_prompt=f"v{number}")
    # Each activation runs in its own session and connection, all at once.
    activated = await asyncio.gather(
        *(governance.activate_prompt(db, KEY, version) for version in range(1, 7))
    )
    assert sorted(row.version for row in activated) == list(range(1, 7))
    active = [version for version, is_active in await _versions(db) if is_active]
    assert len(active) == 1


async def _wait_until_blocked_on_a_lock(observer: AsyncConnection, database: str) -> None:
    """Wait until some other session of `database` is waiting for a lock (condition, polled)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = :db AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    async with asyncio.timeout(10):
        while True:
            waiting = (await observer.execute(query, {"db": database})).scalar()
            # Statistics views are a snapshot per transaction: end it to see fresh ones.
            await observer.rollback()
            if waiting:
                return
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _fresh_with_three_versions(postgres_url: str) -> AsyncIterator[Database]:
    """A freshly migrated database holding prompt versions 1 (active), 2 and 3."""
    db = Database.from_url(postgres_url)
    try:
        await migrate.downgrade(db.engine, "base")
        await migrate.upgrade(db.engine)  # seeds versions 1 and 2
        await governance.add_prompt_version(db, KEY, system_prompt="v3")
        await governance.activate_prompt(db, KEY, 1)
        yield db
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_an_activation_waits_for_a_concurrent_one_and_then_wins(postgres_url: str) -> None:
    async with _fresh_with_three_versions(postgres_url) as db:
        async with db.engine.connect() as first, db.engine.connect() as observer:
            # A first activation (of v2) holds the key's rows, mid-transaction.
            await first.execute(
                text("SELECT id FROM ai_prompts WHERE prompt_key = :k FOR UPDATE"), {"k": KEY}
            )
            await first.execute(text("UPDATE ai_prompts SET is_active = false WHERE version = 1"))
            await first.execute(text("UPDATE ai_prompts SET is_active = true WHERE version = 2"))
            second = asyncio.create_task(governance.activate_prompt(db, KEY, 3))
            await _wait_until_blocked_on_a_lock(observer, db.url.database or "")
            assert not second.done()
            await first.commit()
            row = await second
        assert (row.version, row.is_active) == (3, True)
        assert await _versions(db) == [(1, False), (2, False), (3, True)]


@pytest.mark.postgres
async def test_the_partial_index_stops_a_racing_writer_that_skips_the_lock(
    postgres_url: str,
) -> None:
    """Even two writers that bypass the repository cannot leave two versions active."""
    async with _fresh_with_three_versions(postgres_url) as db:
        async with (
            db.engine.connect() as first,
            db.engine.connect() as second,
            db.engine.connect() as observer,
        ):
            await first.execute(text("UPDATE ai_prompts SET is_active = false WHERE version = 1"))
            await first.execute(text("UPDATE ai_prompts SET is_active = true WHERE version = 2"))

            async def activate_v3_blindly() -> None:
                await second.execute(
                    text("UPDATE ai_prompts SET is_active = true WHERE version = 3")
                )

            racing = asyncio.create_task(activate_v3_blindly())
            await _wait_until_blocked_on_a_lock(observer, db.url.database or "")
            await first.commit()
            with pytest.raises(IntegrityError, match="uq_ai_prompts_one_active_per_key"):
                await racing
            await second.rollback()
        assert await _versions(db) == [(1, False), (2, True), (3, False)]
