"""HTTP client of the sidecar's `POST /ocr`: auth header, request ids, timeouts, retries.

One `SidecarClient` per process (it owns a pooled `httpx.AsyncClient`). Retries follow
`backend_client.retry`; tenacity drives the loop, with the sleep function injectable so tests
can record the waits instead of spending them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import tenacity
from pydantic import ValidationError

from backend_client.documents import Document, DocumentPath
from backend_client.errors import (
    SidecarError,
    SidecarProtocolError,
    SidecarUnreachable,
    sidecar_error,
)
from backend_client.retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from backend_client.settings import BackendSettings
from sidecar.schemas import DocumentSource, OcrJob, OcrRequest, OcrResponse

log = logging.getLogger("backend_client.sidecar")

REQUEST_ID_HEADER = "X-Request-ID"
API_KEY_HEADER = "X-API-Key"
# Failures where the request provably never reached the sidecar: safe to send again.
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)

Sleep = Callable[[float], Awaitable[None]]


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
        """Send one job; the same `X-Request-ID` goes with every retry of it."""
        request_id = request_id or new_request_id()
        headers = {REQUEST_ID_HEADER: request_id}
        if isinstance(document, DocumentPath):
            body = OcrRequest(source=DocumentSource(path=document.path), **dict(job))
            payload = body.model_dump(mode="json")

            def build() -> httpx.Request:
                return self.http.build_request("POST", "/ocr", json=payload, headers=headers)

        else:
            job_json = job.model_dump_json()
            upload = (document.filename, document.content, document.content_type)

            def build() -> httpx.Request:
                return self.http.build_request(
                    "POST", "/ocr", files={"file": upload}, data={"job": job_json}, headers=headers
                )

        response = await self._send_with_retries(build, request_id)
        return _parse_ocr_response(response, request_id)

    async def _send_with_retries(
        self, build: Callable[[], httpx.Request], request_id: str
    ) -> httpx.Response:
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
                    response = await self.http.send(build())
                    if response.status_code in RETRYABLE_STATUSES:
                        raise _RetryableAnswer(response)
                    return response
        except _RetryableAnswer as exhausted:
            return exhausted.response
        except CONNECT_ERRORS as exc:
            raise SidecarUnreachable(
                "sidecar_unreachable",
                f"cannot connect to {self.http.base_url} ({type(exc).__name__})",
                request_id=request_id,
            ) from None
        except httpx.TimeoutException as exc:
            raise SidecarError(
                "sidecar_timeout",
                f"no answer from {self.http.base_url} in time ({type(exc).__name__})",
                request_id=request_id,
            ) from None
        except httpx.TransportError as exc:
            raise SidecarProtocolError(
                "sidecar_transport_error",
                f"connection to {self.http.base_url} failed mid-request ({type(exc).__name__})",
                request_id=request_id,
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover - tenacity returns or raises

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


def _parse_ocr_response(response: httpx.Response, request_id: str) -> OcrResponse:
    answered_id = response.headers.get(REQUEST_ID_HEADER) or request_id
    if response.is_success:
        try:
            return OcrResponse.model_validate_json(response.content)
        except ValidationError:
            raise SidecarProtocolError(
                "bad_sidecar_response",
                "the sidecar's 200 answer is not an OCR result",
                status=response.status_code,
                request_id=answered_id,
            ) from None
    raise _problem_error(response, answered_id)


def _problem_error(response: httpx.Response, request_id: str) -> SidecarError:
    try:
        problem = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        problem = None
    if not isinstance(problem, dict) or not isinstance(problem.get("code"), str):
        return SidecarProtocolError(
            "bad_sidecar_response",
            f"HTTP {response.status_code} without a problem+json body",
            status=response.status_code,
            request_id=request_id,
        )
    return sidecar_error(
        problem["code"],
        str(problem.get("detail") or problem.get("title") or ""),
        status=response.status_code,
        request_id=str(problem.get("request_id") or request_id),
    )
