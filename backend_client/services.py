"""What the existing backend calls: production OCR and the sandbox, over one resolver and client.

`OcrService.extract` resolves the profile and active prompt fresh for the job, then sends it.
`SandboxOcrEngineService.run` starts from the same stored rows, applies a draft prompt and/or
profile edits in memory, validates them exactly like stored rows, sends the job, and reports what
differs from the active version. It never writes to the database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend_client.client import SidecarClient, new_request_id
from backend_client.documents import Document, DocumentPath, DocumentUpload
from backend_client.errors import ActivePromptUnavailable
from backend_client.resolver import SnapshotResolver, StoredRows
from backend_client.snapshot import (
    OCR_PROFILE_NAME,
    OCR_PROMPT_KEY,
    PROFILE_FIELDS,
    PROMPT_FIELDS,
    JobSnapshot,
    apply_profile_edits,
    validate_profile,
    validate_prompt,
)
from sidecar.schemas import OcrPageResult, OcrResponse, OcrTimings

PageCallback = Callable[[OcrPageResult], None]


class _ResolvedOcr:
    """What both services share: one resolver, one sidecar client, the rows they read."""

    def __init__(
        self,
        resolver: SnapshotResolver,
        client: SidecarClient,
        *,
        profile_name: str = OCR_PROFILE_NAME,
        prompt_key: str = OCR_PROMPT_KEY,
    ) -> None:
        self.resolver = resolver
        self.client = client
        self.profile_name = profile_name
        self.prompt_key = prompt_key


class OcrService(_ResolvedOcr):
    """Production OCR: `await service.extract(document)`."""

    async def extract(
        self,
        document: Document,
        *,
        pages: Sequence[int] | None = None,
        request_id: str | None = None,
        on_page: PageCallback | None = None,
    ) -> OcrResponse:
        """OCR `document` with the parameters stored right now.

        With `on_page` and several known pages of a path-mode document, pages are sent one request
        each (same snapshot, request ids `ID.pN`) so the callback sees every page as it finishes;
        otherwise the whole job is one request and the callback runs once per returned page.
        """
        snapshot = await self.resolver.resolve(self.profile_name, self.prompt_key)
        return await send_job(
            self.client, snapshot, document, pages=pages, request_id=request_id, on_page=on_page
        )


async def send_job(
    client: SidecarClient,
    snapshot: JobSnapshot,
    document: Document,
    *,
    pages: Sequence[int] | None = None,
    request_id: str | None = None,
    on_page: PageCallback | None = None,
) -> OcrResponse:
    request_id = request_id or new_request_id()
    snapshot.job(pages)  # validate the caller's pages before anything is sent
    page_by_page = (
        on_page is not None and isinstance(document, DocumentPath) and pages and len(pages) > 1
    )
    if not page_by_page:
        response = await client.ocr(snapshot.job(pages), document, request_id=request_id)
        for page in response.pages:
            if on_page is not None:
                on_page(page)
        return response
    assert pages is not None and on_page is not None
    parts = []
    for number in pages:
        part = await client.ocr(
            snapshot.job([number]), document, request_id=f"{request_id}.p{number}"
        )
        for page in part.pages:
            on_page(page)
        parts.append(part)
    return merge_page_responses(request_id, parts)


def merge_page_responses(request_id: str, parts: Sequence[OcrResponse]) -> OcrResponse:
    """One response for a document sent page by page: pages in order, timings added up."""
    last = parts[-1]
    return OcrResponse(
        request_id=request_id,
        model=last.model,
        pages=[page for part in parts for page in part.pages],
        residency=last.residency,
        params_sent=last.params_sent,
        prompt=last.prompt,
        timings=OcrTimings(
            queue_ms=sum(part.timings.queue_ms for part in parts),
            render_ms=sum(part.timings.render_ms for part in parts),
            total_ms=sum(part.timings.total_ms for part in parts),
        ),
    )


@dataclass(frozen=True)
class PromptDraft:
    """A prompt under test; a field left None keeps the active version's value."""

    system_prompt: str | None = None
    user_template: str | None = None
    dms_tags: Sequence[str] | None = None

    def overrides(self) -> dict[str, Any]:
        values = {
            "system_prompt": self.system_prompt,
            "user_template": self.user_template,
            "dms_tags": list(self.dms_tags) if self.dms_tags is not None else None,
        }
        return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class FieldDifference:
    field: str
    """`profile.temperature`, `profile.options.num_ctx`, `prompt.system_prompt`, ..."""
    active: Any
    sandbox: Any


