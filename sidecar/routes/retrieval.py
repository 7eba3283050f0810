"""POST /embed and POST /rerank: parse, call the retrieval service, add the device headers."""

from __future__ import annotations

from fastapi import APIRouter, Response

from sidecar.context import Ctx
from sidecar.errors import ApiError
from sidecar.retrieval.service import Reply, RetrievalService
from sidecar.schemas import EmbedRequest, EmbedResponse, RerankRequest, RerankResponse

router = APIRouter()

DEVICE_HEADER = "X-Compute-Device"
DEVICE_REASON_HEADER = "X-Compute-Device-Reason"


def header_text(text: str) -> str:
    """HTTP header values are latin-1: spell `≥` as `>=` and drop anything else outside ASCII."""
    return text.replace("≥", ">=").encode("ascii", "replace").decode("ascii")


def service_of(ctx: Ctx) -> RetrievalService:
    if ctx.retrieval is None:
        raise ApiError("not_ready", "the sidecar is starting up", headers={"Retry-After": "5"})
    return ctx.retrieval


def add_device_headers(response: Response, reply: Reply) -> None:
    response.headers[DEVICE_HEADER] = reply.device
    if reply.device == "cpu" and reply.reason:
        response.headers[DEVICE_REASON_HEADER] = header_text(reply.reason)


@router.post("/embed", response_model=EmbedResponse)
async def embed(body: EmbedRequest, ctx: Ctx, response: Response) -> EmbedResponse:
    reply = await service_of(ctx).embed(body)
    add_device_headers(response, reply)
    return reply.body  # type: ignore[return-value]


@router.post("/rerank", response_model=RerankResponse, response_model_exclude_none=True)
async def rerank(body: RerankRequest, ctx: Ctx, response: Response) -> RerankResponse:
    reply = await service_of(ctx).rerank(body)
    add_device_headers(response, reply)
    return reply.body  # type: ignore[return-value]
