"""What the OCR job sees of the GPU before each page: VRAM, `/api/ps`, and the OCR model's size.

`GpuWatch.view(model)` builds the `GpuView` that `JobResidency.next_step` decides on. The OCR
model's footprint, when it is not loaded, is the `size` it last had in `/api/ps` (that includes
its KV cache), else its `/api/tags` size plus `KV_HEADROOM_MIB`; unknown (None) when
neither is at hand, which the policy counts as not fitting beside a loaded LLM. `/api/tags` is
read at most every `TAGS_TTL_S` (models are pulled rarely), and again at once for a model it did
not list.

`priority_loaded()` answers, from the last `/api/ps` seen (by a job or by /health), whether a
priority LLM is loaded: the retrieval placement reads it without a call of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from sidecar.job_residency import GpuView
from sidecar.loaded_models import MIB, LoadedModel, model_key
from sidecar.ollama import OllamaClient, OllamaError
from sidecar.residency_policy import is_priority_model
from sidecar.vram_monitor import VramMonitor

logger = logging.getLogger("sidecar.ocr")
# KV cache and compute buffers of a 3-4B vision model at num_ctx 16384 (Ollama's server/sched.go:
# f16 KV = 2 × layers × KV heads × head dim × ctx × 2 bytes ≈ 0.6 GiB, plus the graph).
KV_HEADROOM_MIB = 1024
TAGS_TTL_S = 300.0
# An /api/ps answer older than this says nothing about what is loaded now.
PS_FRESH_S = 30.0


class GpuWatch:
    def __init__(
        self,
        ollama: OllamaClient,
        vram: VramMonitor,
        priority_patterns: Sequence[str],
    ) -> None:
        self.ollama = ollama
        self.vram = vram
        self.priority_patterns = list(priority_patterns)
        self._seen_mib: dict[str, int] = {}  # model key → size when last in /api/ps
        self._ocr_models: set[str] = set()  # keys of the models OCR jobs run (never "the LLM")
        self._tags: dict[str, int] = {}  # model key → /api/tags size (bytes)
        self._tags_at: float | None = None
        self._ps: list[LoadedModel] | None = None
        self._ps_at = 0.0
        self._last_footprint_mib: int | None = None  # as the last job's view saw it

    async def view(self, model: str) -> GpuView:
        """VRAM now, `/api/ps` now, and `model`'s footprint should it have to load."""
        self._ocr_models.add(model_key(model))
        vram = self.vram.snapshot()
        loaded = await self.ollama.loaded_models()
        self.saw_loaded(loaded)
        self._last_footprint_mib = await self._footprint_mib(model)
        return GpuView(vram=vram, loaded=loaded, ocr_size_mib=self._last_footprint_mib)

    def ocr_footprint_mib(self) -> int | None:
        """The OCR model's footprint as the last job's view saw it (None before any job): the
        retrieval placement keeps room for it beside an LLM that is not loaded."""
        return self._last_footprint_mib

    def saw_loaded(self, loaded: Sequence[LoadedModel]) -> None:
        """Remember an /api/ps answer (sizes, and what is loaded for `priority_loaded`)."""
        self._ps = list(loaded)
        self._ps_at = time.monotonic()
        for entry in loaded:
            if entry.size > 0:  # all of it, so a partial offload does not look smaller
                self._seen_mib[model_key(entry.name)] = entry.size_mib

    def priority_loaded(self) -> bool | None:
        """Whether the last /api/ps listed a priority model; None when none came in 30 s."""
        if self._ps is None or time.monotonic() - self._ps_at > PS_FRESH_S:
            return None
        return any(
            is_priority_model(m.name, self.priority_patterns)
            and model_key(m.name) not in self._ocr_models
            for m in self._ps
        )

    async def _footprint_mib(self, model: str) -> int | None:
        key = model_key(model)
        if key in self._seen_mib:
            return self._seen_mib[key]
        size = await self._tags_size(key)
        return None if size is None else size // MIB + KV_HEADROOM_MIB

    async def _tags_size(self, key: str) -> int | None:
        stale = self._tags_at is None or time.monotonic() - self._tags_at > TAGS_TTL_S
        if stale or key not in self._tags:
            try:
                self._tags = await self.ollama.installed_sizes()
                self._tags_at = time.monotonic()
            except OllamaError as exc:  # unknown size: the policy treats it as not fitting
                logger.warning("ollama /api/tags failed", extra={"code": exc.code})
        return self._tags.get(key)
