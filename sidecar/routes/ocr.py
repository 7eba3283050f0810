"""`POST /ocr`: read the request, run the job, answer as JSON or as an NDJSON stream."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from sidecar.context import Ctx
from sidecar.errors import request_id_of
from sidecar.ocr.intake import read_ocr_request
from sidecar.ocr.run import ClientGone
from sidecar.ocr.stream import NDJSON, ndjson_lines, wants_ndjson
from sidecar.schemas import OcrResponse

router = APIRouter()
# nginx's "client closed request": what the access log and metrics show for an abandoned job.
CLIENT_CLOSED_REQUEST = 499


@router.post("/ocr", response_model=OcrResponse)  # the NDJSON form: sidecar.openapi
async def ocr(request: Request, ctx: Ctx) -> Response:
    ctx.ocr.check_capacity()  # a full queue refuses before the upload is read
    job, data = await read_ocr_request(request, ctx.settings)
    request_id = request_id_of(request)
    if not wants_ndjson(request.headers.get("accept")):
        try:
            reply = await ctx.ocr.process_ocr(
                job, data, request_id=request_id, receive=request.receive
            )
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return Response(reply.model_dump_json(), media_type="application/json")
    run = ctx.ocr.start(job, data, request_id=request_id, receive=request.receive)
    try:
        first = await run.next_event()  # an error before the first page keeps its status
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except BaseException:
        await run.close()
        raise
    return StreamingResponse(ndjson_lines(run, first, request_id), media_type=NDJSON)
