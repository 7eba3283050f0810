"""Turning profile and prompt values into the validated job the sidecar receives.

`sidecar.schemas` is the single definition of a valid job; every path here (stored rows, sandbox
drafts, `profile set` before it writes) goes through it, and pydantic's errors are mapped to
`InvalidProfile` / `InvalidPrompt` naming the field as the sidecar would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from backend_client.errors import InvalidJobRequest, InvalidProfile, InvalidPrompt
from sidecar.option_rules import OptionError, build_options
from sidecar.schemas import OcrJob, OcrProfile, OcrPrompt

OCR_PROFILE_NAME = "ocr-extract"
OCR_PROMPT_KEY = "ocr-extract"

# Profile columns that travel to the sidecar; `description` and `updated_at` stay home.
PROFILE_FIELDS = (
    "model",
    "temperature",
    "top_p",
    "repeat_penalty",
    "max_tokens",
    "keep_alive",
    "options",
)
PROMPT_FIELDS = ("system_prompt", "user_template", "dms_tags")


@dataclass(frozen=True)
class JobSnapshot:
    """The profile and prompt one job runs with, already validated."""

    profile: OcrProfile
    prompt: OcrPrompt

    def job(self, pages: Sequence[int] | None = None) -> OcrJob:
        try:
            return OcrJob(
                pages=list(pages) if pages is not None else None,
                profile=self.profile,
                prompt=self.prompt,
            )
        except ValidationError as exc:
            raise InvalidJobRequest(_first_error(exc, "job")) from None

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.model_dump(mode="json"),
            "prompt": self.prompt.model_dump(mode="json"),
        }


def _field_of(error: Mapping[str, Any]) -> str:
    location = [str(part) for part in error.get("loc", ())]
    if error.get("type") == "keep_alive_not_allowed":
        location.append("keep_alive")
    return ".".join(location) or "value"


def _reason_of(error: Mapping[str, Any]) -> str:
    if error.get("input") is None and error.get("type") in ("string_type", "missing"):
        return "is not set (NULL) but is required"
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def _first_error(exc: ValidationError, fallback: str) -> str:
    error = exc.errors()[0]
    return f"{_field_of(error) or fallback}: {_reason_of(error)}"


def normalize_keep_alive(value: Any) -> Any:
    """Store numeric keep_alive (Ollama reads numbers as seconds) as a duration string."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return value
    number = int(value) if float(value).is_integer() else value
    return f"{number}s"


def validate_profile(name: str, values: Mapping[str, Any]) -> OcrProfile:
    """`values` holds PROFILE_FIELDS (a row, or a row with edits); raise `InvalidProfile`."""
    unknown = sorted(set(values) - set(PROFILE_FIELDS))
    if unknown:
        raise InvalidProfile(name, unknown[0], "is not a profile field")
    data = dict(values)
    if data.get("options") is None:
        data["options"] = {}
    try:
        profile = OcrProfile(name=name, **data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidProfile(name, _field_of(error), _reason_of(error)) from None
    try:  # the Ollama options exactly as the sidecar will check them
        build_options(OcrJob(profile=profile, prompt=OcrPrompt()))
    except OptionError as exc:
        raise InvalidProfile(name, exc.field.removeprefix("profile."), exc.reason) from None
    return profile


def validate_prompt(
    prompt_key: str,
    values: Mapping[str, Any],
    *,
    prompt_id: int | None = None,
    version: int | None = None,
) -> OcrPrompt:
    unknown = sorted(set(values) - set(PROMPT_FIELDS))
    if unknown:
        raise InvalidPrompt(prompt_key, version, unknown[0], "is not a prompt field")
    data = dict(values)
    if data.get("dms_tags") is None:
        data["dms_tags"] = []
    if data.get("system_prompt") is None:
        data["system_prompt"] = ""
    try:
        return OcrPrompt(id=prompt_id, version=version, **data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidPrompt(prompt_key, version, _field_of(error), _reason_of(error)) from None


def apply_profile_edits(
    name: str, current: Mapping[str, Any], edits: Mapping[str, Any], *, allowed: Sequence[str]
) -> dict[str, Any]:
    """`current` with `edits` applied. `options.KEY` edits one option (None removes it)."""
    merged = dict(current)
    options = dict(current.get("options") or {})
    options_touched = False
    for key, value in edits.items():
        if key.startswith("options."):
            option = key.removeprefix("options.")
            if not option:
                raise InvalidProfile(name, key, "names no option")
            options_touched = True
            if value is None:
                options.pop(option, None)
            else:
                options[option] = value
        elif key in allowed:
            merged[key] = normalize_keep_alive(value) if key == "keep_alive" else value
            if key == "options":
                if not isinstance(value, Mapping) and value is not None:
                    raise InvalidProfile(name, "options", "must be a JSON object")
                options = dict(value or {})
        else:
            raise InvalidProfile(name, key, f"is not editable (editable: {', '.join(allowed)})")
    if options_touched or "options" in edits:
        merged["options"] = options
    return merged
