"""What the existing backend calls: production OCR and the sandbox, over one resolver and client.

`OcrService.extract` resolves the profile and active prompt fresh for the job, then sends it as
one job (one request for the whole document). `OcrService.retry_failed` sends only the pages a
partial result lacks and merges them in. `SandboxOcrEngineService.run` starts from the same stored
rows, applies a draft prompt and/or profile edits in memory, validates them exactly like stored
rows, sends the job, and reports what differs from the active version; it never writes to the
database. With a page callback, both stream the job and call it with each page as it arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend_client.client import SidecarClient, new_request_id
from backend_client.documents import Document, DocumentUpload
from backend_client.errors import ActivePromptUnavailable, InvalidJobRequest
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
        """OCR `document` with the parameters stored right now, as one job.

        With `on_page` the job is streamed and the callback sees every page as it finishes.
        The result may be partial (`complete` false, failed pages with `error`): see
        `retry_failed`.
        """
        snapshot = await self.resolver.resolve(self.profile_name, self.prompt_key)
        return await send_job(
            self.client, snapshot, document, pages=pages, request_id=request_id, on_page=on_page
        )

    async def retry_failed(
        self,
        document: Document,
        result: OcrResponse,
        *,
        request_id: str | None = None,
        on_page: PageCallback | None = None,
    ) -> OcrResponse:
        """`result` with its failed pages sent again, and only those (one job); the pages that
        succeeded are kept as they are. Refused when the active prompt has changed since, so one
        document's pages never mix prompt versions."""
        pages = failed_pages(result)
        if not pages:
            return result
        snapshot = await self.resolver.resolve(self.profile_name, self.prompt_key)
        if (snapshot.prompt.id, snapshot.prompt.version) != (
            result.prompt.id,
            result.prompt.version,
        ):
            raise InvalidJobRequest(
                f"the active prompt is now version {snapshot.prompt.version}, the result used "
                f"version {result.prompt.version}: OCR the whole document again"
            )
        retried = await send_job(
            self.client, snapshot, document, pages=pages, request_id=request_id, on_page=on_page
        )
        return merge_retried_pages(result, retried)


async def send_job(
    client: SidecarClient,
    snapshot: JobSnapshot,
    document: Document,
    *,
    pages: Sequence[int] | None = None,
    request_id: str | None = None,
    on_page: PageCallback | None = None,
) -> OcrResponse:
    """One job, one request: streamed when there is a callback to feed, else one answer."""
    job = snapshot.job(pages)  # validates the caller's pages before anything is sent
    request_id = request_id or new_request_id()
    if on_page is None:
        return await client.ocr(job, document, request_id=request_id)
    async with client.ocr_stream(job, document, request_id=request_id) as stream:
        async for page in stream:
            on_page(page)
    return stream.response()


def failed_pages(result: OcrResponse) -> list[int]:
    """Pages that have no text because they failed (not pages the model cut short)."""
    return [page.page for page in result.pages if page.error is not None]


def merge_retried_pages(original: OcrResponse, retried: OcrResponse) -> OcrResponse:
    """`original` with each page of `retried` in its place; timings add up."""
    by_number = {page.page: page for page in retried.pages}
    pages = [by_number.get(page.page, page) for page in original.pages]
    timings = OcrTimings(
        queue_ms=original.timings.queue_ms + retried.timings.queue_ms,
        render_ms=original.timings.render_ms + retried.timings.render_ms,
        total_ms=original.timings.total_ms + retried.timings.total_ms,
    )
    return original.model_copy(
        update={
            "pages": pages,
            "complete": all(page.complete for page in pages),
            "residency": retried.residency,
            "timings": timings,
        }
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
        on_page: PageCallback | None = None,
    ) -> SandboxResult:
        document = (
            file
            if isinstance(file, DocumentUpload)
            else await asyncio.to_thread(DocumentUpload.from_file, file)  # keep the loop free
        )
        draft = (
            PromptDraft(system_prompt=draft_prompt)
            if isinstance(draft_prompt, str)
            else draft_prompt
        )
        stored = await self.resolver.read(self.profile_name, self.prompt_key)
        snapshot = sandbox_snapshot(stored, draft, profile_edits or {})
        result = await send_job(
            self.client, snapshot, document, pages=pages, request_id=request_id, on_page=on_page
        )
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
