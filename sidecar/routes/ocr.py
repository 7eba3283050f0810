"""`POST /ocr`: read the request, hand it to the pipeline, return its answer."""

from __future__ import annotations

from fastapi import APIRouter, Request

from sidecar.context import Ctx
from sidecar.errors import ApiError, request_id_of
from sidecar.ocr.intake import read_ocr_request
from sidecar.schemas import OcrResponse

router = APIRouter()


@router.post("/ocr", response_model=OcrResponse)
async def ocr(request: Request, ctx: Ctx) -> OcrResponse:
    if ctx.ocr is None:
        raise ApiError("not_ready", "The OCR pipeline is starting.")
    ctx.ocr.check_capacity()  # a full queue refuses before the upload is read
    job, data = await read_ocr_request(request, ctx.settings)
    return await ctx.ocr.process_ocr(job, data, request_id=request_id_of(request))
