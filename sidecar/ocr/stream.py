"""The NDJSON form of `POST /ocr` (docs/api.md "Streaming").

With `Accept: application/x-ndjson` the reply is one JSON object per line: `{"event": "page", …}`
for each page as it is done, in page order, then `{"event": "done", …the summary…}`; an error
after the first line ends the stream with `{"event": "error", …problem fields…}`. The 200 starts
only with the first page, so every error before it keeps its own problem+json status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from sidecar.error_codes import CODES
from sidecar.errors import TYPE_BASE, ApiError
from sidecar.ocr.run import ClientGone, OcrRun
from sidecar.schemas import OcrJobSummary

NDJSON = "application/x-ndjson"
logger = logging.getLogger("sidecar.ocr")


def wants_ndjson(accept: str | None) -> bool:
    """Whether an Accept header asks for the NDJSON stream (and does not refuse it with q=0)."""
    for item in (accept or "").split(","):
        media_type, *params = (part.strip() for part in item.split(";"))
        if media_type.lower() != NDJSON:
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q" and _is_zero(value):
                return False
        return True
    return False


def _is_zero(value: str) -> bool:
    try:
        return float(value) == 0
    except ValueError:
        return False


def _line(event: str, model: BaseModel | dict[str, Any]) -> bytes:
    fields = model.model_dump(mode="json") if isinstance(model, BaseModel) else model
    return json.dumps({"event": event, **fields}, ensure_ascii=False).encode() + b"\n"


def error_fields(
    code: str, detail: str, request_id: str, status: int | None = None
) -> dict[str, Any]:
    status = status if status is not None else CODES[code][0]
    return {
        "type": TYPE_BASE + code,
        "title": CODES[code][1],
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    }


async def ndjson_lines(run: OcrRun, first: BaseModel, request_id: str) -> AsyncIterator[bytes]:
    """The stream's lines from the first event on; stops the job if the stream is abandoned."""
    try:
        event = first
        while not isinstance(event, OcrJobSummary):
            yield _line("page", event)
            try:
                event = await run.next_event()
            except ClientGone:
                return
            except ApiError as exc:
                yield _line("error", error_fields(exc.code, exc.detail, request_id, exc.status))
                return
            except Exception:
                logger.exception("ocr stream failed", extra={"request_id": request_id})
                detail = "The sidecar hit an unexpected error; quote the request_id."
                yield _line("error", error_fields("internal_error", detail, request_id))
                return
        yield _line("done", event)
    finally:
        await run.close()
