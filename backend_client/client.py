"""HTTP client of the sidecar: `/ocr` (whole or streamed), `/embed`, `/rerank`, with the auth
header, request ids, timeouts, retries and typed errors.

One `SidecarClient` per process (it owns a pooled `httpx.AsyncClient`). Retries follow
`backend_client.retry`; tenacity drives the loop, with the sleep function injectable so tests
can record the waits instead of spending them. Every route goes through the same loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import tenacity
from pydantic import BaseModel, ValidationError

from backend_client.documents import Document, DocumentPath
from backend_client.errors import (
    InvalidJobRequest,
    SidecarError,
    SidecarProtocolError,
    SidecarUnreachable,
)
from backend_client.ocr_stream import NDJSON_MEDIA_TYPE, OcrStream, problem_error
from backend_client.retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from backend_client.settings import BackendSettings
from sidecar.schemas import (
    DocumentSource,
    EmbedRequest,
    EmbedResponse,
    OcrJob,
    OcrRequest,
    OcrResponse,
    RerankRequest,
    RerankResponse,
)

log = logging.getLogger("backend_client.sidecar")

REQUEST_ID_HEADER = "X-Request-ID"
API_KEY_HEADER = "X-API-Key"
# Failures where the request provably never reached the sidecar: safe to send again.
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)

Sleep = Callable[[float], Awaitable[None]]
Answer = TypeVar("Answer", bound=BaseModel)


class _RetryableAnswer(Exception):
    """A 429/503 answer, raised inside the retry loop so tenacity sees it."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"sidecar answered {response.status_code}")
        self.response = response
        self.retry_after_s = parse_retry_after(response.headers.get("Retry-After"))


def new_request_id() -> str:
    return uuid.uuid4().hex


class SidecarClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep | None = None,
        jitter: Callable[[], float] = random.random,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout or httpx.Timeout(900.0, connect=5.0),
            transport=transport,
        )
        self.retry = retry or RetryPolicy()
        self._sleep = sleep or asyncio.sleep
        self._jitter = jitter

    @classmethod
    def from_settings(cls, settings: BackendSettings, **kwargs: Any) -> SidecarClient:
        key = settings.sidecar_api_key.get_secret_value() if settings.sidecar_api_key else None
        timeout = httpx.Timeout(
            settings.sidecar_timeout_s, connect=settings.sidecar_connect_timeout_s
        )
        return cls(settings.sidecar_url, api_key=key, timeout=timeout, **kwargs)

    async def __aenter__(self) -> SidecarClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def ocr(
        self, job: OcrJob, document: Document, *, request_id: str | None = None
    ) -> OcrResponse:
        """Send one job and wait for the whole answer; the same `X-Request-ID` goes with every
        retry of it."""
        request_id = request_id or new_request_id()
        build = self._ocr_request(job, document, {REQUEST_ID_HEADER: request_id})
        response = await self._send_with_retries(build, request_id)
        return _parse_answer(OcrResponse, response, request_id)

    @asynccontextmanager
    async def ocr_stream(
        self, job: OcrJob, document: Document, *, request_id: str | None = None
    ) -> AsyncIterator[OcrStream]:
        """Send one job as an NDJSON stream: iterate the result for pages as they finish.

        ```python
        async with client.ocr_stream(job, document) as stream:
            async for page in stream:
                ...
        response = stream.response()
        ```
        Retries (connect errors, 429, 503) happen before the stream starts; an `error` event
        raises its typed error. Leaving the block early closes the connection, which cancels the
        rest of the job on the sidecar.
        """
        request_id = request_id or new_request_id()
        headers = {REQUEST_ID_HEADER: request_id, "Accept": NDJSON_MEDIA_TYPE}
        build = self._ocr_request(job, document, headers)
        response = await self._send_with_retries(build, request_id, stream=True)
        try:
            answered_id = response.headers.get(REQUEST_ID_HEADER) or request_id
            if not response.is_success:
                await response.aread()
                raise _problem_error(response, answered_id)
            yield OcrStream(response, answered_id, self._transport_error)
        finally:
            await response.aclose()

    async def embed(
        self,
        inputs: list[str],
        *,
        normalize: bool = True,
        return_sparse: bool = False,
        truncate: bool = True,
        request_id: str | None = None,
    ) -> EmbedResponse:
        """Dense (and optionally sparse) embeddings of `inputs`, in input order."""
        body = _valid_body(
            EmbedRequest,
            inputs=inputs,
            normalize=normalize,
            return_sparse=return_sparse,
            truncate=truncate,
        )
        return await self._post_json("/embed", body, EmbedResponse, request_id)

    async def rerank(
        self,
        query: str,
        texts: list[str],
        *,
        top_n: int | None = None,
        return_text: bool = False,
        normalize: bool = True,
        truncate: bool = True,
        request_id: str | None = None,
    ) -> RerankResponse:
        """`texts` scored against `query`, highest first (`index` refers to `texts`)."""
        body = _valid_body(
            RerankRequest,
            query=query,
            texts=texts,
            top_n=top_n,
            return_text=return_text,
            normalize=normalize,
            truncate=truncate,
        )
        return await self._post_json("/rerank", body, RerankResponse, request_id)

    async def _post_json(
        self,
        route: str,
        body: dict[str, Any],
        answer_type: type[Answer],
        request_id: str | None,
    ) -> Answer:
        request_id = request_id or new_request_id()
        headers = {REQUEST_ID_HEADER: request_id}

        def build() -> httpx.Request:
            return self.http.build_request("POST", route, json=body, headers=headers)

        response = await self._send_with_retries(build, request_id)
        return _parse_answer(answer_type, response, request_id)

    def _ocr_request(
        self, job: OcrJob, document: Document, headers: dict[str, str]
    ) -> Callable[[], httpx.Request]:
        """A builder of the `/ocr` request (a fresh one per attempt: bodies are consumed)."""
        if isinstance(document, DocumentPath):
            body = OcrRequest(source=DocumentSource(path=document.path), **dict(job))
            payload = body.model_dump(mode="json")

            def build_json() -> httpx.Request:
                return self.http.build_request("POST", "/ocr", json=payload, headers=headers)

            return build_json
        job_json = job.model_dump_json()
        upload = (document.filename, document.content, document.content_type)

        def build_multipart() -> httpx.Request:
            return self.http.build_request(
                "POST", "/ocr", files={"file": upload}, data={"job": job_json}, headers=headers
            )

        return build_multipart

    async def _send_with_retries(
        self, build: Callable[[], httpx.Request], request_id: str, *, stream: bool = False
    ) -> httpx.Response:
        """The first answer that is not 429/503 (or the last one); connect errors retried.

        With `stream=True` the body is left unread and the caller must close the response."""
        policy = self.retry
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(policy.attempts)
            | tenacity.stop_after_delay(policy.total_s),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type((*CONNECT_ERRORS, _RetryableAnswer)),
            sleep=self._sleep,
            before_sleep=lambda state: _log_retry(state, request_id),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response = await self.http.send(build(), stream=stream)
                    if response.status_code in RETRYABLE_STATUSES:
                        await response.aread()  # the problem body, and frees the connection
                        raise _RetryableAnswer(response)
                    return response
        except _RetryableAnswer as exhausted:
            return exhausted.response
        except httpx.TransportError as exc:
            raise self._transport_error(exc, request_id) from None
        raise AssertionError("unreachable")  # pragma: no cover - tenacity returns or raises

    def _transport_error(self, exc: httpx.TransportError, request_id: str) -> SidecarError:
        """One typed error per kind of transport failure, before or during an answer."""
        kind = type(exc).__name__
        if isinstance(exc, CONNECT_ERRORS):
            return SidecarUnreachable(
                "sidecar_unreachable",
                f"cannot connect to {self.http.base_url} ({kind})",
                request_id=request_id,
            )
        if isinstance(exc, httpx.TimeoutException):
            return SidecarError(
                "sidecar_timeout",
                f"no answer from {self.http.base_url} in time ({kind})",
                request_id=request_id,
            )
        return SidecarProtocolError(
            "sidecar_transport_error",
            f"connection to {self.http.base_url} failed mid-request ({kind})",
            request_id=request_id,
        )

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        retry_after = error.retry_after_s if isinstance(error, _RetryableAnswer) else None
        return self.retry.wait_s(state.attempt_number, retry_after, self._jitter())


def _log_retry(state: tenacity.RetryCallState, request_id: str) -> None:
    error = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "sidecar attempt %d failed (%s); retrying in %.2fs",
        state.attempt_number,
        error,
        wait,
        extra={"request_id": request_id},
    )


def _valid_body(request_type: type[BaseModel], **values: Any) -> dict[str, Any]:
    """The request body, checked by the sidecar's own model first: a request it would refuse
    with 422 is refused here, before anything is sent."""
    try:
        return request_type(**values).model_dump(mode="json")
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "body"
        reason = str(error["msg"]).removeprefix("Value error, ")
        raise InvalidJobRequest(f"{field}: {reason}") from None


def _parse_answer(answer_type: type[Answer], response: httpx.Response, request_id: str) -> Answer:
    answered_id = response.headers.get(REQUEST_ID_HEADER) or request_id
    if response.is_success:
        try:
            return answer_type.model_validate_json(response.content)
        except ValidationError:
            raise SidecarProtocolError(
                "bad_sidecar_response",
                f"the sidecar's {response.status_code} answer is not a {answer_type.__name__}",
                status=response.status_code,
                request_id=answered_id,
            ) from None
    raise _problem_error(response, answered_id)


def _problem_error(response: httpx.Response, request_id: str) -> SidecarError:
    try:
        problem = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        problem = None
    error = (
        problem_error(problem, response.status_code, request_id)
        if isinstance(problem, dict)
        else None
    )
    return error or SidecarProtocolError(
        "bad_sidecar_response",
        f"HTTP {response.status_code} without a problem+json body",
        status=response.status_code,
        request_id=request_id,
    )
