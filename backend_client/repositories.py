"""Data access for the two governance tables; every method works inside the caller's session.

Prompt versions are immutable: a change is a new row, and activation swaps the active row in the
caller's transaction. The partial unique index `uq_ai_prompts_one_active_per_key` is what makes
two active versions impossible; the row locks taken here make concurrent activations queue up
(the later one wins) instead of failing on that index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend_client.errors import ProfileNotFound, PromptVersionNotFound
from backend_client.models import AiExecutionProfile, AiPrompt
from backend_client.snapshot import PROFILE_FIELDS, PROMPT_FIELDS


def profile_values(row: AiExecutionProfile) -> dict[str, Any]:
    """The fields of a profile row that make up the job, as plain values."""
    return {field: getattr(row, field) for field in PROFILE_FIELDS}


def prompt_values(row: AiPrompt) -> dict[str, Any]:
    return {field: getattr(row, field) for field in PROMPT_FIELDS}


class ProfileRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, name: str, *, for_update: bool = False) -> AiExecutionProfile | None:
        statement = select(AiExecutionProfile).where(AiExecutionProfile.name == name)
        if for_update:
            statement = statement.with_for_update()
        return await self.session.scalar(statement)

    async def require(self, name: str, *, for_update: bool = False) -> AiExecutionProfile:
        row = await self.get(name, for_update=for_update)
        if row is None:
            raise ProfileNotFound(name)
        return row

    async def list(self) -> Sequence[AiExecutionProfile]:
        result = await self.session.scalars(
            select(AiExecutionProfile).order_by(AiExecutionProfile.name)
        )
        return result.all()

    async def update(self, name: str, values: Mapping[str, Any]) -> AiExecutionProfile:
        """Write `values` (already validated by the caller) to the profile row."""
        row = await self.require(name, for_update=True)
        for field, value in values.items():
            setattr(row, field, value)
        await self.session.flush()
        await self.session.refresh(row)
        return row


class PromptRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def active(self, prompt_key: str) -> AiPrompt | None:
        return await self.session.scalar(
            select(AiPrompt).where(AiPrompt.prompt_key == prompt_key, AiPrompt.is_active)
        )

    async def get(self, prompt_key: str, version: int) -> AiPrompt | None:
        return await self.session.scalar(
            select(AiPrompt).where(AiPrompt.prompt_key == prompt_key, AiPrompt.version == version)
        )

    async def latest(self, prompt_key: str) -> AiPrompt | None:
        return await self.session.scalar(
            select(AiPrompt)
            .where(AiPrompt.prompt_key == prompt_key)
            .order_by(AiPrompt.version.desc())
            .limit(1)
        )

    async def list(self, prompt_key: str | None = None) -> Sequence[AiPrompt]:
        statement = select(AiPrompt).order_by(AiPrompt.prompt_key, AiPrompt.version)
        if prompt_key is not None:
            statement = statement.where(AiPrompt.prompt_key == prompt_key)
        return (await self.session.scalars(statement)).all()

    async def lock_key(self, prompt_key: str) -> Sequence[int]:
        """Lock every version of `prompt_key` until the transaction ends (PostgreSQL).

        Concurrent writers of the same key queue here; SQLite needs no row lock because a
        write transaction there holds the database's write lock (Database.transaction).
        """
        result = await self.session.scalars(
            select(AiPrompt.id)
            .where(AiPrompt.prompt_key == prompt_key)
            .order_by(AiPrompt.id)
            .with_for_update()
        )
        return result.all()

    async def add_version(
        self,
        prompt_key: str,
        *,
        system_prompt: str,
        user_template: str | None,
        dms_tags: Sequence[str],
        created_by: str | None = None,
        change_note: str | None = None,
    ) -> AiPrompt:
        """Insert the next version of `prompt_key`, inactive."""
        await self.lock_key(prompt_key)
        highest = await self.session.scalar(
            select(func.max(AiPrompt.version)).where(AiPrompt.prompt_key == prompt_key)
        )
        row = AiPrompt(
            prompt_key=prompt_key,
            version=(highest or 0) + 1,
            system_prompt=system_prompt,
            user_template=user_template,
            dms_tags=list(dms_tags),
            is_active=False,
            created_by=created_by,
            change_note=change_note,
        )
        self.session.add(row)
        await self.session.flush()
        await self.session.refresh(row)
        return row

    async def activate(self, prompt_key: str, version: int) -> AiPrompt:
        """Make `version` the active one: deactivate the others, then activate, in that order."""
        await self.lock_key(prompt_key)
        target = await self.get(prompt_key, version)
        if target is None:
            raise PromptVersionNotFound(prompt_key, version)
        # Two statements in this order: the partial unique index is checked row by row, so the
        # old active row must be off before the new one goes on.
        await self.session.execute(
            update(AiPrompt)
            .where(
                AiPrompt.prompt_key == prompt_key,
                AiPrompt.is_active,
                AiPrompt.id != target.id,
            )
            .values(is_active=False)
        )
        await self.session.execute(
            update(AiPrompt).where(AiPrompt.id == target.id).values(is_active=True)
        )
        await self.session.refresh(target)
        return target

    async def deactivate(self, prompt_key: str) -> None:
        """Leave `prompt_key` with no active version (jobs then fail ActivePromptUnavailable)."""
        await self.lock_key(prompt_key)
        await self.session.execute(
            update(AiPrompt)
            .where(AiPrompt.prompt_key == prompt_key, AiPrompt.is_active)
            .values(is_active=False)
        )
