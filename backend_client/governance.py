"""Operator actions on the governance tables, each in its own transaction, validated first.

What `ocr-backend profile set / prompt add / prompt activate` run; the existing backend's admin
screens can call the same functions. Values are validated with the same rules the resolver
applies, so nothing that would make the next job fail is ever written through here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from backend_client.db import Database
from backend_client.errors import DatabaseConflict, DatabaseError
from backend_client.models import AiExecutionProfile, AiPrompt
from backend_client.repositories import ProfileRepository, PromptRepository, profile_values
from backend_client.snapshot import (
    PROFILE_FIELDS,
    apply_profile_edits,
    validate_profile,
    validate_prompt,
)

EDITABLE_PROFILE_FIELDS = (*PROFILE_FIELDS, "description")
# Two writers adding the first version of a new key both compute version 1; one retries.
ADD_VERSION_ATTEMPTS = 3


async def update_profile(db: Database, name: str, edits: Mapping[str, Any]) -> AiExecutionProfile:
    """Apply `edits` (field → value, `options.KEY` for one option) to profile `name`."""
    async with db.transaction(write=True) as session:
        repository = ProfileRepository(session)
        row = await repository.require(name, for_update=True)
        current = {**profile_values(row), "description": row.description}
        merged = apply_profile_edits(name, current, edits, allowed=EDITABLE_PROFILE_FIELDS)
        validate_profile(name, {k: v for k, v in merged.items() if k in PROFILE_FIELDS})
        changed = {k: v for k, v in merged.items() if current.get(k) != v}
        return await repository.update(name, changed) if changed else row


async def add_prompt_version(
    db: Database,
    prompt_key: str,
    *,
    system_prompt: str,
    dms_tags: Sequence[str] | None = None,
    user_template: str | None = None,
    inherit_user_template: bool = True,
    created_by: str | None = None,
    change_note: str | None = None,
    activate: bool = False,
) -> AiPrompt:
    """Add the next version of `prompt_key`; unset tags/user template come from the active one.

    With `activate=True` the new version becomes active in the same transaction.
    """
    for attempt in range(1, ADD_VERSION_ATTEMPTS + 1):
        try:
            async with db.transaction(write=True) as session:
                prompts = PromptRepository(session)
                base = await prompts.active(prompt_key) or await prompts.latest(prompt_key)
                tags = (
                    list(dms_tags) if dms_tags is not None else list(base.dms_tags if base else [])
                )
                template = user_template
                if template is None and inherit_user_template and base is not None:
                    template = base.user_template
                values = {
                    "system_prompt": system_prompt,
                    "user_template": template,
                    "dms_tags": tags,
                }
                validated = validate_prompt(prompt_key, values)
                row = await prompts.add_version(
                    prompt_key,
                    system_prompt=validated.system_prompt,
                    user_template=validated.user_template,
                    dms_tags=validated.dms_tags,
                    created_by=created_by,
                    change_note=change_note,
                )
                if activate:
                    row = await prompts.activate(prompt_key, row.version)
                return row
        except DatabaseConflict:
            if attempt == ADD_VERSION_ATTEMPTS:
                raise
    raise DatabaseError("unreachable")  # pragma: no cover - the loop returns or raises


async def activate_prompt(db: Database, prompt_key: str, version: int) -> AiPrompt:
    async with db.transaction(write=True) as session:
        return await PromptRepository(session).activate(prompt_key, version)


async def list_prompts(db: Database, prompt_key: str | None = None) -> Sequence[AiPrompt]:
    async with db.transaction() as session:
        return await PromptRepository(session).list(prompt_key)


async def get_profiles(db: Database, name: str | None = None) -> Sequence[AiExecutionProfile]:
    async with db.transaction() as session:
        repository = ProfileRepository(session)
        if name is None:
            return await repository.list()
        return [await repository.require(name)]
