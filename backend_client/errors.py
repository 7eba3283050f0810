"""Typed errors of the backend client. Every message is safe to show an operator on one line.

Resolution errors (`ProfileNotFound`, `InvalidProfile`, `InvalidPrompt`,
`ActivePromptUnavailable`) are raised before any HTTP request exists, so a job that fails them
sends nothing to the sidecar. `SidecarError` subclasses carry the sidecar's problem+json `code`
and the `request_id` to look the job up in the sidecar's logs.
"""

from __future__ import annotations


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


class SidecarError(BackendError):
    """The sidecar answered with an error, or could not be reached."""

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


class SidecarUnreachable(SidecarError):
    """No connection could be made (after retries)."""


class SidecarProtocolError(SidecarError):
    """The answer was not the documented JSON (a proxy page, a truncated body, ...)."""


class SidecarAuthError(SidecarError):
    """401 unauthorized / 403 forbidden_network: fix OCR_SIDECAR_API_KEY or the network."""


class SidecarDocumentError(SidecarError):
    """The document was refused: path, size, page count or type."""


class SidecarValidationError(SidecarError):
    """The sidecar refused the job's values (422)."""


class SidecarOverloaded(SidecarError):
    """429: the sidecar's queue stayed full through every retry."""


class SidecarUnavailable(SidecarError):
    """503: Ollama down or the sidecar not ready, through every retry."""


class ModelNotAvailable(SidecarError):
    """424: the profile names a model Ollama does not have (`ollama pull` it)."""


class SidecarUpstreamError(SidecarError):
    """5xx other than 503: Ollama timed out or answered badly, or the sidecar failed."""


# The sidecar's documented codes (sidecar/errors.py CODES) → the exception a caller catches.
ERROR_TYPES: dict[str, type[SidecarError]] = {
    "unauthorized": SidecarAuthError,
    "forbidden_network": SidecarAuthError,
    "path_forbidden": SidecarDocumentError,
    "document_not_found": SidecarDocumentError,
    "payload_too_large": SidecarDocumentError,
    "too_many_pages": SidecarDocumentError,
    "unsupported_media_type": SidecarDocumentError,
    "invalid_document": SidecarDocumentError,
    "validation_error": SidecarValidationError,
    "keep_alive_not_allowed": SidecarValidationError,
    "overloaded": SidecarOverloaded,
    "ollama_unavailable": SidecarUnavailable,
    "not_ready": SidecarUnavailable,
    "model_not_available": ModelNotAvailable,
    "ollama_bad_response": SidecarUpstreamError,
    "ollama_timeout": SidecarUpstreamError,
    "internal_error": SidecarUpstreamError,
}


def sidecar_error(
    code: str, detail: str, *, status: int | None, request_id: str | None
) -> SidecarError:
    """The typed exception for a sidecar problem+json `code` (unknown codes stay `SidecarError`)."""
    error_type = ERROR_TYPES.get(code, SidecarError)
    return error_type(code, detail, status=status, request_id=request_id)
