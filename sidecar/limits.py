"""A ceiling on every request body, enforced while it streams in and before auth runs.

uvicorn sets no body limit, and FastAPI reads a JSON body before it resolves dependencies, so
without this an unauthenticated client could make the sidecar buffer any amount of memory. Each
route's own limits (MAX_FILE_MB, MAX_INPUTS, …) still apply inside; this is the outer bound.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sidecar.errors import ApiError, problem_response
from sidecar.units import MIB, mib_text

# The largest JSON body any route takes: MAX_INPUTS (256) texts at BGE-M3's 8192-token window are
# about 13 MB of Thai UTF-8; twice that leaves room for truncate=true inputs that run long.
MAX_JSON_BODY_BYTES = 32 * MIB


def declared_length(scope: Scope) -> int | None:
    """The request's `Content-Length`, None when absent; 422 `validation_error` when it is not a
    non-negative integer. uvicorn already answers 400 to such framing itself, so this only fires
    behind a laxer server; there a body whose length header lies is refused, never guessed at."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            if not text.isdigit():
                raise ApiError("validation_error", "Content-Length is not a number.")
            return int(text)
    return None


class BodyLimitMiddleware:
    """413 `payload_too_large` once a body passes `limit_for(path)` bytes (declared or sent)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        try:
            declared = declared_length(scope)
        except ApiError as exc:
            await problem_response(Request(scope), exc.code, exc.detail)(scope, receive, send)
            return
        if declared is not None and declared > limit:
            await self._refuse(scope, receive, send, limit)
            return

        received = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Stop reading: the app sees the client go away, and its answer is replaced.
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                return  # the app's reaction to the cut-off body is not what the client gets
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not response_started:
            await self._refuse(scope, receive, send, limit)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem_response(
            Request(scope),
            "payload_too_large",
            f"The request body is larger than the {mib_text(limit)} limit.",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def body_limit_for(
    max_file_bytes: int, max_json_bytes: int = MAX_JSON_BODY_BYTES
) -> Callable[[str], int]:
    """/ocr takes a document (multipart overhead allowed for); every other route takes JSON."""
    ocr_limit = max_file_bytes + 2 * MIB

    def limit_for(path: str) -> int:
        return ocr_limit if path == "/ocr" else max_json_bytes

    return limit_for


# An early answer (401, 503 while draining) first reads a request body this small: closing a
# connection with unread request bytes makes the kernel reset it, and the reset can destroy the
# answer still in flight, so the caller would see "connection reset" instead of the status.
DISCARD_BODY_MAX_BYTES = 64 * 1024


async def answer_unread(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    """Send `response` to a request the app will not read; a small declared body is read and
    dropped first. A larger one stays unread: refusing it must not cost reading it."""
    try:
        declared = declared_length(scope)
    except ApiError:
        declared = None
    more = declared is not None and 0 < declared <= DISCARD_BODY_MAX_BYTES
    while more:
        message = await receive()
        more = message["type"] == "http.request" and bool(message.get("more_body", False))
    await response(scope, receive, send)
