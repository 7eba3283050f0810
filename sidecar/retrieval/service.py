"""Retrieval service: INTERFACE SKELETON owned by the retrieval work (issue 5); replace wholesale.

The app (sidecar/app.py) constructs `RetrievalService(settings, vram, metrics)` inside the
lifespan, awaits `start()` (which must return at once; models load in the background via
asyncio.to_thread) and `close()` at shutdown.
"""

from __future__ import annotations

from typing import Any

from sidecar.config import Settings
from sidecar.observability import Metrics
from sidecar.vram_monitor import VramMonitor


class RetrievalService:
    def __init__(self, settings: Settings, vram: VramMonitor, metrics: Metrics) -> None:
        self.settings = settings
        self.vram = vram
        self.metrics = metrics

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def health(self) -> dict[str, Any]:
        """`models` section of /health: per model name, device, loaded, error."""
        return {}

    def ready_problems(self) -> list[str]:
        return ["retrieval models not built yet"]

    def queue_stats(self) -> dict[str, int]:
        return {}
