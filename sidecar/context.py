"""What the routes reach: one `AppContext` per app, stored on `app.state.ctx`.

`create_app` builds every service before the app exists and the lifespan only starts and stops
them, so no field is ever missing: routes use them without `None` checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from sidecar.config import Settings
from sidecar.lifecycle import Drain
from sidecar.observability import Metrics
from sidecar.vram_monitor import VramMonitor

if TYPE_CHECKING:
    from sidecar.auth import KeyStore
    from sidecar.ocr.pipeline import OcrPipeline
    from sidecar.retrieval.service import RetrievalService


@dataclass
class RuntimeStatus:
    """What the last probes saw (None until the first probe)."""

    ollama_up: bool | None = None


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    metrics: Metrics
    vram: VramMonitor
    keys: KeyStore
    ocr: OcrPipeline
    retrieval: RetrievalService
    drain: Drain
    status: RuntimeStatus = field(default_factory=RuntimeStatus)


async def get_context(request: Request) -> AppContext:
    # async on purpose: FastAPI runs a plain-function dependency in its thread pool, one thread
    # hop per request for an attribute lookup.
    return request.app.state.ctx  # type: ignore[no-any-return]


# Route parameter type: `ctx: Ctx` gives the app's context.
Ctx = Annotated[AppContext, Depends(get_context)]
