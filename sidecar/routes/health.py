"""/live, /ready (no auth: orchestrators probe them) and /health, /metrics (behind auth).

These routes only show what `sidecar.readiness` and the services already know. /live and /ready
answer HEAD as well as GET: load balancers and `curl -I` probe with HEAD.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.context import AppContext, Ctx
from sidecar.errors import problem_response
from sidecar.readiness import readiness
from sidecar.version import VERSION

# What /ready tells a caller to wait before asking again, when the problem may clear by itself.
READY_RETRY_AFTER_S = "5"
PROBE_METHODS = ["GET", "HEAD"]

public_router = APIRouter()
protected_router = APIRouter()


@public_router.api_route("/live", methods=PROBE_METHODS)
async def live() -> dict[str, str]:
    return {"status": "alive"}


@public_router.api_route("/ready", methods=PROBE_METHODS)
async def ready(request: Request, ctx: Ctx) -> Response:
    state = await readiness(ctx)
    if state.ready:
        return JSONResponse({"status": "ready"})
    return problem_response(
        request,
        "not_ready",
        "; ".join(state.reasons),
        extra={"reasons": state.reasons},
        headers={"Retry-After": READY_RETRY_AFTER_S} if state.may_clear else None,
    )


def gpu_section(ctx: AppContext) -> dict[str, Any]:
    snapshot = ctx.vram.snapshot()
    if snapshot is None:
        return {"available": False, "source": ctx.vram.source}
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
    state = await readiness(ctx)
    return {
        "status": "ok" if state.ready else "degraded",
        "problems": state.reasons,
        "version": VERSION,
        "auth_mode": ctx.settings.auth_mode,
        "gpu": gpu_section(ctx),
        "models": ctx.retrieval.health(),
        "ollama": await ctx.ocr.health(),
        "queues": {"ocr": ctx.ocr.queue_stats(), "retrieval": ctx.retrieval.queue_stats()},
    }


@protected_router.get("/metrics")
async def metrics(ctx: Ctx) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
