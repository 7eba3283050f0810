"""One OCR job, page by page (docs/api.md "POST /ocr", docs/gpu-stewardship.md).

1. options and system message are built and checked (422 before anything is opened);
2. the document is opened in a worker thread (415/422) and the pages chosen (413/422); page 1
   starts rendering while the job waits for an admission slot (429 when the queue is full);
3. before every page `JobResidency.next_step` decides on a fresh `GpuView`: wait for the LLM
   (bounded by `OCR_YIELD_MAX_S`), or run with a keep_alive (the in-job hold, the after-job value
   on the last page); when /api/ps does not list the model, the page's own call loads it: a
   separate load call would leave a gap between its answer and the page call, in which a request
   for another model could evict the model just loaded and be evicted in turn;
4. a page's Ollama call runs under the model's page gate, one page at a time per model across
   all jobs (FIFO): Ollama's Qwen3-VL runner has one slot anyway, and without the gate two jobs
   keep it busy without a break, so an LLM that waits for it as an eviction victim would wait
   for both whole jobs. The gate is taken after the page's decision and let go before the next
   page is rendered or decided;
5. each page's call is retried on "busy"/unreachable inside the page budget; a page that still
   fails after an earlier page succeeded becomes an error entry and the job goes on;
6. the whole job, queue wait included, ends at `OCR_JOB_TIMEOUT_S`: the pages left get
   `job_timeout` entries, or the request fails with 504 `job_timeout` when no page was done.

Each page result is handed to `emit` as soon as it exists; the summary is returned at the end.
Cancelling the task that runs `run` stops everything at once: the Ollama call in flight is closed,
no further page is rendered or sent, and the page gate and admission slot are released on the
way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sidecar.config import Settings
from sidecar.errors import ApiError
from sidecar.job_residency import GpuView, JobResidency, PageStep
from sidecar.loaded_models import model_key
from sidecar.observability import Metrics
from sidecar.ocr.admission import AdmissionControl
from sidecar.ocr.documents import open_document
from sidecar.ocr.gpu_watch import GpuWatch
from sidecar.ocr.messages import (
    build_options,
    build_system_prompt,
    needs_anchor,
    system_messages,
    user_message,
)
from sidecar.ocr.pages import PagePrefetch, check_page_limit, select_pages
from sidecar.ocr.retry import call_with_retries
from sidecar.ollama import ChatReply, OllamaClient, OllamaError
from sidecar.schemas import (
    OcrJob,
    OcrJobSummary,
    OcrPageResult,
    OcrTimings,
    PageError,
    PromptRef,
    ResidencyInfo,
    VramFigures,
)

logger = logging.getLogger("sidecar.ocr")
T = TypeVar("T")
Emit = Callable[[OcrPageResult], Awaitable[None]]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def failed_page(number: int, error: ApiError) -> OcrPageResult:
    return OcrPageResult(
        page=number,
        text=None,
        complete=False,
        duration_ms=0,
        error=PageError(code=error.code, detail=error.detail),
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every Ollama call of the job carries."""

    job: OcrJob
    options: dict[str, Any]
    system_prompt: str
    request_id: str

    @property
    def model(self) -> str:
        return self.job.profile.model


