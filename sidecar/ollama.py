"""Async client for the few Ollama endpoints the sidecar uses: /api/chat, /api/generate (the load
call), /api/ps, /api/tags, /api/version.

It runs over the lifespan's shared `httpx.AsyncClient` and turns every Ollama failure into one
`OllamaError` subclass, each a documented `ApiError` (docs/api.md), so callers test the type,
never the code string:

- `OllamaUnavailable` (503 `ollama_unavailable` + Retry-After): connection refused, DNS failure,
  connect timeout, or Ollama answered 503 (its scheduler queue is full); the retryable kind
- `OllamaTimeout` (504 `ollama_timeout`): read, write or pool timeout
- `ModelNotAvailable` (424 `model_not_available`): 404 "model … not found", 400 "invalid model
  name" / "does not support …"
- `OllamaBadResponse` (502 `ollama_bad_response`): any other 4xx/5xx, a non-JSON body, a wrong
  shape, a connection cut mid-answer

Responses are always read to the end or closed (`async with client.stream(...)` is not needed:
`client.request` reads the body and releases the connection on success and on every error), so no
failure leaves a pooled connection checked out.
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from sidecar.errors import ApiError, redact_paths
from sidecar.loaded_models import LoadedModel, model_key

# Ollama restarts (or frees its queue) within seconds; the backend's client honours this.
RETRY_AFTER_S = 5
# /ready and /health must answer quickly even when Ollama hangs.
PROBE_TIMEOUT_S = 3.0
# How much of Ollama's own error text we pass on (it never holds a secret, but may be long).
_MAX_ERROR_TEXT = 300
ReplyT = TypeVar("ReplyT", bound=BaseModel)


class OllamaError(ApiError):
    """Any failure talking to Ollama; the subclass says which documented code it is."""

    code_name = "ollama_bad_response"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(self.code_name, detail, headers=headers)


class OllamaUnavailable(OllamaError):
    """Nobody answers, or Ollama's queue is full: worth retrying shortly."""

    code_name = "ollama_unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_S)})


class OllamaTimeout(OllamaError):
    code_name = "ollama_timeout"


class ModelNotAvailable(OllamaError):
    code_name = "model_not_available"


class OllamaBadResponse(OllamaError):
    code_name = "ollama_bad_response"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str = "assistant"
    content: str = ""


class ChatReply(BaseModel):
    """A non-streamed /api/chat answer; metric fields are absent when zero (omitempty)."""

    model_config = ConfigDict(extra="ignore")
    model: str = ""
    message: ChatMessage  # always sent by chat, with "" content on load/unload replies
    done: bool  # never omitted by Ollama: a reply without it is not an Ollama reply
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None

    @property
    def text(self) -> str:
        return self.message.content

    @property
    def load_seconds(self) -> float:
        """Time before generation began (queue, evictions, the model's load); Ollama's
        durations are integer nanoseconds."""
        return (self.load_duration or 0) / 1e9

    @property
    def complete(self) -> bool:
        """False for Ollama's silent repeat abort (no done:true) and for a num_predict cut."""
        return self.done and self.done_reason != "length"


class _PsEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    size: int = 0
    size_vram: int = 0
    expires_at: str | None = None


class _PsReply(BaseModel):
    model_config = ConfigDict(extra="ignore")
    models: list[_PsEntry]


class _TagsEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    size: int = 0


class _TagsReply(BaseModel):
    model_config = ConfigDict(extra="ignore")
    models: list[_TagsEntry]


