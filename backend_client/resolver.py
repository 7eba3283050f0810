"""Reads the profile and the active prompt fresh for every job and validates them.

There is deliberately no cache: an operator's change to a row takes effect on the very next
job, with no restart. `bench/bench_resolver.py` measures what that costs (next to nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select

from backend_client.db import Database
from backend_client.errors import ActivePromptUnavailable, ProfileNotFound
from backend_client.models import AiExecutionProfile, AiPrompt
from backend_client.repositories import profile_values, prompt_values
from backend_client.snapshot import (
    OCR_PROFILE_NAME,
    OCR_PROMPT_KEY,
    JobSnapshot,
    validate_profile,
    validate_prompt,
)


@dataclass(frozen=True)
class StoredPrompt:
    id: int
    version: int
    values: dict[str, Any]


@dataclass(frozen=True)
class StoredRows:
    """The raw stored values a job starts from (before validation or sandbox edits)."""

    profile_name: str
    prompt_key: str
    profile: dict[str, Any]
    prompt: StoredPrompt | None


class SnapshotResolver:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def read(
        self, profile_name: str = OCR_PROFILE_NAME, prompt_key: str = OCR_PROMPT_KEY
    ) -> StoredRows:
        """Both rows, read in one query; `ProfileNotFound` if the profile is missing."""
        # One statement: one round trip, and both rows from the same snapshot.
        statement = (
            select(AiExecutionProfile, AiPrompt)
            .outerjoin(AiPrompt, and_(AiPrompt.prompt_key == prompt_key, AiPrompt.is_active))
            .where(AiExecutionProfile.name == profile_name)
        )
        async with self.db.transaction() as session:
            found = (await session.execute(statement)).first()
        if found is None:
            raise ProfileNotFound(profile_name)
        profile, prompt = found
        stored_prompt = (
            None
            if prompt is None
            else StoredPrompt(prompt.id, prompt.version, prompt_values(prompt))
        )
        return StoredRows(profile_name, prompt_key, profile_values(profile), stored_prompt)

    async def resolve(
        self, profile_name: str = OCR_PROFILE_NAME, prompt_key: str = OCR_PROMPT_KEY
    ) -> JobSnapshot:
        """The validated snapshot for one job, or a `ResolutionError` (and nothing is sent)."""
        return snapshot_of(await self.read(profile_name, prompt_key))


def snapshot_of(rows: StoredRows) -> JobSnapshot:
    if rows.prompt is None:
        raise ActivePromptUnavailable(rows.prompt_key)
    profile = validate_profile(rows.profile_name, rows.profile)
    prompt = validate_prompt(
        rows.prompt_key,
        rows.prompt.values,
        prompt_id=rows.prompt.id,
        version=rows.prompt.version,
    )
    return JobSnapshot(profile=profile, prompt=prompt)
