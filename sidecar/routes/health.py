"""/live, /ready (no auth: orchestrators probe them) and /health, /metrics (behind auth)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.context import AppContext, Ctx
from sidecar.errors import problem_response

try:
    VERSION = version("ocr-sidecar")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0.0.0"

public_router = APIRouter()
protected_router = APIRouter()


async def readiness_problems(ctx: AppContext) -> list[str]:
    problems: list[str] = []
    if ctx.ocr is None or ctx.retrieval is None:
        return ["starting up"]
    problems.extend(await ctx.ocr.ready_problems())
    problems.extend(ctx.retrieval.ready_problems())
    return problems


@public_router.get("/live")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@public_router.get("/ready")
async def ready(request: Request, ctx: Ctx) -> Response:
    problems = await readiness_problems(ctx)
    if problems:
        return problem_response(
            request,
            "not_ready",
            "; ".join(problems),
            extra={"reasons": problems},
            headers={"Retry-After": "5"},
        )
    return JSONResponse({"status": "ready"})


def gpu_section(ctx: AppContext) -> dict[str, Any]:
    snapshot = ctx.vram.snapshot()
    if snapshot is None:
        return {"available": False, "source": ctx.vram.source}
    ctx.metrics.vram_used_mib.set(snapshot.used_mib)
    ctx.metrics.vram_total_mib.set(snapshot.total_mib)
    return {
        "available": True,
        "name": snapshot.gpu_name,
        "total_mib": snapshot.total_mib,
        "used_mib": snapshot.used_mib,
        "free_mib": snapshot.free_mib,
        "used_pct": round(snapshot.used_pct, 1),
        "source": snapshot.source,
    }


@protected_router.get("/health")
async def health(ctx: Ctx) -> dict[str, Any]:
    problems = await readiness_problems(ctx)
    assert ctx.ocr is not None and ctx.retrieval is not None  # lifespan has run
    return {
        "status": "ok" if not problems else "degraded",
        "problems": problems,
        "version": VERSION,
        "auth_mode": ctx.settings.auth_mode,
        "gpu": gpu_section(ctx),
        "models": ctx.retrieval.health(),
        "ollama": await ctx.ocr.health(),
        "queues": {"ocr": ctx.ocr.queue_stats(), "retrieval": ctx.retrieval.queue_stats()},
    }


@protected_router.get("/metrics")
async def metrics(ctx: Ctx) -> Response:
    gpu_section(ctx)  # refresh the VRAM gauges at scrape time
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
