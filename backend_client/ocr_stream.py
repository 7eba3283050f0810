"""Reading the sidecar's NDJSON answer to `POST /ocr` (docs/api.md "Streaming").

One JSON object per line: `{"event": "page", …}` for each page as it finishes, then
`{"event": "done", …the response without pages…}`, or `{"event": "error", …problem fields…}` when
the job failed after the first line. A stream that ends without `done` is a protocol error: the
pages read so far may be incomplete. A plain JSON answer (a sidecar that does not stream) gives
the same pages, all at once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import httpx
from pydantic import ValidationError

from backend_client.errors import SidecarError, SidecarProtocolError, sidecar_error
from sidecar.schemas import OcrJobSummary, OcrPageResult, OcrResponse

NDJSON_MEDIA_TYPE = "application/x-ndjson"

TransportErrorMapper = Callable[[httpx.TransportError, str], SidecarError]
Line = TypeVar("Line", OcrPageResult, OcrJobSummary)


def problem_error(
    problem: Mapping[str, Any], status: int | None, request_id: str
) -> SidecarError | None:
    """The typed error of a problem+json body (or an `error` event); None if it is not one."""
    code = problem.get("code")
    if not isinstance(code, str):
        return None
    return sidecar_error(
        code,
        str(problem.get("detail") or problem.get("title") or ""),
        status=status,
        request_id=str(problem.get("request_id") or request_id),
    )


class OcrStream:
    """The pages of one streamed job, in the order the sidecar sends them; iterate it once."""

    def __init__(
        self, response: httpx.Response, request_id: str, transport_error: TransportErrorMapper
    ) -> None:
        self._response = response
        self.request_id = request_id
        self._transport_error = transport_error
        self.pages: list[OcrPageResult] = []
        self.summary: OcrJobSummary | None = None
        """The `done` line, once it has been read."""

    def __aiter__(self) -> AsyncIterator[OcrPageResult]:
        return self._pages()

    async def _pages(self) -> AsyncIterator[OcrPageResult]:
        if NDJSON_MEDIA_TYPE not in self._response.headers.get("content-type", ""):
            # A sidecar that does not stream answers the whole job at once: same pages.
            for page in await self._whole_answer():
                yield page
            return
        try:
            async for line in self._response.aiter_lines():
                if not line.strip():
                    continue
                event = self._decode(line)
                kind = event.get("event")
                if kind == "page":
                    page = self._model(OcrPageResult, event)
                    self.pages.append(page)
                    yield page
                elif kind == "done":
                    self.summary = self._model(OcrJobSummary, event)
                    return
                elif kind == "error":
                    status = event.get("status")
                    error = problem_error(
                        event, status if isinstance(status, int) else None, self.request_id
                    )
                    raise error or self._protocol_error("an error line without a code")
                else:
                    raise self._protocol_error(f"a line with unknown event {kind!r}")
        except httpx.TransportError as exc:
            raise self._transport_error(exc, self.request_id) from None
        raise self._protocol_error(f"the stream ended after {len(self.pages)} pages without done")

    async def _whole_answer(self) -> list[OcrPageResult]:
        try:
            body = await self._response.aread()
        except httpx.TransportError as exc:
            raise self._transport_error(exc, self.request_id) from None
        try:
            whole = OcrResponse.model_validate_json(body)
        except ValidationError:
            raise self._protocol_error("neither NDJSON nor an OCR result") from None
        self.pages = list(whole.pages)
        self.summary = OcrJobSummary.model_validate(whole.model_dump(exclude={"pages"}))
        return self.pages

    def response(self) -> OcrResponse:
        """The whole answer, as the non-streamed `/ocr` would have given it."""
        if self.summary is None:
            raise self._protocol_error("the stream has not been read to its done line")
        return OcrResponse(**dict(self.summary), pages=self.pages)

    def _decode(self, line: str) -> dict[str, Any]:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            raise self._protocol_error("a line that is not JSON") from None
        if not isinstance(event, dict):
            raise self._protocol_error("a line that is not a JSON object")
        return event

    def _model(self, model: type[Line], event: dict[str, Any]) -> Line:
        try:
            return model.model_validate(event)
        except ValidationError:
            raise self._protocol_error(f"a {event.get('event')} line that does not fit") from None

    def _protocol_error(self, what: str) -> SidecarProtocolError:
        return SidecarProtocolError(
            "bad_sidecar_stream",
            f"the sidecar's NDJSON answer has {what}",
            status=self._response.status_code,
            request_id=self.request_id,
        )