class _VersionReply(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: str


def _ollama_error_text(response: httpx.Response) -> str:
    """Ollama's `{"error": …}` text, or the start of the raw body, with file paths redacted
    (Ollama's load errors name its blob files)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    text = body.get("error") if isinstance(body, dict) else None
    if not isinstance(text, str):
        text = response.text
    text = redact_paths(" ".join(text.split()))
    return text[:_MAX_ERROR_TEXT] or f"HTTP {response.status_code}"


def _model_missing(status: int, text: str) -> bool:
    lowered = text.lower()
    if status == 404:
        return True  # chat/generate/show only answer 404 for an unknown model
    return status == 400 and ("invalid model name" in lowered or "does not support" in lowered)


def error_for_status(response: httpx.Response, model: str | None) -> OllamaError:
    """The OllamaError for a non-2xx Ollama answer."""
    status = response.status_code
    text = _ollama_error_text(response)
    if _model_missing(status, text) and model is not None:
        return ModelNotAvailable(
            f"Ollama cannot run model {model!r} ({text}); pull it with `ollama pull {model}`."
        )
    if status == 503:
        return OllamaUnavailable(f"Ollama is busy ({text}); try again shortly.")
    return OllamaBadResponse(f"Ollama answered HTTP {status}: {text}")


def unavailable(reason: str) -> OllamaUnavailable:
    return OllamaUnavailable(f"Ollama cannot be reached ({reason}); check that it is running.")


def _transport_error(exc: httpx.TransportError) -> OllamaError:
    # ConnectTimeout is a TimeoutException too, but it means "nobody answers the door".
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return unavailable(type(exc).__name__)
    # A pooled keep-alive connection that Ollama had closed (a restart, a crash): the request got
    # no answer at all, so it is as safe to retry as a refused connection.
    if isinstance(exc, httpx.RemoteProtocolError) and "without sending a response" in str(exc):
        return unavailable("the connection closed before any answer")
    if isinstance(exc, httpx.TimeoutException):
        return OllamaTimeout(
            f"Ollama did not answer in time ({type(exc).__name__}); "
            "raise OCR_SIDECAR_OLLAMA_TIMEOUT_S for very long pages."
        )
    # RemoteProtocolError, ReadError, …: the connection broke while Ollama was answering.
    return OllamaBadResponse(f"Ollama broke off its answer ({type(exc).__name__}).")


class OllamaClient:
    """The sidecar's view of Ollama; every method raises an `OllamaError` subclass."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        read_timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self.probe_timeout = httpx.Timeout(
            min(PROBE_TIMEOUT_S, read_timeout_s), connect=min(PROBE_TIMEOUT_S, connect_timeout_s)
        )

    async def _request(
        self,
        method: str,
        path: str,
        reply: type[ReplyT],
        *,
        body: dict[str, Any] | None = None,
        model: str | None = None,
        timeouts: httpx.Timeout | None = None,
    ) -> ReplyT:
        """One call, its answer validated as `reply`; every failure is an `OllamaError`."""
        try:
            response = await self.http.request(
                method, self.base_url + path, json=body, timeout=timeouts or self.timeout
            )
        except httpx.TransportError as exc:
            raise _transport_error(exc) from None
        if response.status_code >= 300:
            raise error_for_status(response, model)
        try:
            data = response.json()
        except (ValueError, UnicodeDecodeError):
            raise OllamaBadResponse(f"Ollama's answer to {path} is not JSON.") from None
        try:
            return reply.model_validate(data)
        except ValidationError:
            raise OllamaBadResponse(f"Ollama's answer to {path} has an unknown shape.") from None

    async def version(self) -> str:
        reply = await self._request(
            "GET", "/api/version", _VersionReply, timeouts=self.probe_timeout
        )
        return reply.version

    async def loaded_models(self, *, probe: bool = False) -> list[LoadedModel]:
        """/api/ps: the models in memory (compare names through `model_key`)."""
        timeouts = self.probe_timeout if probe else self.timeout
        reply = await self._request("GET", "/api/ps", _PsReply, timeouts=timeouts)
        return [LoadedModel(m.name, m.size, m.size_vram, m.expires_at) for m in reply.models]

    async def installed_sizes(self) -> dict[str, int]:
        """/api/tags: model key (`model_key`) → size on disk in bytes, for every installed model."""
        reply = await self._request("GET", "/api/tags", _TagsReply)
        return {model_key(m.name): m.size for m in reply.models}

    async def chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        options: dict[str, Any],
        keep_alive: str,
    ) -> ChatReply:
        """One non-streamed /api/chat."""
        body = {
            "model": model,
            "messages": messages,
            "stream": False,
            "options": options,
            "keep_alive": keep_alive,
        }
        return await self._request("POST", "/api/chat", ChatReply, body=body, model=model)
