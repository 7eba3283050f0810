"""`create_app(settings, **injected)`: the FastAPI app and its lifespan.

The lifespan owns every long-lived resource: one shared `httpx.AsyncClient` (closed at shutdown),
the OCR pipeline and the retrieval service. Tests and benchmarks inject any of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from sidecar.auth import AuthMiddleware, KeyStore
from sidecar.config import Settings, ensure_upload_base
from sidecar.context import AppContext
from sidecar.errors import install_error_handlers
from sidecar.limits import BodyLimitMiddleware, body_limit_for
from sidecar.observability import Metrics, RequestContextMiddleware
from sidecar.ocr.pipeline import OcrPipeline
from sidecar.openapi import install_openapi
from sidecar.retrieval.service import RetrievalService
from sidecar.routes import health, ocr, retrieval
from sidecar.vram_monitor import monitor_from_source

INJECTABLE = frozenset({"metrics", "vram_monitor", "key_store", "http_client", "ocr", "retrieval"})


def build_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one client for Ollama: connect and read timeouts apart, pool sized for admission."""
    timeout = httpx.Timeout(settings.ollama_timeout_s, connect=settings.ollama_connect_timeout_s)
    pool = settings.max_concurrent_ocr + 4  # OCR slots plus health/ps probes
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    return httpx.AsyncClient(base_url=settings.ollama_url, timeout=timeout, limits=limits)


def create_app(settings: Settings, **injected: Any) -> FastAPI:
    unknown = set(injected) - INJECTABLE
    if unknown:
        raise TypeError(f"create_app got unknown injections: {sorted(unknown)}")
    ensure_upload_base(settings)
    metrics: Metrics = injected.get("metrics") or Metrics()
    ctx = AppContext(
        settings=settings,
        metrics=metrics,
        vram=injected.get("vram_monitor") or monitor_from_source(settings.vram_source),
        keys=injected.get("key_store") or KeyStore.from_settings(settings, metrics),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            http = injected.get("http_client")
            if http is None:
                http = build_http_client(settings)
                stack.push_async_callback(http.aclose)
            ctx.http = http
            ctx.ocr = injected.get("ocr") or OcrPipeline(settings, http, ctx.vram, metrics)
            stack.push_async_callback(ctx.ocr.close)
            ctx.retrieval = injected.get("retrieval") or RetrievalService(
                settings, ctx.vram, metrics
            )
            await ctx.retrieval.start()  # returns at once; models load in a worker thread
            stack.push_async_callback(ctx.retrieval.close)
            yield

    app = FastAPI(
        title="OCR sidecar",
        version=health.VERSION,
        lifespan=lifespan,
        # FastAPI's own schema routes stay off: sidecar.openapi serves the full one (DOCS).
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    # The last added runs first: request context (id, metrics, log), then auth, then the body
    # ceiling, so an unauthenticated request is answered before a byte of its body is read.
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit_for(settings.max_file_bytes))
    app.add_middleware(AuthMiddleware, settings=settings, keys=ctx.keys, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.include_router(health.public_router)  # auth.PUBLIC_PATHS: /live, /ready
    app.include_router(health.protected_router)
    app.include_router(ocr.router)
    app.include_router(retrieval.router)
    if settings.docs:
        install_openapi(app)  # /openapi.json and /docs, behind auth like every route but two
    return app
