"""RFC 9457 problem+json errors: one exception type for our own errors, handlers for everything.

Every error leaves the sidecar as `{"type", "title", "status", "detail", "code", "request_id"}`
with media type `application/problem+json`. `detail` is written for the caller: it never holds a
key, a stack trace or a resolved filesystem path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sidecar.error_codes import CODES

PROBLEM_MEDIA_TYPE = "application/problem+json"
# A URL (kept: it names a service, and the operator needs it whole), or an absolute filesystem
# path inside some other component's message (Ollama, a model loader), which is blanked.
_URL_OR_PATH = re.compile(
    r"(?P<url>\b(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://[^\s'\"]*)|(?<![\w.])/[^\s'\"]+"
)
TYPE_BASE = "https://ocr-sidecar.local/problems/"


def _blank_path(match: re.Match[str]) -> str:
    url = match.group("url")
    if url is not None and match.group("scheme").lower() != "file":
        return url
    return "<path>"


def redact_paths(text: str) -> str:
    """`text` with absolute filesystem paths (`file://` URLs too) replaced by `<path>`, fit for
    a problem `detail`; other URLs such as `https://huggingface.co/...` are left whole."""
    return _URL_OR_PATH.sub(_blank_path, text)


class ApiError(Exception):
    """An error with a documented `code`; its status and title come from `CODES`."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        if code not in CODES:
            raise ValueError(f"undocumented error code {code!r}")
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status if status is not None else CODES[code][0]
        self.title = CODES[code][1]
        self.headers = dict(headers or {})


class Overloaded(ApiError):
    """A bounded queue is full: 429 `overloaded` with `Retry-After`. Every queue raises this one
    type, so "overloaded" means the same thing everywhere and is mapped to HTTP once."""

    def __init__(self, detail: str, retry_after_s: float) -> None:
        self.retry_after_s = max(1, round(retry_after_s))
        super().__init__("overloaded", detail, headers={"Retry-After": str(self.retry_after_s)})


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", None) or request.headers.get("x-request-id", "")


def problem_response(
    request: Request,
    code: str,
    detail: str,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    status = status if status is not None else CODES[code][0]
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": CODES[code][1],
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id_of(request),
    }
    if extra:
        body.update(extra)
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE
    )


def _field_name(location: tuple[Any, ...]) -> str:
    # Drop the "body"/"query" prefix FastAPI adds; keep the path inside the document.
    parts = [str(part) for part in location]
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        parts = parts[1:]
    return ".".join(parts) or "request"


def validation_problem(request: Request, errors: list[dict[str, Any]]) -> JSONResponse:
    """422 naming each bad field; `keep_alive_not_allowed` wins when it is among the errors."""
    code = "validation_error"
    messages = []
    for error in errors:
        if error.get("type") == "keep_alive_not_allowed":
            code = "keep_alive_not_allowed"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        messages.append(f"{_field_name(tuple(error.get('loc', ())))}: {message}")
    fields = [
        {"field": _field_name(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))}
        for e in errors
    ]
    return problem_response(request, code, "; ".join(messages), extra={"errors": fields})


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return problem_response(request, exc.code, exc.detail, status=exc.status, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # include no input values: they may be large or sensitive.
    errors = [{k: v for k, v in e.items() if k != "input" and k != "ctx"} for e in exc.errors()]
    return validation_problem(request, errors)


_STATUS_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    401: "unauthorized",
    429: "overloaded",
    503: "not_ready",
}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(
        exc.status_code, "validation_error" if exc.status_code < 500 else "internal_error"
    )
    detail = exc.detail if isinstance(exc.detail, str) else CODES[code][1]
    # A client error with no code of its own (FastAPI's 400 for a body that is not JSON text)
    # answers with validation_error's documented status, not a status the schema never lists.
    status = CODES[code][0] if code == "validation_error" else exc.status_code
    return problem_response(
        request, code, detail, status=status, headers=getattr(exc, "headers", None)
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Unhandled exceptions are answered by observability.RequestContextMiddleware, which also
    # keeps the request id on that 500.
