"""Migrations up and down on SQLite and PostgreSQL, the schema they build, and the seed."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from backend_client import migrate
from backend_client.db import Database
from backend_client.errors import DatabaseConflict
from backend_client.models import ONE_ACTIVE_PROMPT_INDEX, Base
from backend_client.resolver import SnapshotResolver

# Fixtures run on the session event loop (pyproject); the tests must share it.
pytestmark = pytest.mark.asyncio(loop_scope="session")

TABLES = {"ai_execution_profiles", "ai_prompts"}
HEAD = "0002"


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_upgrade_creates_tables_and_downgrade_removes_them(bare_db: Database) -> None:
    async with bare_db.engine.connect() as connection:
        assert not TABLES & await connection.run_sync(_tables)
    await migrate.upgrade(bare_db.engine)
    assert await migrate.current_revision(bare_db.engine) == HEAD
    async with bare_db.engine.connect() as connection:
        assert await connection.run_sync(_tables) >= TABLES
    await migrate.downgrade(bare_db.engine, "base")
    assert await migrate.current_revision(bare_db.engine) is None
    async with bare_db.engine.connect() as connection:
        assert not TABLES & await connection.run_sync(_tables)
    # ...and back up again: the downgrade left nothing behind that blocks a new upgrade.
    await migrate.upgrade(bare_db.engine)
    assert await migrate.current_revision(bare_db.engine) == HEAD


def _schema_diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, Base.metadata)


async def test_models_match_the_migrated_schema(db: Database) -> None:
    async with db.engine.connect() as connection:
        assert await connection.run_sync(_schema_diff) == []


def _indexes(connection: Connection) -> list[dict[str, object]]:
    return inspect(connection).get_indexes("ai_prompts")


async def test_one_active_prompt_index_is_partial_and_unique(db: Database) -> None:
    async with db.engine.connect() as connection:
        indexes = {index["name"]: index for index in await connection.run_sync(_indexes)}
    index = indexes[ONE_ACTIVE_PROMPT_INDEX]
    assert index["unique"]
    assert index["column_names"] == ["prompt_key"]
    where = index.get("dialect_options", {})
    assert "is_active" in str(where.get(f"{db.url.get_backend_name()}_where"))


async def _insert_prompt(db: Database, key: str, version: int, active: bool) -> None:
    async with db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO ai_prompts (prompt_key, version, system_prompt, dms_tags, is_active) "
                "VALUES (:key, :version, 'p', '[]', :active)"
            ),
            {"key": key, "version": version, "active": active},
        )


async def test_a_second_active_version_of_a_key_is_refused_by_the_database(db: Database) -> None:
    await _insert_prompt(db, "ocr-extract", 3, active=False)  # inactive versions: any number
    await _insert_prompt(db, "ocr-extract", 4, active=False)
    await _insert_prompt(db, "other-key", 1, active=True)  # one active per key, not per table
    # PostgreSQL names the index; SQLite names its single column (not prompt_key, version).
    refused_by_index = rf"{ONE_ACTIVE_PROMPT_INDEX}|failed: ai_prompts\.prompt_key$"
    with pytest.raises(DatabaseConflict, match=refused_by_index):
        await _insert_prompt(db, "ocr-extract", 5, active=True)
    with pytest.raises(DatabaseConflict):
        async with db.transaction() as session:
            await session.execute(
                text("UPDATE ai_prompts SET is_active = true WHERE prompt_key = 'ocr-extract'")
            )
    async with db.transaction() as session:
        active = await session.scalar(
            text("SELECT count(*) FROM ai_prompts WHERE prompt_key = 'ocr-extract' AND is_active")
        )
    assert active == 1


async def test_versions_are_unique_per_key_and_positive(db: Database) -> None:
    # Driver errors leave db.transaction() as one-line DatabaseErrors (one translation point).
    with pytest.raises(DatabaseConflict, match="refused the write"):
        await _insert_prompt(db, "ocr-extract", 1, active=False)
    with pytest.raises(DatabaseConflict):
        await _insert_prompt(db, "ocr-extract", 0, active=False)


async def test_seed_resolves_into_a_valid_typhoon_job(db: Database) -> None:
    snapshot = await SnapshotResolver(db).resolve()
    assert snapshot.profile.name == "ocr-extract"
    assert snapshot.profile.model == "scb10x/typhoon-ocr1.5-3b"
    assert snapshot.profile.temperature == pytest.approx(0.1)
    assert snapshot.profile.options == {"num_ctx": 16384}
    # num_ctx must leave room for image (~2.2k tokens) + prompt after max_tokens.
    assert snapshot.profile.max_tokens is not None
    assert snapshot.profile.max_tokens + 2500 <= snapshot.profile.options["num_ctx"]
    assert snapshot.prompt.version == 2  # migration 0002: Typhoon's own instruction
    assert "{{dms_tags}}" in snapshot.prompt.system_prompt
    assert snapshot.prompt.user_template is not None
    assert snapshot.prompt.user_template.startswith("Extract all text from the image.")
    assert "tax_id" in snapshot.prompt.dms_tags
    assert snapshot.profile.keep_alive_ceiling_s == 300


@pytest.mark.postgres
async def test_json_columns_are_jsonb_on_postgresql(postgres_url: str) -> None:
    db = Database.from_url(postgres_url)
    try:
        await migrate.downgrade(db.engine, "base")
        await migrate.upgrade(db.engine)
        async with db.transaction() as session:
            types = dict(
                (
                    await session.execute(
                        text(
                            "SELECT table_name || '.' || column_name, data_type "
                            "FROM information_schema.columns "
                            "WHERE table_schema = 'public' "
                            "AND column_name IN ('options', 'dms_tags')"
                        )
                    )
                ).all()
            )
        assert types == {"ai_execution_profiles.options": "jsonb", "ai_prompts.dms_tags": "jsonb"}
    finally:
        await db.dispose()


async def test_upgrade_is_atomic(bare_db: Database) -> None:
    """A failing upgrade leaves no half-built schema (transactional DDL on both databases)."""
    async with bare_db.transaction() as session:
        # A conflicting table makes the second CREATE TABLE of the migration fail.
        await session.execute(text("CREATE TABLE ai_prompts (id integer primary key)"))
    with pytest.raises(Exception, match="ai_prompts"):
        await migrate.upgrade(bare_db.engine)
    async with bare_db.engine.connect() as connection:
        tables = await connection.run_sync(_tables)
    assert "ai_execution_profiles" not in tables
    assert await migrate.current_revision(bare_db.engine) is None
    async with bare_db.transaction() as session:
        await session.execute(text("DROP TABLE ai_prompts"))
