"""What the routes reach: one `AppContext` per app, stored on `app.state.ctx`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import httpx
from fastapi import Depends, Request

from sidecar.config import Settings
from sidecar.observability import Metrics
from sidecar.vram_monitor import VramMonitor

if TYPE_CHECKING:
    from sidecar.ocr.pipeline import OcrPipeline
    from sidecar.retrieval.service import RetrievalService
    from sidecar.auth import KeyStore


@dataclass
class AppContext:
    settings: Settings
    metrics: Metrics
    vram: VramMonitor
    keys: KeyStore
    http: httpx.AsyncClient | None = None
    ocr: OcrPipeline | None = None
    retrieval: RetrievalService | None = None


async def get_context(request: Request) -> AppContext:
    # async on purpose: FastAPI runs a plain-function dependency in its thread pool, one thread
    # hop per request for an attribute lookup.
    return request.app.state.ctx  # type: ignore[no-any-return]


# Route parameter type: `ctx: Ctx` gives the app's context.
Ctx = Annotated[AppContext, Depends(get_context)]