@dataclass(frozen=True)
class SandboxResult:
    result: OcrResponse
    snapshot: JobSnapshot
    """Exactly what was sent (profile and prompt)."""
    active_version: int | None
    """The active prompt version the draft is compared with (None: no active version)."""
    differences: tuple[FieldDifference, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result.model_dump(mode="json"),
            "snapshot": self.snapshot.as_dict(),
            "active_version": self.active_version,
            "differences": [
                {"field": d.field, "active": d.active, "sandbox": d.sandbox}
                for d in self.differences
            ],
        }


class SandboxOcrEngineService(_ResolvedOcr):
    """Try a draft prompt or profile edits on an uploaded file; nothing is saved."""

    async def run(
        self,
        file: DocumentUpload | Path,
        draft_prompt: PromptDraft | str | None = None,
        profile_edits: Mapping[str, Any] | None = None,
        *,
        pages: Sequence[int] | None = None,
        request_id: str | None = None,
    ) -> SandboxResult:
        document = file if isinstance(file, DocumentUpload) else DocumentUpload.from_file(file)
        draft = (
            PromptDraft(system_prompt=draft_prompt)
            if isinstance(draft_prompt, str)
            else draft_prompt
        )
        stored = await self.resolver.read(self.profile_name, self.prompt_key)
        snapshot = sandbox_snapshot(stored, draft, profile_edits or {})
        result = await send_job(self.client, snapshot, document, pages=pages, request_id=request_id)
        return SandboxResult(
            result=result,
            snapshot=snapshot,
            active_version=stored.prompt.version if stored.prompt else None,
            differences=differences(stored, snapshot),
        )


def sandbox_snapshot(
    stored: StoredRows, draft: PromptDraft | None, profile_edits: Mapping[str, Any]
) -> JobSnapshot:
    """The stored rows with the draft and edits applied, validated like stored rows."""
    profile_values = apply_profile_edits(
        stored.profile_name, stored.profile, profile_edits, allowed=PROFILE_FIELDS
    )
    profile = validate_profile(stored.profile_name, profile_values)
    if draft is None:
        if stored.prompt is None:
            raise ActivePromptUnavailable(stored.prompt_key)
        prompt = validate_prompt(
            stored.prompt_key,
            stored.prompt.values,
            prompt_id=stored.prompt.id,
            version=stored.prompt.version,
        )
    else:
        base = dict(stored.prompt.values) if stored.prompt else {}
        prompt = validate_prompt(stored.prompt_key, {**base, **draft.overrides()})
    return JobSnapshot(profile=profile, prompt=prompt)


def differences(stored: StoredRows, snapshot: JobSnapshot) -> tuple[FieldDifference, ...]:
    """Fields whose sandbox value differs from the stored active one (options key by key)."""
    found = []
    used_profile = snapshot.profile.model_dump(mode="json")
    for name in PROFILE_FIELDS:
        if name == "options":
            continue
        if stored.profile.get(name) != used_profile.get(name):
            found.append(
                FieldDifference(f"profile.{name}", stored.profile.get(name), used_profile[name])
            )
    active_options = stored.profile.get("options") or {}
    for key in sorted(set(active_options) | set(snapshot.profile.options)):
        before, after = active_options.get(key), snapshot.profile.options.get(key)
        if before != after:
            found.append(FieldDifference(f"profile.options.{key}", before, after))
    active_prompt = stored.prompt.values if stored.prompt else {}
    used_prompt = snapshot.prompt.model_dump(mode="json")
    for name in PROMPT_FIELDS:
        if active_prompt.get(name) != used_prompt.get(name):
            found.append(
                FieldDifference(f"prompt.{name}", active_prompt.get(name), used_prompt[name])
            )
    return tuple(found)
