"""What the sidecar sends Ollama for a job: the system message, each page's user message and the
options, built exactly as DESIGN.md §4 says and nothing more (the sidecar has no defaults).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sidecar.errors import ApiError
from sidecar.schemas import MAX_TOKENS_LIMIT, OcrJob, OcrPrompt

DMS_TAGS_PLACEHOLDER = "{{dms_tags}}"
ANCHOR_PLACEHOLDER = "{{anchor_text}}"

# Profile columns and the Ollama option each one becomes.
PROFILE_OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "repeat_penalty": "repeat_penalty",
    "max_tokens": "num_predict",
}
# Names Ollama silently ignores (HF/OpenAI spellings): refuse them rather than drop the setting.
_IGNORED_ALIASES = {"max_tokens": "num_predict", "repetition_penalty": "repeat_penalty"}
_FLOAT_OPTIONS = frozenset(
    {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
     "frequency_penalty", "tfs_z", "mirostat_tau", "mirostat_eta"}
)  # fmt: skip
_INT_OPTIONS = frozenset(
    {"num_predict", "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep",
     "top_k", "repeat_last_n", "seed", "mirostat"}
)  # fmt: skip
_BOOL_OPTIONS = frozenset({"use_mmap", "numa", "penalize_newline"})


def build_system_prompt(prompt: OcrPrompt) -> str:
    """`system_prompt` with `{{dms_tags}}` filled in, or the tags on a final `DMS tags:` line."""
    tags = ", ".join(prompt.dms_tags)
    if DMS_TAGS_PLACEHOLDER in prompt.system_prompt:
        return prompt.system_prompt.replace(DMS_TAGS_PLACEHOLDER, tags)
    if not tags:
        return prompt.system_prompt
    tag_line = f"DMS tags: {tags}"
    if not prompt.system_prompt:
        return tag_line
    return prompt.system_prompt.rstrip("\n") + "\n" + tag_line


def system_messages(system_prompt: str) -> list[dict[str, Any]]:
    """The leading system message; none when empty (Ollama then applies the Modelfile SYSTEM)."""
    return [{"role": "system", "content": system_prompt}] if system_prompt else []


def needs_anchor(prompt: OcrPrompt) -> bool:
    return prompt.user_template is not None and ANCHOR_PLACEHOLDER in prompt.user_template


def user_message(prompt: OcrPrompt, image_b64: str, anchor_text: str | None) -> dict[str, Any]:
    """One page: the template (anchor filled in) with the image; no template → the image alone."""
    content = prompt.user_template or ""
    if ANCHOR_PLACEHOLDER in content:
        content = content.replace(ANCHOR_PLACEHOLDER, anchor_text or "")
    return {"role": "user", "content": content, "images": [image_b64]}


class InvalidOption(ApiError):
    """An Ollama option the sidecar refuses (422); `field` names it, e.g. profile.options.num_ctx.

    The backend catches it too, so a bad stored profile fails there, before anything is sent."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__("validation_error", f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _bad(field: str, message: str) -> ApiError:
    return InvalidOption(field, message)


def _check_range(field: str, name: str, value: float) -> None:
    if name == "temperature" and not 0 <= value <= 2:
        raise _bad(field, "must be between 0 and 2")
    if name == "top_p" and not 0 < value <= 1:
        raise _bad(field, "must be greater than 0 and at most 1")
    if name == "repeat_penalty" and not value > 0:
        raise _bad(field, "must be greater than 0")
    if name == "num_predict" and not 1 <= value <= MAX_TOKENS_LIMIT:
        raise _bad(field, f"must be between 1 and {MAX_TOKENS_LIMIT}")
    if name in ("num_ctx", "num_batch") and value < 1:
        raise _bad(field, "must be at least 1")


def check_option(field: str, name: str, value: Any) -> None:
    """Type and range of one Ollama option (a wrong JSON type makes Ollama answer 500)."""
    if name in _IGNORED_ALIASES:
        raise _bad(field, f"Ollama ignores {name!r}; use {_IGNORED_ALIASES[name]!r}")
    if name in _BOOL_OPTIONS:
        if not isinstance(value, bool):
            raise _bad(field, "must be true or false")
        return
    if name == "stop":
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise _bad(field, "must be a list of strings")
        return
    if name in _FLOAT_OPTIONS or name in _INT_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(field, "must be a number")
        if not math.isfinite(value):
            raise _bad(field, "must be a finite number")
        if name in _INT_OPTIONS and float(value) != int(value):
            raise _bad(field, "must be a whole number")
        _check_range(field, name, value)


def _merge(
    target: dict[str, Any], source: Mapping[str, Any], prefix: str, *, replace: bool
) -> None:
    for name, value in source.items():
        field = f"{prefix}.{name}"
        if value is None:
            # null means "not set": Ollama uses the Modelfile value (an override can unset one)
            if replace:
                target.pop(name, None)
            continue
        check_option(field, name, value)
        if not replace and name in target:
            raise _bad(field, "is already set by its profile column; set it there only")
        target[name] = value


def build_options(job: OcrJob) -> dict[str, Any]:
    """Ollama options: profile columns (null → omitted), then `profile.options`, then
    `options_override`, which wins. keep_alive never appears (the schema refuses it)."""
    options: dict[str, Any] = {}
    profile = job.profile
    for column, name in PROFILE_OPTION_NAMES.items():
        value = getattr(profile, column)
        if value is not None:
            options[name] = value
    _merge(options, profile.options, "profile.options", replace=False)
    if job.options_override:
        _merge(options, job.options_override, "options_override", replace=True)
    return options
