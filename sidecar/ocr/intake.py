"""Read a `POST /ocr` request into `(OcrJob, document bytes)`, never buffering more than allowed.

- `application/json` (path mode): the body (at most `MAX_JOB_BYTES`) is an `OcrRequest`; the
  document is read through the path guard (`ocr.uploads.read_upload`) in a worker thread.
- `multipart/form-data` (upload mode): parts `file` (the document, at most `MAX_FILE_MB`) and
  `job` (an `OcrJob` as JSON, at most `MAX_JOB_BYTES`), parsed as the body streams in: the request
  is refused with 413 as soon as a declared `Content-Length` or the bytes received so far pass the
  limit, not after the whole body has been buffered.

Invalid JSON or fields become the same 422 FastAPI gives for a declared body, naming each field.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from sidecar.config import Settings
from sidecar.errors import ApiError
from sidecar.limits import declared_length
from sidecar.ocr.messages import build_options
from sidecar.ocr.uploads import read_upload
from sidecar.schemas import OcrJob, OcrRequest
from sidecar.units import MIB, mib_text

MAX_JOB_BYTES = MIB
_MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers
EXPECTED_PARTS = ("file", "job")


def _too_large(what: str, limit: int) -> ApiError:
    return ApiError("payload_too_large", f"{what} is larger than the {mib_text(limit)} limit.")


async def _body_chunks(request: Request, limit: int, what: str) -> AsyncIterator[bytes]:
    """The request body in chunks; 413 as soon as more than `limit` bytes are declared or sent."""
    declared = declared_length(request.scope)
    if declared is not None and declared > limit:
        raise _too_large(what, limit)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(what, limit)
        if chunk:
            yield chunk


def _validate(model: type[BaseModel], raw: bytes) -> BaseModel:
    """Parse and check a job: the schema, then the Ollama options (before any file is read)."""
    try:
        job = model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        for error in errors:
            error["loc"] = ("body", *error["loc"])
        raise RequestValidationError(errors) from None
    assert isinstance(job, OcrJob)
    build_options(job)
    return job


async def read_path_mode(request: Request, settings: Settings) -> tuple[OcrJob, bytes]:
    body = bytearray()
    async for chunk in _body_chunks(request, MAX_JOB_BYTES, "The JSON body"):
        body += chunk
    job = _validate(OcrRequest, bytes(body))
    assert isinstance(job, OcrRequest)
    data = await asyncio.to_thread(
        read_upload, settings.upload_base, job.source.path, settings.max_file_bytes
    )
    return job, data


class _PartCollector:
    """Callbacks for `MultipartParser`: collects the `file` and `job` parts under their limits."""

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits = limits
        self.parts: dict[str, bytearray] = {}
        self._current: str | None = None
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._disposition: bytes | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self._current = None
        self._disposition = None

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header_field).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name not in self.limits:
            raise ApiError(
                "validation_error",
                f"multipart: unexpected part {name[:40]!r}; send parts 'file' and 'job'",
            )
        if name in self.parts:
            raise ApiError("validation_error", f"multipart: part {name!r} appears twice")
        self.parts[name] = bytearray()
        self._current = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._current is not None
        part = self.parts[self._current]
        part += data[start:end]
        if len(part) > self.limits[self._current]:
            what = "The document" if self._current == "file" else "The job part"
            raise _too_large(what, self.limits[self._current])


async def read_upload_mode(request: Request, settings: Settings) -> tuple[OcrJob, bytes]:
    _, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError("validation_error", "multipart/form-data without a boundary")
    collector = _PartCollector({"file": settings.max_file_bytes, "job": MAX_JOB_BYTES})
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    body_limit = settings.max_file_bytes + MAX_JOB_BYTES + _MULTIPART_OVERHEAD
    try:
        async for chunk in _body_chunks(request, body_limit, "The upload"):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError:
        raise ApiError("validation_error", "The multipart body is malformed.") from None
    for name in EXPECTED_PARTS:
        if name not in collector.parts:
            raise ApiError("validation_error", f"multipart: part {name!r} is missing")
    job = _validate(OcrJob, bytes(collector.parts["job"]))
    assert isinstance(job, OcrJob)
    return job, bytes(collector.parts["file"])


async def read_ocr_request(request: Request, settings: Settings) -> tuple[OcrJob, bytes]:
    """Dispatch on the media type: JSON path mode or multipart upload; 415 otherwise."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json":
        return await read_path_mode(request, settings)
    if media_type == "multipart/form-data":
        return await read_upload_mode(request, settings)
    raise ApiError(
        "unsupported_media_type",
        "Send application/json with source.path, or multipart/form-data with parts "
        "'file' and 'job'.",
    )