class OcrJobRunner:
    def __init__(
        self,
        settings: Settings,
        ollama: OllamaClient,
        gpu: GpuWatch,
        admission: AdmissionControl,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.ollama = ollama
        self.gpu = gpu
        self.admission = admission
        self.metrics = metrics
        self._running: Counter[str] = Counter()  # model key → jobs holding a slot
        self._page_gates: dict[str, asyncio.Lock] = {}  # model key → one page at Ollama

    def other_jobs(self, model: str) -> int:
        """Jobs of `model` running beside the asking one: while any does, a last page holds."""
        return max(self._running[model_key(model)] - 1, 0)

    def page_gate(self, model: str) -> asyncio.Lock:
        """The lock a page of `model` holds around its Ollama calls (FIFO among the waiters).
        A job waiting for it holds its admission slot, so `other_jobs` counts it."""
        return self._page_gates.setdefault(model_key(model), asyncio.Lock())

    async def run(self, job: OcrJob, data: bytes, *, request_id: str, emit: Emit) -> OcrJobSummary:
        """OCR `data` as `job` says, handing each page to `emit`; raises ApiError (documented
        codes) when the job fails before any page is done."""
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.settings.ocr_job_timeout_s
        plan = _Plan(job, build_options(job), build_system_prompt(job.prompt), request_id)
        check_page_limit(job.pages, self.settings.max_pages)  # before the document is opened
        document = await asyncio.to_thread(open_document, data)
        open_seconds = time.perf_counter() - started
        try:
            numbers = select_pages(job.pages, document.page_count, self.settings.max_pages)
            prefetch = PagePrefetch(document, numbers, with_anchor=needs_anchor(job.prompt))
            try:
                async with contextlib.AsyncExitStack() as stack:
                    queue_seconds = await self._admit(stack, deadline)
                    key = model_key(plan.model)
                    self._running[key] += 1
                    stack.callback(self._running.subtract, [key])
                    pages = _PageLoop(self, plan, prefetch, deadline, emit)
                    await pages.run(numbers)
            finally:
                await prefetch.close()
        finally:
            await asyncio.to_thread(document.close)
        render_seconds = open_seconds + prefetch.render_seconds
        self.metrics.ocr_render_seconds.observe(render_seconds)
        return pages.summary(
            OcrTimings(
                queue_ms=_ms(queue_seconds),
                render_ms=_ms(render_seconds),
                total_ms=_ms(time.perf_counter() - started),
            )
        )

    async def _admit(self, stack: contextlib.AsyncExitStack, deadline: float) -> float:
        """Take an admission slot (held until `stack` closes); the queue wait counts against
        the job deadline."""
        try:
            async with asyncio.timeout_at(deadline):
                admission = await stack.enter_async_context(self.admission.slot())
        except TimeoutError:
            raise self.deadline_error() from None
        return admission.queue_seconds

    def deadline_error(self) -> ApiError:
        self.metrics.ocr_cancelled.labels("deadline").inc()
        return ApiError(
            "job_timeout",
            f"The job ran past OCR_SIDECAR_OCR_JOB_TIMEOUT_S "
            f"({self.settings.ocr_job_timeout_s:g} s) before its first page was done.",
        )


class _PageLoop:
    """The pages of one admitted job, in order."""

    def __init__(
        self,
        runner: OcrJobRunner,
        plan: _Plan,
        prefetch: PagePrefetch,
        deadline: float,
        emit: Emit,
    ) -> None:
        self.runner = runner
        self.settings = runner.settings
        self.metrics = runner.metrics
        self.plan = plan
        self.prefetch = prefetch
        self.deadline = deadline
        self.emit = emit
        self.leading = system_messages(plan.system_prompt)
        self.done_any = False
        self.complete = True
        self.last_step: PageStep | None = None
        self.last_view: GpuView | None = None
        self.residency: JobResidency | None = None

    async def run(self, numbers: Sequence[int]) -> None:
        residency = JobResidency(self.plan.job.profile, self.settings, pages=len(numbers))
        self.residency = residency
        try:
            for index, number in enumerate(numbers):
                timeout = asyncio.timeout_at(self.deadline)
                try:
                    async with timeout:
                        result = await self._page(number, residency)
                except TimeoutError:
                    if not timeout.expired():
                        raise
                    await self._stop_at_deadline(numbers[index:])
                    return
                except ApiError as exc:
                    if not self.done_any:
                        raise
                    result = failed_page(number, exc)
                    logger.warning(
                        "ocr page failed; the job goes on",
                        extra={"request_id": self.plan.request_id, "page": number,
                               "code": exc.code},
                    )  # fmt: skip
                await self._hand_over(result)
        finally:
            self.metrics.ocr_job_loads.observe(residency.loads)

    async def _stop_at_deadline(self, left: Sequence[int]) -> None:
        if not self.done_any:
            raise self.runner.deadline_error()
        self.metrics.ocr_cancelled.labels("deadline").inc()
        self.prefetch.skip()
        error = ApiError(
            "job_timeout",
            f"The job ran past OCR_SIDECAR_OCR_JOB_TIMEOUT_S "
            f"({self.settings.ocr_job_timeout_s:g} s) before this page.",
        )
        for number in left:
            await self._hand_over(failed_page(number, error))

    async def _hand_over(self, result: OcrPageResult) -> None:
        self.complete = self.complete and result.complete
        self.done_any = self.done_any or result.error is None
        self.metrics.ocr_pages.labels("true" if result.complete else "false").inc()
        await self.emit(result)

    async def _page(self, number: int, residency: JobResidency) -> OcrPageResult:
        page_started = time.monotonic()
        try:
            page = await self.prefetch.next_page()
            step = await self._run_step(residency, page_started)
            plan = self.plan
            messages = [*self.leading, user_message(plan.job.prompt, page.image_b64,
                                                    page.anchor_text)]  # fmt: skip
            del page  # the image lives on only in `messages`, until this page is sent
            async with self.runner.page_gate(plan.model):
                # The page's budget covers its own Ollama call, not the wait for another job's.
                gate_taken = time.monotonic()
                call_started = time.perf_counter()
                reply = await self._call(
                    lambda: self.runner.ollama.chat(
                        plan.model, messages, options=plan.options, keep_alive=step.keep_alive
                    ),
                    gate_taken,
                )
            return _page_result(number, reply, time.perf_counter() - call_started)
        finally:
            residency.page_done()

    async def _run_step(self, residency: JobResidency, page_started: float) -> PageStep:
        """Ask the policy until it says run; each wait is a yield to the priority LLM."""
        waited = 0.0
        while True:
            view = await self._call(lambda: self.runner.gpu.view(self.plan.model), page_started)
            view = replace(view, other_jobs=self.runner.other_jobs(self.plan.model))
            step = residency.next_step(view, waited_s=waited)
            if step.action == "run":
                break
            wait_started = time.monotonic()
            await asyncio.sleep(step.retry_in_s)  # the LLM's activity shows only in /api/ps
            waited += time.monotonic() - wait_started
        if waited > 0:
            self.metrics.ocr_yield_seconds.observe(waited)
        self.last_step, self.last_view = step, view
        self.metrics.ocr_keep_alive_seconds.observe(step.keep_alive_seconds)
        self.metrics.ocr_residency.labels(step.rule).inc()
        logger.info(
            "ocr residency step",
            extra={"request_id": self.plan.request_id, "model": self.plan.model,
                   "keep_alive_s": step.keep_alive_seconds, "load": step.loading,
                   "rule": step.rule, "reason": step.reason, "yield_s": round(waited, 3)},
        )  # fmt: skip
        return step

    async def _call(self, call: Callable[[], Awaitable[T]], budget_from: float) -> T:
        budget = budget_from + self.settings.ollama_timeout_s - time.monotonic()
        try:
            return await call_with_retries(
                call, budget_s=budget, on_retry=self.metrics.ollama_retries.inc
            )
        except OllamaError as exc:
            self.metrics.ollama_errors.labels(exc.code).inc()
            logger.warning(
                "ollama call failed", extra={"request_id": self.plan.request_id, "code": exc.code}
            )
            raise

    def summary(self, timings: OcrTimings) -> OcrJobSummary:
        step, view, residency = self.last_step, self.last_view, self.residency
        assert step is not None and view is not None and residency is not None  # a page ran
        vram = view.vram
        return OcrJobSummary(
            request_id=self.plan.request_id,
            model=self.plan.model,
            complete=self.complete,
            residency=ResidencyInfo(
                keep_alive=step.keep_alive,
                rule=step.rule,
                reason=step.reason,
                loads=residency.loads,
                yield_ms=_ms(residency.yield_s),
                vram=None
                if vram is None
                else VramFigures(used_mib=vram.used_mib, total_mib=vram.total_mib),
            ),
            params_sent=self.plan.options,
            prompt=PromptRef(id=self.plan.job.prompt.id, version=self.plan.job.prompt.version),
            timings=timings,
        )


def _page_result(number: int, reply: ChatReply, seconds: float) -> OcrPageResult:
    # The load time stays out of the page's duration.
    return OcrPageResult(
        page=number,
        text=reply.text,
        complete=reply.complete,
        done_reason=reply.done_reason,
        duration_ms=_ms(max(seconds - reply.load_seconds, 0.0)),
        prompt_eval_count=reply.prompt_eval_count,
        eval_count=reply.eval_count,
    )
