"""POST /embed and POST /rerank: parse, call the retrieval service, add the device headers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Response

from sidecar.context import Ctx
from sidecar.schemas import EmbedRequest, EmbedResponse, RerankRequest, RerankResponse

if TYPE_CHECKING:  # the service module pulls in numpy; this one stays light for a fast start
    from sidecar.retrieval.service import Reply

router = APIRouter()

DEVICE_HEADER = "X-Compute-Device"
DEVICE_REASON_HEADER = "X-Compute-Device-Reason"


def header_text(text: str) -> str:
    """HTTP header values are latin-1: spell `≥` as `>=` and drop anything else outside ASCII."""
    return text.replace("≥", ">=").encode("ascii", "replace").decode("ascii")


def json_reply(reply: Reply) -> Response:
    """The body as the batch worker thread serialised it (nothing is serialised on the event
    loop, nor walked a second time by response_model), plus the device headers."""
    headers = {DEVICE_HEADER: reply.device}
    if reply.device == "cpu" and reply.reason:
        headers[DEVICE_REASON_HEADER] = header_text(reply.reason)
    return Response(reply.body, media_type="application/json", headers=headers)


@router.post("/embed", response_model=EmbedResponse)
async def embed(body: EmbedRequest, ctx: Ctx) -> Response:
    return json_reply(await ctx.retrieval.embed(body))


@router.post("/rerank", response_model=RerankResponse, response_model_exclude_none=True)
async def rerank(body: RerankRequest, ctx: Ctx) -> Response:
    # `text` appears only when asked for (return_text), so None fields are left out.
    return json_reply(await ctx.retrieval.rerank(body))
