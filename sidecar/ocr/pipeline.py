"""OCR pipeline: INTERFACE SKELETON owned by the OCR work (issue 4); replace wholesale.

The app (sidecar/app.py) constructs `OcrPipeline(settings, http, vram, metrics)` inside the
lifespan and calls only the methods below.
"""

from __future__ import annotations

from typing import Any

import httpx

from sidecar.config import Settings
from sidecar.observability import Metrics
from sidecar.vram_monitor import VramMonitor


class OcrPipeline:
    def __init__(self, settings: Settings, http: httpx.AsyncClient, vram: VramMonitor,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.http = http
        self.vram = vram
        self.metrics = metrics

    async def health(self) -> dict[str, Any]:
        """`ollama` section of /health: reachable, version, loaded models (from /api/ps)."""
        return {"reachable": False, "version": None, "loaded_models": []}

    async def ready_problems(self) -> list[str]:
        """Reasons /ready must answer 503 (e.g. 'ollama unreachable'); empty when ready."""
        return ["ocr pipeline not built yet"]

    def queue_stats(self) -> dict[str, int]:
        return {"active": 0, "waiting": 0, "max_concurrent": self.settings.max_concurrent_ocr,
                "queue_size": self.settings.queue_size}

    async def close(self) -> None:
        return None
