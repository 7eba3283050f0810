"""Request and response models of the sidecar's API, shared by the routes and `backend_client`.

Validation here is the single definition of what a valid OCR job is: the sidecar applies it to
every request and the backend applies it to every snapshot before sending, so a bad database row
fails in the backend with the same field name the sidecar would give.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from sidecar.durations import InvalidDuration, parse_ollama_duration

KEEP_ALIVE_FORBIDDEN = (
    "keep_alive is computed by the sidecar's residency policy; "
    "set the ceiling in profile.keep_alive instead"
)
MAX_TOKENS_LIMIT = 131072


def _reject_keep_alive(options: dict[str, Any] | None) -> dict[str, Any] | None:
    if options and "keep_alive" in options:
        raise PydanticCustomError("keep_alive_not_allowed", KEEP_ALIVE_FORBIDDEN)
    return options


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentSource(_Strict):
    path: str = Field(min_length=1, description="relative to OCR_SIDECAR_UPLOAD_BASE, or inside it")


class OcrProfile(_Strict):
    """The `ai_execution_profiles` row, as the backend resolved it for this job."""

    name: str | None = None
    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    keep_alive: str | int | float | None = Field(
        None, description="ceiling for the computed keep_alive (an Ollama duration)"
    )
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name an Ollama model tag")
        return value.strip()

    @field_validator("keep_alive")
    @classmethod
    def _ollama_duration(cls, value: str | int | float | None) -> str | int | float | None:
        if value is None:
            return value
        try:
            parse_ollama_duration(value)
        except InvalidDuration as exc:
            raise ValueError(f"must be an Ollama duration such as '5m' or 300 ({exc})") from None
        return value

    @field_validator("options")
    @classmethod
    def _no_keep_alive(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _reject_keep_alive(value) or {}

    @property
    def keep_alive_ceiling_s(self) -> float:
        """Ceiling in seconds; a null keep_alive means Ollama's own default, 5 minutes."""
        return 300.0 if self.keep_alive is None else parse_ollama_duration(self.keep_alive)


class OcrPrompt(_Strict):
    """The active `ai_prompts` row (or a sandbox draft)."""

    id: int | None = None
    version: int | None = None
    system_prompt: str = ""
    user_template: str | None = None
    dms_tags: list[str] = Field(default_factory=list)

    @field_validator("dms_tags")
    @classmethod
    def _clean_tags(cls, value: list[str]) -> list[str]:
        tags = [tag.strip() for tag in value]
        if any(not tag for tag in tags):
            raise ValueError("tags must be non-empty strings")
        return tags


class OcrJob(_Strict):
    """Everything of an OCR request except where the document comes from (multipart `job`)."""

    pages: list[int] | None = Field(None, min_length=1)
    profile: OcrProfile
    prompt: OcrPrompt
    options_override: dict[str, Any] | None = None

    @field_validator("pages")
    @classmethod
    def _positive_pages(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(page < 1 for page in value):
            raise ValueError("page numbers start at 1")
        return value

    @field_validator("options_override")
    @classmethod
    def _no_keep_alive_override(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _reject_keep_alive(value)


class OcrRequest(OcrJob):
    """JSON body of `POST /ocr` in path mode."""

    source: DocumentSource


class PageError(BaseModel):
    """Why a page has no text: a documented error `code` (e.g. `ollama_timeout`, `job_timeout`)."""

    code: str
    detail: str


class OcrPageResult(BaseModel):
    page: int
    text: str | None = Field(description="null when the page failed (see `error`)")
    complete: bool
    done_reason: str | None = None
    duration_ms: int
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    error: PageError | None = Field(
        None, description="set when the page failed after an earlier page succeeded"
    )


class VramFigures(BaseModel):
    used_mib: int
    total_mib: int


class ResidencyInfo(BaseModel):
    """How the job used the GPU (docs/gpu-stewardship.md "Residency over a job")."""

    keep_alive: str = Field(description="the after-job keep_alive sent on the last call")
    rule: str = Field(description="machine-readable name of the rule that decided it")
    reason: str
    loads: int = Field(0, description="loads of the OCR model this job's page calls caused")
    yield_ms: int = Field(0, description="time the job waited for the priority LLM")
    vram: VramFigures | None = None


class PromptRef(BaseModel):
    id: int | None = None
    version: int | None = None


class OcrTimings(BaseModel):
    queue_ms: int
    render_ms: int
    total_ms: int


class OcrJobSummary(BaseModel):
    """Everything of an OCR answer but its pages: the NDJSON stream's `done` line."""

    request_id: str
    model: str
    complete: bool = Field(description="false when any page failed or was cut short")
    residency: ResidencyInfo
    params_sent: dict[str, Any]
    prompt: PromptRef
    timings: OcrTimings


class OcrResponse(OcrJobSummary):
    pages: list[OcrPageResult]


class EmbedRequest(_Strict):
    inputs: list[str] = Field(min_length=1)
    normalize: bool = True
    return_sparse: bool = False
    truncate: bool = True

    @field_validator("inputs")
    @classmethod
    def _no_empty_text(cls, value: list[str]) -> list[str]:
        for position, text in enumerate(value):
            if not text.strip():
                raise ValueError(f"inputs[{position}] is empty")
        return value


class EmbedUsage(BaseModel):
    tokens: int


class EmbedResponse(BaseModel):
    model: str
    device: Literal["cuda", "cpu"]
    dense: list[list[float]]
    sparse: list[dict[str, float]] | None = None
    usage: EmbedUsage


class RerankRequest(_Strict):
    query: str = Field(min_length=1)
    texts: list[str] = Field(min_length=1)
    top_n: int | None = Field(None, ge=1)
    return_text: bool = False
    normalize: bool = True
    truncate: bool = True

    @model_validator(mode="after")
    def _no_empty_text(self) -> RerankRequest:
        if not self.query.strip():
            raise ValueError("query is empty")
        for position, text in enumerate(self.texts):
            if not text.strip():
                raise ValueError(f"texts[{position}] is empty")
        return self


class RerankResult(BaseModel):
    index: int
    score: float
    text: str | None = None


class RerankResponse(BaseModel):
    model: str
    device: Literal["cuda", "cpu"]
    results: list[RerankResult]
