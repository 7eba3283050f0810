"""`create_app(settings, **injected)`: the FastAPI app and its lifespan.

`create_app` builds every long-lived service (the shared `httpx.AsyncClient` for Ollama, the OCR
pipeline, the retrieval service, the VRAM sampler) so the context routes see is complete from the
start; the lifespan only starts them and stops them in reverse order. Tests and benchmarks inject
any of them. Nothing here imports torch: the retrieval models and their libraries load in a worker
thread once the server is up, so /live answers within a second of the process starting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import FastAPI

from sidecar.auth import AuthMiddleware, KeyStore
from sidecar.config import Settings, ensure_upload_base
from sidecar.context import AppContext
from sidecar.errors import install_error_handlers
from sidecar.lifecycle import Drain, DrainMiddleware, in_daemon_thread
from sidecar.limits import BodyLimitMiddleware, body_limit_for
from sidecar.observability import Metrics, RequestContextMiddleware, route_library_loggers
from sidecar.ocr.pipeline import OcrPipeline
from sidecar.openapi import install_openapi
from sidecar.routes import health, ocr, retrieval
from sidecar.scrape import RuntimeCollector
from sidecar.vram_monitor import VramMonitor, monitor_from_source
from sidecar.vram_sampler import SampledVram

if TYPE_CHECKING:
    from sidecar.retrieval.service import RetrievalService

INJECTABLE = frozenset({"metrics", "vram_monitor", "key_store", "http_client", "ocr", "retrieval"})


def build_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one client for Ollama: connect and read timeouts apart, pool sized for admission."""
    timeout = httpx.Timeout(settings.ollama_timeout_s, connect=settings.ollama_connect_timeout_s)
    pool = settings.max_concurrent_ocr + 4  # OCR slots plus health/ps probes
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    return httpx.AsyncClient(base_url=settings.ollama_url, timeout=timeout, limits=limits)


def build_retrieval(
    settings: Settings, vram: VramMonitor, metrics: Metrics, pipeline: OcrPipeline
) -> RetrievalService:
    # Imported here, not at the top: the service module brings numpy, and tests that inject
    # their own retrieval never pay for it.
    from sidecar.retrieval.service import RetrievalService

    # The OCR pipeline's view of Ollama (LLM loaded? OCR footprint?) sets the placement reserve.
    return RetrievalService(settings, vram, metrics, ollama_view=pipeline)


async def stop_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings, **injected: Any) -> FastAPI:
    unknown = set(injected) - INJECTABLE
    if unknown:
        raise TypeError(f"create_app got unknown injections: {sorted(unknown)}")
    ensure_upload_base(settings)
    metrics: Metrics = injected.get("metrics") or Metrics()
    # An injected monitor is read as it is (tests change it and expect to see the change at
    # once); the configured one is sampled in the background so nobody reads the GPU on the loop.
    sampler = None
    vram: VramMonitor | None = injected.get("vram_monitor")
    if vram is None:
        vram = sampler = SampledVram(monitor_from_source(settings.vram_source))
    owned_http = injected.get("http_client") is None
    owned_retrieval = injected.get("retrieval") is None
    http: httpx.AsyncClient = injected.get("http_client") or build_http_client(settings)
    pipeline: OcrPipeline = injected.get("ocr") or OcrPipeline(settings, http, vram, metrics)
    ctx = AppContext(
        settings=settings,
        metrics=metrics,
        vram=vram,
        keys=injected.get("key_store") or KeyStore.from_settings(settings, metrics),
        ocr=pipeline,
        retrieval=injected.get("retrieval") or build_retrieval(settings, vram, metrics, pipeline),
        drain=Drain(),
    )
    metrics.registry.register(RuntimeCollector(ctx))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if owned_http:
                stack.push_async_callback(http.aclose)
            if sampler is not None:
                sampler.start()  # returns at once: even the first read is the thread's
                stack.push_async_callback(asyncio.to_thread, sampler.stop)
            stack.push_async_callback(ctx.retrieval.close)
            starting = asyncio.create_task(start_retrieval(), name="start-retrieval")
            stack.push_async_callback(stop_task, starting)
            yield

    async def start_retrieval() -> None:
        if owned_retrieval:
            # Before the first model load, so no library line escapes the JSON handler; in a
            # thread, because importing transformers' logging alone takes seconds.
            await in_daemon_thread(route_library_loggers, name="route-loggers")
        await ctx.retrieval.start()  # returns at once; models load in worker threads

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
    # The last added runs first: request context (id, metrics, log), then auth, then the drain
    # (no new jobs while shutting down), then the body ceiling, so an unauthenticated request is
    # answered before a byte of its body is read.
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit_for(settings.max_file_bytes))
    app.add_middleware(DrainMiddleware, drain=ctx.drain)
    app.add_middleware(AuthMiddleware, settings=settings, keys=ctx.keys, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.include_router(health.public_router)  # auth.PUBLIC_PATHS: /live, /ready
    app.include_router(health.protected_router)
    app.include_router(ocr.router)
    app.include_router(retrieval.router)
    if settings.docs:
        install_openapi(app)  # /openapi.json and /docs, behind auth like every route but two
    return app
