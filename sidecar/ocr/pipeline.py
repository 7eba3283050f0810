"""`POST /ocr` without HTTP: document → page images → Ollama → per-page text (DESIGN.md §4, §5).

For each job, in this order:
1. options and system message are built and checked (422 before anything is opened);
2. the document is opened in a worker thread (415/422) and the pages chosen (413/422);
3. the job waits for an admission slot (429 when the queue is full);
4. the residency policy decides keep_alive from the VRAM snapshot and /api/ps;
5. a load call (`/api/generate` with an empty prompt) when /api/ps does not list the model, then
   one `/api/chat` per page; every call, the load call included, carries the same system prompt,
   options and keep_alive. Page 1 renders while the job waits for its slot, page n+1 while Ollama
   reads page n.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx

from sidecar.config import Settings
from sidecar.errors import ApiError
from sidecar.loaded_models import LoadedModel, model_key
from sidecar.observability import Metrics
from sidecar.ocr.admission import AdmissionControl
from sidecar.ocr.documents import Document, PageImage, open_document
from sidecar.ocr.messages import (
    build_options,
    build_system_prompt,
    needs_anchor,
    system_messages,
    user_message,
)
from sidecar.ollama import ChatReply, OllamaBadResponse, OllamaClient, OllamaError
from sidecar.residency_policy import ResidencyDecision, calculate_ocr_residency
from sidecar.schemas import (
    OcrJob,
    OcrPageResult,
    OcrResponse,
    OcrTimings,
    PromptRef,
    ResidencyInfo,
    VramFigures,
)
from sidecar.vram_monitor import VramMonitor, VramSnapshot

logger = logging.getLogger("sidecar.ocr")


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def check_page_limit(requested: Sequence[int] | None, max_pages: int) -> None:
    if requested is not None and len(requested) > max_pages:
        raise ApiError(
            "too_many_pages", f"{len(requested)} pages requested; the limit is {max_pages}."
        )


def select_pages(requested: Sequence[int] | None, page_count: int, max_pages: int) -> list[int]:
    """1-based page numbers to process: all when none are named; 413 over MAX_PAGES."""
    if requested is None:
        if page_count > max_pages:
            raise ApiError(
                "too_many_pages",
                f"The document has {page_count} pages, more than the {max_pages}-page limit; "
                "name the pages to read in `pages`.",
            )
        return list(range(1, page_count + 1))
    check_page_limit(requested, max_pages)
    seen: set[int] = set()
    for number in requested:
        if number in seen:
            raise ApiError("validation_error", f"pages: page {number} is listed twice")
        if number > page_count:
            raise ApiError(
                "validation_error",
                f"pages: page {number} does not exist; the document has {page_count} "
                f"page{'s' if page_count != 1 else ''}",
            )
        seen.add(number)
    return list(requested)


def _timed_render(document: Document, number: int, with_anchor: bool) -> tuple[PageImage, float]:
    started = time.perf_counter()
    page = document.render(number, with_anchor=with_anchor)
    return page, time.perf_counter() - started


class OcrPipeline:
    def __init__(
        self, settings: Settings, http: httpx.AsyncClient, vram: VramMonitor, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.http = http
        self.vram = vram
        self.metrics = metrics
        self.ollama = OllamaClient(
            http,
            settings.ollama_url,
            read_timeout_s=settings.ollama_timeout_s,
            connect_timeout_s=settings.ollama_connect_timeout_s,
        )
        self.admission = AdmissionControl(
            settings.max_concurrent_ocr,
            settings.queue_size,
            metrics,
            exclusive_when=self.vram_critical,
        )
        # VRAM size of each OCR model when last seen in /api/ps (model key → MiB).
        self._footprints: dict[str, int] = {}

    # --- health --------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """`ollama` section of /health: reachable, version, loaded models (from /api/ps)."""
        try:
            version = await self.ollama.version()
            loaded = await self.ollama.loaded_models(probe=True)
        except ApiError as exc:
            return {"reachable": False, "version": None, "loaded_models": [], "error": exc.code}
        return {
            "reachable": True,
            "version": version,
            "loaded_models": [
                {
                    "name": model.name,
                    "size_mib": model.size_mib,
                    "size_vram_mib": model.size_vram_mib,
                    "expires_at": model.expires_at,
                }
                for model in loaded
            ],
        }

    async def ready_problems(self) -> list[str]:
        """Reasons /ready must answer 503; empty when Ollama answers /api/version."""
        try:
            await self.ollama.version()
        except OllamaBadResponse:
            return ["ollama answers /api/version unexpectedly"]
        except OllamaError:
            return ["ollama unreachable"]
        return []

    def queue_stats(self) -> dict[str, int]:
        return self.admission.stats()

    async def close(self) -> None:
        return None  # the shared HTTP client belongs to the lifespan

    # --- admission -----------------------------------------------------------------------------

    def vram_critical(self) -> bool:
        snapshot = self.vram.snapshot()
        return snapshot is not None and snapshot.used_pct >= self.settings.vram_critical_pct

    def check_capacity(self) -> None:
        """Refuse (429) before an upload is read when the queue is already full."""
        self.admission.refuse_if_overloaded()

    # --- the job -------------------------------------------------------------------------------

    async def process_ocr(self, job: OcrJob, data: bytes, *, request_id: str) -> OcrResponse:
        """OCR `data` (a document's bytes) as `job` says; raises ApiError with documented codes."""
        started = time.perf_counter()
        options = build_options(job)
        system_prompt = build_system_prompt(job.prompt)
        check_page_limit(job.pages, self.settings.max_pages)  # before the document is opened
        render_started = time.perf_counter()
        document = await asyncio.to_thread(open_document, data)
        open_seconds = time.perf_counter() - render_started
        first_page: asyncio.Task[tuple[PageImage, float]] | None = None
        try:
            pages = select_pages(job.pages, document.page_count, self.settings.max_pages)
            # Page 1 renders while the job waits for its slot.
            first_page = self._render_task(document, pages[0], needs_anchor(job.prompt))
            async with self.admission.slot() as admission:
                try:
                    decision, vram, loaded = await self._decide_residency(job, request_id)
                    keep_alive = decision.keep_alive
                    if not loaded:  # the load call: load time stays out of page 1's duration
                        await self.ollama.load(
                            job.profile.model,
                            system=system_prompt,
                            options=options,
                            keep_alive=keep_alive,
                        )
                    results, render_seconds = await self._read_pages(
                        job, document, pages, first_page, system_prompt, options, keep_alive
                    )
                except OllamaError as exc:
                    self.metrics.ollama_errors.labels(exc.code).inc()
                    logger.warning(
                        "ollama call failed",
                        extra={"request_id": request_id, "code": exc.code},
                    )
                    raise
        finally:
            if first_page is not None:  # finished before the document closes under it
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await first_page
            await asyncio.to_thread(document.close)
        render_seconds += open_seconds
        self.metrics.ocr_render_seconds.observe(render_seconds)
        return OcrResponse(
            request_id=request_id,
            model=job.profile.model,
            pages=results,
            residency=ResidencyInfo(
                keep_alive=keep_alive,
                reason=decision.reason,
                vram=VramFigures(used_mib=vram.used_mib, total_mib=vram.total_mib)
                if vram is not None
                else None,
            ),
            params_sent=options,
            prompt=PromptRef(id=job.prompt.id, version=job.prompt.version),
            timings=OcrTimings(
                queue_ms=_ms(admission.queue_seconds),
                render_ms=_ms(render_seconds),
                total_ms=_ms(time.perf_counter() - started),
            ),
        )

    async def _decide_residency(
        self, job: OcrJob, request_id: str
    ) -> tuple[ResidencyDecision, VramSnapshot | None, bool]:
        """The keep_alive for this job, the VRAM seen, and whether /api/ps lists the model."""
        vram = self.vram.snapshot()
        if vram is not None:
            self.metrics.vram_used_mib.set(vram.used_mib)
            self.metrics.vram_total_mib.set(vram.total_mib)
        loaded = await self.ollama.loaded_models()
        self._remember_footprints(loaded)
        decision = calculate_ocr_residency(
            job.profile,
            vram,
            loaded,
            self.settings,
            ocr_footprint_mib=self._footprints.get(model_key(job.profile.model)),
        )
        self.metrics.ocr_keep_alive_seconds.observe(decision.keep_alive_seconds)
        self.metrics.ocr_residency.labels(decision.rule).inc()
        logger.info(
            "ocr residency decision",
            extra={
                "request_id": request_id,
                "model": job.profile.model,
                "keep_alive_s": decision.keep_alive_seconds,
                "rule": decision.rule,
                "reason": decision.reason,
            },
        )
        key = model_key(job.profile.model)
        return decision, vram, any(model_key(m.name) == key for m in loaded)

    def _remember_footprints(self, loaded: Sequence[LoadedModel]) -> None:
        for model in loaded:
            if model.size_vram > 0:
                self._footprints[model_key(model.name)] = model.size_vram_mib

    async def _read_pages(
        self,
        job: OcrJob,
        document: Document,
        pages: list[int],
        first_page: asyncio.Task[tuple[PageImage, float]],
        system_prompt: str,
        options: dict[str, Any],
        keep_alive: str,
    ) -> tuple[list[OcrPageResult], float]:
        """One /api/chat per page; page n+1 renders in a worker thread while Ollama reads page n."""
        with_anchor = needs_anchor(job.prompt)
        leading = system_messages(system_prompt)
        results: list[OcrPageResult] = []
        render_seconds = 0.0
        pending: asyncio.Task[tuple[PageImage, float]] | None = first_page
        try:
            for index, number in enumerate(pages):
                assert pending is not None
                page, seconds = await pending
                render_seconds += seconds
                pending = None
                if index + 1 < len(pages):
                    pending = self._render_task(document, pages[index + 1], with_anchor)
                call_started = time.perf_counter()
                reply = await self.ollama.chat(
                    job.profile.model,
                    [*leading, user_message(job.prompt, page.image_b64, page.anchor_text)],
                    options=options,
                    keep_alive=keep_alive,
                )
                results.append(self._page_result(number, reply, time.perf_counter() - call_started))
        finally:
            if pending is not None:
                # Let the prefetch finish (one page) before the document is closed under it.
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await pending
        return results, render_seconds

    @staticmethod
    def _render_task(
        document: Document, number: int, with_anchor: bool
    ) -> asyncio.Task[tuple[PageImage, float]]:
        return asyncio.create_task(
            asyncio.to_thread(_timed_render, document, number, with_anchor),
            name=f"render-page-{number}",
        )

    def _page_result(self, number: int, reply: ChatReply, seconds: float) -> OcrPageResult:
        complete = reply.complete
        self.metrics.ocr_pages.labels("true" if complete else "false").inc()
        return OcrPageResult(
            page=number,
            text=reply.text,
            complete=complete,
            done_reason=reply.done_reason,
            duration_ms=_ms(seconds),
            prompt_eval_count=reply.prompt_eval_count,
            eval_count=reply.eval_count,
        )
