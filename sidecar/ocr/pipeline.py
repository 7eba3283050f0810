"""The OCR capability of the sidecar: Ollama's health, admission, and jobs (docs/api.md).

The parts live in their own modules: page selection and rendering (`pages`), the GPU view before
each page (`gpu_watch`), retries (`retry`), the page loop with residency, partial results and the
deadline (`job`), the job task watched for a disconnect (`run`) and the NDJSON form (`stream`).
"""

from __future__ import annotations

from typing import Any

import httpx
from starlette.types import Receive

from sidecar.config import Settings
from sidecar.observability import Metrics
from sidecar.ocr.admission import AdmissionControl
from sidecar.ocr.gpu_watch import GpuWatch
from sidecar.ocr.job import Emit, OcrJobRunner
from sidecar.ocr.run import OcrRun
from sidecar.ollama import OllamaBadResponse, OllamaClient, OllamaError
from sidecar.schemas import OcrJob, OcrJobSummary, OcrPageResult, OcrResponse
from sidecar.vram_monitor import VramMonitor


class OcrPipeline:
    def __init__(
        self, settings: Settings, http: httpx.AsyncClient, vram: VramMonitor, metrics: Metrics
    ) -> None:
        self.settings = settings
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
        self.gpu = GpuWatch(self.ollama, vram, settings.priority_models)
        self.jobs = OcrJobRunner(settings, self.ollama, self.gpu, self.admission, metrics)

    # --- health --------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """`ollama` section of /health: reachable, version, loaded models (from /api/ps)."""
        try:
            version = await self.ollama.version()
            loaded = await self.ollama.loaded_models(probe=True)
        except OllamaError as exc:
            return {"reachable": False, "version": None, "loaded_models": [], "error": exc.code}
        self.gpu.saw_loaded(loaded)
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
            return [
                f"ollama at {self.settings.ollama_url} answers /api/version unexpectedly; "
                "check that OCR_SIDECAR_OLLAMA_URL points at Ollama"
            ]
        except OllamaError:
            return [
                f"ollama unreachable at {self.settings.ollama_url}; start Ollama there "
                "or set OCR_SIDECAR_OLLAMA_URL"
            ]
        return []

    def queue_stats(self) -> dict[str, int]:
        return self.admission.stats()

    def priority_loaded(self) -> bool | None:
        """Whether the priority LLM was loaded at the last /api/ps (None: none in 30 s)."""
        return self.gpu.priority_loaded()

    def ocr_footprint_mib(self) -> int | None:
        """The OCR model's footprint as the last job saw it (None before any job)."""
        return self.gpu.ocr_footprint_mib()

    # --- admission -----------------------------------------------------------------------------

    def vram_critical(self) -> bool:
        snapshot = self.vram.snapshot()
        return snapshot is not None and snapshot.used_pct >= self.settings.vram_critical_pct

    def check_capacity(self) -> None:
        """Refuse (429) before an upload is read when the queue is already full."""
        self.admission.refuse_if_overloaded()

    # --- jobs ----------------------------------------------------------------------------------

    def start(self, job: OcrJob, data: bytes, *, request_id: str, receive: Receive) -> OcrRun:
        """Run the job in its own task, stopped when `receive` reports the caller gone."""

        async def work(emit: Emit) -> OcrJobSummary:
            return await self.jobs.run(job, data, request_id=request_id, emit=emit)

        return OcrRun(work, receive, self.metrics)

    async def process_ocr(
        self, job: OcrJob, data: bytes, *, request_id: str, receive: Receive
    ) -> OcrResponse:
        """The whole job as one answer; raises the job's ApiError, or `ClientGone`."""
        run = self.start(job, data, request_id=request_id, receive=receive)
        pages: list[OcrPageResult] = []
        try:
            while not isinstance(event := await run.next_event(), OcrJobSummary):
                pages.append(event)
        finally:
            await run.close()
        return OcrResponse(**event.model_dump(), pages=pages)
