"""Typed errors of the backend client. Every message is safe to show an operator on one line.

Resolution errors (`ProfileNotFound`, `InvalidProfile`, `InvalidPrompt`,
`ActivePromptUnavailable`) are raised before any HTTP request exists, so a job that fails them
sends nothing to the sidecar. `SidecarError` subclasses carry the sidecar's problem+json `code`
and the `request_id` to look the job up in the sidecar's logs.
"""

from __future__ import annotations

from typing import ClassVar


class BackendError(Exception):
    """Base of every error `backend_client` raises on purpose."""


class ConfigurationError(BackendError):
    """An environment variable or command-line value is unusable."""


class DatabaseError(BackendError):
    """The database cannot be reached, or is not migrated."""


class PromptVersionNotFound(BackendError):
    def __init__(self, prompt_key: str, version: int) -> None:
        super().__init__(f"prompt {prompt_key!r} has no version {version}")
        self.prompt_key = prompt_key
        self.version = version


class ResolutionError(BackendError):
    """The database rows cannot be turned into a valid OCR job; nothing was sent."""


class ProfileNotFound(ResolutionError):
    def __init__(self, name: str) -> None:
        super().__init__(f"execution profile {name!r} does not exist in ai_execution_profiles")
        self.name = name


class InvalidProfile(ResolutionError):
    """A profile value the sidecar would refuse; `field` names it as the sidecar would."""

    def __init__(self, name: str, field: str, reason: str) -> None:
        super().__init__(f"execution profile {name!r}: {field}: {reason}")
        self.name = name
        self.field = field
        self.reason = reason


class InvalidPrompt(ResolutionError):
    def __init__(self, prompt_key: str, version: int | None, field: str, reason: str) -> None:
        which = f"version {version}" if version is not None else "draft"
        super().__init__(f"prompt {prompt_key!r} {which}: {field}: {reason}")
        self.prompt_key = prompt_key
        self.version = version
        self.field = field
        self.reason = reason


class ActivePromptUnavailable(ResolutionError):
    def __init__(self, prompt_key: str) -> None:
        super().__init__(
            f"prompt {prompt_key!r} has no active version in ai_prompts "
            f"(activate one with: ocr-backend prompt activate {prompt_key} VERSION)"
        )
        self.prompt_key = prompt_key


class InvalidJobRequest(BackendError):
    """The caller's part of the job (pages, document) is invalid; nothing was sent."""


class DatabaseConflict(DatabaseError):
    """A write broke a unique constraint (e.g. two writers added the same prompt version)."""


class SidecarError(BackendError):
    """The sidecar answered with an error, or could not be reached.

    Every documented problem `code` has its own subclass (`ERROR_TYPES`); a code this client does
    not know yet stays a plain `SidecarError` with the `code` attribute set."""

    CODE: ClassVar[str | None] = None

    def __init__(
        self, code: str, detail: str, *, status: int | None = None, request_id: str | None = None
    ) -> None:
        where = f"sidecar {status}" if status is not None else "sidecar"
        suffix = f" (request_id {request_id})" if request_id else ""
        super().__init__(f"{where} {code}: {detail}{suffix}")
        self.code = code
        self.detail = detail
        self.status = status
        self.request_id = request_id


# Families a caller can catch at once; the per-code classes below derive from them.


class SidecarUnreachable(SidecarError):
    """No connection could be made (after retries)."""


class SidecarProtocolError(SidecarError):
    """The answer was not the documented JSON (a proxy page, a truncated body or stream, ...)."""


class SidecarAuthError(SidecarError):
    """401 unauthorized / 403 forbidden_network: fix OCR_SIDECAR_API_KEY or the network."""


class SidecarDocumentError(SidecarError):
    """The document was refused: path, size, page count or type."""


class SidecarValidationError(SidecarError):
    """The sidecar refused the request's values (413 for inputs, 422)."""


class SidecarUnavailable(SidecarError):
    """503: Ollama down or the sidecar not ready, through every retry."""


class SidecarUpstreamError(SidecarError):
    """5xx other than 503: Ollama timed out or answered badly, the job's deadline passed, or the
    sidecar failed."""


class SidecarRoutingError(SidecarError):
    """404/405 on a route: the client and the sidecar disagree about the API (wrong URL)."""


# One class per documented code (sidecar.error_codes.CODES); a test keeps the two in step.


class Unauthorized(SidecarAuthError):
    CODE = "unauthorized"


class ForbiddenNetwork(SidecarAuthError):
    CODE = "forbidden_network"


class PathForbidden(SidecarDocumentError):
    CODE = "path_forbidden"


class DocumentNotFound(SidecarDocumentError):
    CODE = "document_not_found"


class RouteNotFound(SidecarRoutingError):
    CODE = "not_found"


class MethodNotAllowed(SidecarRoutingError):
    CODE = "method_not_allowed"


class PayloadTooLarge(SidecarDocumentError):
    CODE = "payload_too_large"


class TooManyPages(SidecarDocumentError):
    CODE = "too_many_pages"


class TooManyInputs(SidecarValidationError):
    CODE = "too_many_inputs"


class InputTooLong(SidecarValidationError):
    CODE = "input_too_long"


class UnsupportedMediaType(SidecarDocumentError):
    CODE = "unsupported_media_type"


class RequestInvalid(SidecarValidationError):
    CODE = "validation_error"


class KeepAliveNotAllowed(SidecarValidationError):
    CODE = "keep_alive_not_allowed"


class InvalidDocument(SidecarDocumentError):
    CODE = "invalid_document"


class ModelNotAvailable(SidecarError):
    """424: the profile names a model Ollama does not have (`ollama pull` it)."""

    CODE = "model_not_available"


class SidecarOverloaded(SidecarError):
    """429: the sidecar's queue stayed full through every retry."""

    CODE = "overloaded"


class SidecarInternalError(SidecarUpstreamError):
    CODE = "internal_error"


class OllamaBadResponse(SidecarUpstreamError):
    CODE = "ollama_bad_response"


class OllamaUnavailable(SidecarUnavailable):
    CODE = "ollama_unavailable"


class SidecarNotReady(SidecarUnavailable):
    CODE = "not_ready"


class OllamaTimeout(SidecarUpstreamError):
    CODE = "ollama_timeout"


class JobTimeout(SidecarUpstreamError):
    """504: the job's deadline (OCR_JOB_TIMEOUT_S) passed before any page was done."""

    CODE = "job_timeout"


def _per_code_classes() -> dict[str, type[SidecarError]]:
    found: dict[str, type[SidecarError]] = {}
    pending = list(SidecarError.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__dict__.get("CODE") is not None:  # declared here, not inherited
            found[cls.CODE] = cls
    return found


# The documented code → the exception a caller catches.
ERROR_TYPES: dict[str, type[SidecarError]] = _per_code_classes()


def sidecar_error(
    code: str, detail: str, *, status: int | None, request_id: str | None
) -> SidecarError:
    """The typed exception for a sidecar problem+json `code` (unknown codes stay `SidecarError`)."""
    error_type = ERROR_TYPES.get(code, SidecarError)
    return error_type(code, detail, status=status, request_id=request_id)
